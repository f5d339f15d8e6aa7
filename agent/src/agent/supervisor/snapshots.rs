//! Snapshot starts in the supervisor (rules in `fleet::starts`, files and sockets in
//! `agent::vmsnap`): after every change, a snapshot-starts service whose key has no snapshot
//! gets one taken of an instance that booted and turned healthy, on a task of its own; the
//! supervisor installs it when the task reports back (if a service still wants that key),
//! drops it when an instance restored from it fails before its first passed check, and
//! removes an image's snapshots when the image leaves the store.
//!
//! Level-triggered, like the reconciler: what is missing is taken whenever it can be, so an
//! update that enables snapshot starts, an agent restart, or a dropped snapshot all lead to
//! a new one without an event of their own; and every minute the snapshots no service starts
//! from any more (its settings changed, it was deleted, its image left the store) are
//! removed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::launch::{self, InstanceFiles};
use super::{Event, Supervisor, chain};
use crate::agent::db::InstanceRecord;
use crate::agent::types::{EventKind, SnapshotInfo, SnapshotState};
use crate::agent::vmsnap::{self, GUEST_CID, Outcome, SnapshotKey, SnapshotMeta, control};
use crate::fleet::starts::pick_source;
use crate::fleet::{Candidate, ServiceState, StartKind};
use crate::store::Store;

/// The digests of the images in the store at `home`; `None` if it cannot be read.
pub(super) fn store_digests(home: &Path) -> Option<BTreeSet<String>> {
    let store = Store::open(home).ok()?;
    let list = store.list().ok()?;
    Some(list.into_iter().map(|i| i.entry.digest).collect())
}

impl Supervisor {
    /// The key new instances of `state` would use, for a snapshot-starts service whose image
    /// resolves. Cached by service and generation (a generation names one spec and digest,
    /// and the agent's settings do not change): this is asked after every event.
    fn key_of(&mut self, state: &ServiceState) -> Option<SnapshotKey> {
        if !state.spec.snapshot_starts {
            return None;
        }
        let id = (state.spec.name.clone(), state.generation);
        if let Some(key) = self.snapshot_keys.get(&id) {
            return Some(key.clone());
        }
        let image = self.image(&state.digest).ok()?;
        let key = launch::snapshot_key(&self.settings.launch, state, &image);
        self.snapshot_keys.insert(id, key.clone());
        Some(key)
    }

    /// [`Self::key_of`] the service `name`, cloning its state only when not cached.
    fn key_for(&mut self, name: &str) -> Option<SnapshotKey> {
        let state = self.services.get(name)?;
        if !state.spec.snapshot_starts {
            return None;
        }
        let id = (name.to_owned(), state.generation);
        if let Some(key) = self.snapshot_keys.get(&id) {
            return Some(key.clone());
        }
        let state = state.clone();
        self.key_of(&state)
    }

    /// The installed snapshot a new instance of `state` starts from, if there is one.
    pub(super) fn restore_source(
        &mut self,
        state: &ServiceState,
    ) -> Option<(SnapshotKey, PathBuf)> {
        let key = self.key_of(state)?;
        self.catalog.ready(&key)?;
        let path = self.catalog.path_of(&key);
        Some((key, path))
    }

    /// Starts taking a snapshot for every snapshot-starts service whose key lacks one and
    /// that has an instance to take it of.
    pub(super) fn take_snapshots(&mut self) {
        let now = self.now_ms();
        let wanting: Vec<String> = (self.services.values())
            .filter(|s| s.spec.snapshot_starts)
            .map(|s| s.spec.name.clone())
            .collect();
        for name in wanting {
            let Some(key) = self.key_for(&name) else {
                continue;
            };
            if !self.catalog.wants(&key, now) {
                continue;
            }
            let generation = self.services[&name].generation;
            let candidates: Vec<Candidate<'_>> = (self.instances.values())
                .filter(|i| i.record.service == name && i.record.digest == key.digest)
                .map(|i| Candidate {
                    id: &i.record.id,
                    generation: i.record.generation,
                    status: i.record.status,
                    start: i.record.start,
                    started_ms: i.record.started_at_ms,
                })
                .collect();
            if let Some(id) = pick_source(generation, &candidates).map(str::to_owned) {
                let state = self.services[&name].clone();
                self.begin_snapshot(&state, key, &id);
            }
        }
    }

