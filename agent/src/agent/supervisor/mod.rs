//! The supervisor: one task that owns the fleet. It takes API requests from the dispatch
//! queue and events from per-instance tasks (exits, health results), keeps services and
//! instance records in memory and in the database, and after each of them asks the
//! reconciler (`fleet::plan`) what to start and stop. Nothing else changes fleet state, so
//! there are no locks and every change is ordered. What it tells the outside (events,
//! counters, a published snapshot) is in `observe`; VM snapshots of `snapshot_starts`
//! services (taking, installing, dropping them) in `snapshots`.
//!
//! Time: back-off and check grace periods use a monotonic clock (the wall clock can jump);
//! records carry Unix ms for people.

mod adopt;
mod instances;
pub mod launch;
mod observe;
mod requests;
mod snapshots;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::db::{Db, DbError};
use super::dispatch::Call;
use super::events::{self, EventLog};
use super::snapshot::{Counters, FleetSnapshot};
use super::types::EventKind;
use super::vmsnap::{self, Catalog, SnapshotDir, SnapshotStoreError};
use crate::fleet::{Action, InstanceView, ServiceState, ServiceView, plan};
use crate::store::ResolvedImage;
pub use instances::Live;
pub use launch::{JailSettings, LaunchSettings, boot_time_ms};

/// Errors that stop the supervisor (not those of single requests or instances).
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot read the agent's state")]
    Load(#[source] DbError),
    #[error("cannot open the snapshots directory")]
    Snapshots(#[source] SnapshotStoreError),
}

/// What per-instance tasks (and the image routes) report.
#[derive(Debug)]
pub enum Event {
    Exited {
        id: String,
        code: Option<i32>,
    },
    Health {
        id: String,
        passed: bool,
    },
    /// A snapshot task ended.
    SnapshotTaken(Box<vmsnap::Outcome>),
    /// Blobs left the image store; those that were image manifests take their snapshots.
    BlobsRemoved {
        digests: Vec<String>,
    },
}

/// Tells the supervisor what changed outside it (cheap to clone).
#[derive(Clone, Debug)]
pub struct Notices(mpsc::UnboundedSender<Event>);

impl Notices {
    /// Blobs were deleted from the image store (`herd image rm` through the API).
    pub fn blobs_removed(&self, digests: Vec<String>) {
        if !digests.is_empty() {
            let _ = self.0.send(Event::BlobsRemoved { digests });
        }
    }
}

/// The agent's settings the supervisor needs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The image store's home (`herd --home`).
    pub home: PathBuf,
    pub vmm: PathBuf,
    pub launch: LaunchSettings,
    /// Records of ended instances (and their logs) are kept this long.
    pub keep_ended_ms: u64,
    /// VM snapshots of `snapshot_starts` services (`<state>/snapshots`).
    pub snapshots_dir: PathBuf,
}

/// The fleet and everything needed to change it.
pub struct Supervisor {
    settings: Settings,
    db: Db,
    started: Instant,
    services: BTreeMap<String, ServiceState>,
    /// Instances by id: running ones and recently ended ones.
    instances: BTreeMap<String, Live>,
    images: HashMap<String, ResolvedImage>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    /// Monotonic ms of the last prune of ended instances.
    pruned_ms: u64,
    events: EventLog,
    counters: Counters,
    fleet_tx: watch::Sender<Arc<FleetSnapshot>>,
    /// Installed VM snapshots and the state of each key.
    catalog: Catalog,
    /// Snapshot keys of snapshot-starts services by (service, generation).
    snapshot_keys: HashMap<(String, u64), vmsnap::SnapshotKey>,
}

/// How often ended instances past their keep time are forgotten.
const PRUNE_EVERY_MS: u64 = 60_000;

impl Supervisor {
    /// Loads the state and takes over the instances an earlier agent left running.
    pub fn start(settings: Settings, db: Db) -> Result<Self, SupervisorError> {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let dir = SnapshotDir::open(&settings.snapshots_dir).map_err(SupervisorError::Snapshots)?;
        let in_store = snapshots::store_digests(&settings.home);
        // A store that cannot be read says nothing about which images are gone: keep all.
        let catalog = Catalog::load(dir, &|d| in_store.as_ref().is_none_or(|s| s.contains(d)));
        let mut sup = Self {
            settings,
            db,
            started: Instant::now(),
            services: BTreeMap::new(),
            instances: BTreeMap::new(),
            images: HashMap::new(),
            events_tx,
            events_rx,
            pruned_ms: 0,
            events: EventLog::new(events::CAPACITY),
            counters: Counters::default(),
            fleet_tx: watch::channel(Arc::default()).0,
            catalog,
            snapshot_keys: HashMap::new(),
        };
        sup.adopt().map_err(SupervisorError::Load)?;
        sup.resume_adopted();
        if let Some(jail) = &sup.settings.launch.jail {
            let live = |id: &str| {
                sup.instances
                    .get(id)
                    .is_some_and(|i| i.record.status.is_live())
            };
            jail.cgroups.sweep(&live);
        }
        sup.publish();
        Ok(sup)
    }

    /// A handle to tell the supervisor what changed outside it.
    pub fn notices(&self) -> Notices {
        Notices(self.events_tx.clone())
    }