    fn begin_snapshot(&mut self, state: &ServiceState, key: SnapshotKey, id: &str) {
        let jailed = self
            .instances
            .get(id)
            .is_some_and(|i| i.record.jail_uid.is_some());
        let files = InstanceFiles::new(&self.settings.launch.instances_dir, id);
        let meta = SnapshotMeta {
            digest: key.digest.clone(),
            vcpus: key.vcpus,
            memory_mib: key.memory_mib,
            settings: key.settings.clone(),
            vsock_cid: GUEST_CID,
            network_interfaces: launch::network_interfaces(state),
            host_cpu: self.catalog.host_cpu().to_owned(),
            created_at_ms: 0,
            service: state.spec.name.clone(),
            source_instance: id.to_owned(),
            memory_bytes: 0,
        };
        let job = self
            .catalog
            .begin(meta, files.api_socket(), files.dir, jailed);
        tracing::info!(instance = id, %key, "taking a snapshot");
        let tx = self.events_tx.clone();
        tokio::spawn(async move {
            let outcome = vmsnap::take(job).await;
            let _ = tx.send(Event::SnapshotTaken(Box::new(outcome)));
        });
    }

    /// A snapshot task ended: install what it took if a service still starts instances of
    /// its key (the service may have changed or gone meanwhile), or count the failure.
    pub(super) fn on_snapshot_taken(&mut self, outcome: Outcome) {
        let Outcome {
            key,
            instance,
            sealed,
            paused,
            elapsed_ms,
        } = outcome;
        if let Err(e) = &paused.resumed {
            // Paused for good, it fails its checks and is replaced.
            tracing::error!(instance, error = %chain(e), "cannot resume the VM after its snapshot");
        }
        let service = self.service_of(&instance);
        let sealed = match sealed {
            Ok(sealed) => sealed,
            Err(e) => return self.snapshot_failed(&service, &instance, &key, &chain(&e)),
        };
        let names: Vec<String> = self.services.keys().cloned().collect();
        let wanted = names.iter().any(|n| self.key_for(n).as_ref() == Some(&key));
        let memory_bytes = sealed.meta.memory_bytes;
        match self.catalog.finish(&key, sealed, wanted) {
            Ok(Some(path)) => {
                let paused_ms = paused.ms;
                tracing::info!(instance, %key, path = %path.display(), paused_ms, elapsed_ms, "snapshot installed");
                self.counters.snapshots_taken += 1;
                let kind = EventKind::SnapshotTaken {
                    digest: key.digest.clone(),
                    key: key.name(),
                    memory_bytes,
                    paused_ms,
                    duration_ms: elapsed_ms,
                };
                self.emit(&service, Some(&instance), kind);
            }
            Ok(None) => tracing::info!(instance, %key, "snapshot no longer wanted: dropped"),
            Err(e) => self.snapshot_failed(&service, &instance, &key, &chain(&e)),
        }
    }

    fn service_of(&self, id: &str) -> String {
        self.instances
            .get(id)
            .map(|i| i.record.service.clone())
            .unwrap_or_default()
    }

    fn snapshot_failed(&mut self, service: &str, id: &str, key: &SnapshotKey, error: &str) {
        let given_up = self.catalog.fail(key, false, self.now_ms());
        *self.counters.snapshot_failures.entry("take").or_default() += 1;
        tracing::warn!(instance = id, %key, error, given_up, "cannot take a snapshot");
        let kind = EventKind::SnapshotFailed {
            key: key.name(),
            error: error.to_owned(),
            given_up,
        };
        self.emit(service, Some(id), kind);
    }

    /// `record` was restored and failed before it ever passed a check: its snapshot is
    /// removed (the next instance boots) and the failure counted against the key.
    pub(super) fn drop_snapshot(&mut self, record: &InstanceRecord) {
        let Some(key) = record
            .snapshot
            .as_deref()
            .and_then(|k| k.parse::<SnapshotKey>().ok())
        else {
            return;
        };
        let given_up = self.catalog.fail(&key, true, self.now_ms());
        *self
            .counters
            .snapshot_failures
            .entry("restore")
            .or_default() += 1;
        tracing::warn!(instance = %record.id, %key, given_up, "restored instance failed before its first check: snapshot removed");
        let kind = EventKind::SnapshotRemoved {
            key: key.name(),
            given_up,
        };
        self.emit(&record.service, Some(&record.id), kind);
    }

    /// Blobs left the store: the snapshots of those that were image manifests go.
    pub(super) fn on_blobs_removed(&mut self, digests: &[String]) {
        let with_snapshots = self.catalog.digests();
        for digest in digests {
            self.images.remove(digest);
            if with_snapshots.contains(digest) {
                tracing::info!(digest, "image removed: removing its snapshots");
                self.catalog.forget_image(digest);
            }
        }
    }

    /// Removes the snapshots no service starts instances from any more, and those of images
    /// that left the store without the agent being told (`herd image rm` on the host).
    pub(super) fn sweep_snapshots(&mut self) {
        let wanted = self.wanted_keys();
        for key in self.catalog.retain(&wanted) {
            tracing::info!(%key, "no service starts instances from this snapshot: removed");
        }
        let Some(in_store) = store_digests(&self.settings.home) else {
            return;
        };
        let gone: Vec<String> = (self.catalog.digests().into_iter())
            .filter(|d| !in_store.contains(d))
            .collect();
        self.on_blobs_removed(&gone);
    }

    /// The keys snapshot-starts services start instances with: the current generation's,
    /// and during a rollout the one a rollback would go back to.
    fn wanted_keys(&mut self) -> BTreeSet<SnapshotKey> {
        let states: Vec<ServiceState> = self.services.values().cloned().collect();
        let mut wanted = BTreeSet::new();
        for state in states {
            let previous = state.rollout.as_ref().map(|r| ServiceState {
                spec: r.previous.clone(),
                digest: r.previous_digest.clone(),
                generation: r.from_generation,
                ..state.clone()
            });
            for s in std::iter::once(&state).chain(previous.as_ref()) {
                wanted.extend(self.key_of(s));
            }
        }
        wanted
    }

    /// Resumes adopted instances an earlier agent may have left paused for a snapshot when
    /// it died (those a snapshot could have been taken of).
    pub(super) fn resume_adopted(&self) {
        let snapshotting = |service: &str| {
            self.services
                .get(service)
                .is_some_and(|s| s.spec.snapshot_starts)
        };
        for live in self.instances.values() {
            let r = &live.record;
            if !(r.status.can_check() && r.start == StartKind::Boot && snapshotting(&r.service)) {
                continue;
            }
            let socket =
                InstanceFiles::new(&self.settings.launch.instances_dir, &r.id).api_socket();
            let id = r.id.clone();
            tokio::spawn(async move {
                match control::resume_if_paused(&socket).await {
                    Ok(true) => {
                        tracing::warn!(instance = id, "resumed: left paused by an earlier agent")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(instance = id, error = %chain(&e), "cannot check whether it is paused")
                    }
                }
            });
        }
    }

    /// What `GET /v1/services/{name}` says about the service's snapshot.
    pub(super) fn snapshot_info(&mut self, state: &ServiceState) -> Option<SnapshotInfo> {
        let key = self.key_of(state)?;
        let keystate = self.catalog.key_state(&key);
        let ready = self.catalog.ready(&key);
        let state = match (ready, &keystate) {
            (Some(_), _) => SnapshotState::Ready,
            (None, k) if k.taking.is_some() => SnapshotState::Taking,
            (None, k) if k.given_up() => SnapshotState::GivenUp,
            (None, _) => SnapshotState::None,
        };
        Some(SnapshotInfo {
            state,
            key: key.name(),
            failures: keystate.failures,
            created_at_ms: ready.map(|m| m.created_at_ms),
            source_instance: ready.map(|m| m.source_instance.clone()),
            memory_bytes: ready.map(|m| m.memory_bytes),
        })
    }
}