    /// Monotonic milliseconds since the supervisor started.
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Serves requests and events until `calls` closes (the API is gone). The snapshot is
    /// published after every change, and before a request's answer, so a client never reads
    /// one older than a change it was told about.
    /// Returns how many instances are still running then (they keep running).
    pub async fn run(mut self, mut calls: mpsc::Receiver<Call>) -> usize {
        self.reconcile_all();
        self.take_snapshots();
        self.publish();
        loop {
            let wake = self.next_wake();
            tokio::select! {
                call = calls.recv() => {
                    let Some((request, reply)) = call else { break };
                    let answer = self.handle(request);
                    self.publish();
                    let _ = reply.send(answer);
                }
                Some(event) = self.events_rx.recv() => self.on_event(event),
                () = sleep_until(wake) => self.on_timer(),
            }
            self.reconcile_all();
            // A snapshot-starts service has health checks, which wake the loop every interval:
            // a key's retry time is noticed without a timer of its own.
            self.take_snapshots();
            self.publish();
        }
        self.instances
            .values()
            .filter(|i| i.record.status.is_live())
            .count()
    }

    /// The next time something is due: a back-off ending, a stop overdue, a prune.
    fn next_wake(&self) -> Option<Instant> {
        let now = self.now_ms();
        let backoffs = self
            .services
            .values()
            .map(|s| s.backoff.not_before_ms)
            .filter(|t| *t > now);
        let kills = self.instances.values().filter_map(|i| i.kill_at_ms);
        let prune = std::iter::once(self.pruned_ms + PRUNE_EVERY_MS);
        let due = backoffs.chain(kills).chain(prune).min()?;
        Some(self.started + Duration::from_millis(due))
    }

    fn on_timer(&mut self) {
        let now = self.now_ms();
        for live in self.instances.values_mut() {
            if live.kill_at_ms.is_some_and(|t| t <= now) {
                live.kill_at_ms = None;
                live.force_kill();
            }
        }
        if now >= self.pruned_ms + PRUNE_EVERY_MS {
            self.pruned_ms = now;
            self.prune();
            self.sweep_snapshots();
        }
    }

    /// Forgets instances that ended more than `keep_ended_ms` ago, with their logs.
    fn prune(&mut self) {
        let before = unix_ms().saturating_sub(self.settings.keep_ended_ms);
        match self.db.prune_instances(before) {
            Ok(ids) => {
                for id in ids {
                    self.instances.remove(&id);
                    let dir = self.settings.launch.instances_dir.join(&id);
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
            Err(e) => tracing::error!(error = %chain(&e), "cannot prune ended instances"),
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Exited { id, code } => self.on_exit(&id, code),
            Event::Health { id, passed } => self.on_health(&id, passed),
            Event::SnapshotTaken(outcome) => self.on_snapshot_taken(*outcome),
            Event::BlobsRemoved { digests } => self.on_blobs_removed(&digests),
        }
    }

    /// Applies the reconciler to every service, and stops instances of deleted services.
    fn reconcile_all(&mut self) {
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            self.reconcile(&name);
        }
        let orphans: Vec<String> = self
            .instances
            .values()
            .filter(|i| {
                i.record.status.can_stop() && !self.services.contains_key(&i.record.service)
            })
            .map(|i| i.record.id.clone())
            .collect();
        for id in orphans {
            self.stop(&id, crate::fleet::EndReason::Stopped);
        }
    }

    fn reconcile(&mut self, name: &str) {
        let Some(service) = self.services.get(name) else {
            return;
        };
        let views: Vec<InstanceView> = self
            .instances
            .values()
            .filter(|i| i.record.service == name && i.record.status.is_live())
            .map(Live::view)
            .collect();
        let view = ServiceView {
            replicas: service.spec.replicas,
            generation: service.generation,
            rollout: service.spec.rollout,
            instances: &views,
            starts_blocked: service.backoff.blocks(self.now_ms()),
        };
        let all_current_healthy = views.iter().filter(|v| v.status.can_stop()).count()
            == service.spec.replicas as usize
            && views
                .iter()
                .filter(|v| v.status.can_stop())
                .all(|v| v.generation == service.generation && v.status.is_available());
        for action in plan(&view) {
            match action {
                Action::Start => self.launch(name),
                Action::Stop { id } => self.stop(&id, crate::fleet::EndReason::Stopped),
            }
        }
        self.finish_rollout(name, all_current_healthy);
    }

    fn finish_rollout(&mut self, name: &str, all_current_healthy: bool) {
        let Some(service) = self.services.get_mut(name) else {
            return;
        };
        if service.finish_rollout_if(all_current_healthy) {
            let generation = service.generation;
            tracing::info!(service = name, generation, "rolled out");
            self.persist_service(name);
            self.emit(name, None, EventKind::ServiceRolledOut { generation });
        }
    }

    fn persist_service(&self, name: &str) {
        if let Some(s) = self.services.get(name)
            && let Err(e) = self.db.put_service(s)
        {
            tracing::error!(service = name, error = %chain(&e), "cannot save the service");
        }
    }
}

async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// An error and its causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Unix ms now.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
