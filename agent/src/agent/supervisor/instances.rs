//! Instances as the supervisor holds them (`Live`: the record plus the process handles), and
//! what happens to them: launch, stop, exit, health results.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::launch::{InUse, InstanceFiles, Start, prepare};
use super::{Event, Supervisor, chain, unix_ms};
use crate::agent::db::InstanceRecord;
use crate::agent::health::{Target, probe};
use crate::agent::network;
use crate::agent::process::{Signaller, Vmm};
use crate::agent::types::{EventKind, InstanceEnd};
use crate::fleet::starts::blame_snapshot;
use crate::fleet::{
    EndReason, FailureOutcome, HealthCheck, InstanceStatus, InstanceView, ServiceState, StartKind,
};

/// Margin after a stop's grace period before the agent kills herd-vmm itself.
const KILL_MARGIN_MS: u64 = 5000;
/// How often a restored instance is checked until it first passes (within its grace
/// period): it runs within milliseconds, and counts as healthy as soon as it answers.
const RESTORED_CHECK_MS: u64 = 5;

/// One instance: its durable record and, while it runs, handles on its process and checks.
#[derive(Debug)]
pub struct Live {
    pub record: InstanceRecord,
    pub signaller: Option<Signaller>,
    pub health: Option<AbortHandle>,
    /// Failed checks in a row.
    pub check_failures: u32,
    /// Monotonic start, for the check grace period.
    pub started: Instant,
    /// When to SIGKILL an instance that ignores its stop (monotonic ms).
    pub kill_at_ms: Option<u64>,
    pub boot_time_ms: Option<u64>,
    /// Has passed a health check (or has none) at some point.
    pub ever_healthy: bool,
}

impl Live {
    pub fn new(record: InstanceRecord) -> Self {
        // Adopted after a restart: an unhealthy or stopping instance may have been healthy;
        // assume it was rather than blame a snapshot for what happened to it later.
        let ever_healthy = !matches!(record.status, InstanceStatus::Starting);
        Self {
            record,
            signaller: None,
            health: None,
            check_failures: 0,
            started: Instant::now(),
            kill_at_ms: None,
            boot_time_ms: None,
            ever_healthy,
        }
    }

    pub fn view(&self) -> InstanceView {
        InstanceView {
            id: self.record.id.clone(),
            generation: self.record.generation,
            status: self.record.status,
            started_ms: self.record.started_at_ms,
        }
    }

    /// SIGKILL, for instances that must go now.
    pub fn force_kill(&self) {
        if let Some(s) = &self.signaller
            && let Err(e) = s.signal(Signal::KILL)
        {
            tracing::warn!(instance = %self.record.id, error = %chain(&e), "cannot kill");
        }
    }

    fn address(&self) -> Option<Ipv4Addr> {
        self.record
            .address
            .as_deref()?
            .split('/')
            .next()?
            .parse()
            .ok()
    }
}

impl Supervisor {
    /// Addresses and jail uids held by instances that may still run.
    fn in_use(&self) -> InUse {
        let live = || {
            self.instances
                .values()
                .filter(|i| i.record.status.is_live())
        };
        InUse {
            addresses: live().filter_map(Live::address).collect(),
            uids: live().filter_map(|i| i.record.jail_uid).collect(),
        }
    }

    /// Starts one instance of `service`'s current generation. A failure to start counts as
    /// the instance failing (back-off applies), and is logged.
    pub(super) fn launch(&mut self, service: &str) {
        let Some(state) = self.services.get(service).cloned() else {
            return;
        };
        let id = crate::run::new_instance_id(service);
        let restore = self.restore_source(&state);
        let mut record = InstanceRecord {
            id: id.clone(),
            service: service.to_owned(),
            generation: state.generation,
            digest: state.digest.clone(),
            status: InstanceStatus::Starting,
            pid: None,
            start_ticks: None,
            started_at_ms: unix_ms(),
            address: None,
            tap: None,
            jail_uid: None,
            stop_reason: None,
            end: None,
            start: restore
                .as_ref()
                .map_or(StartKind::Boot, |_| StartKind::Snapshot),
            snapshot: restore.as_ref().map(|(key, _)| key.to_string()),
        };
        let start = restore
            .as_ref()
            .map_or(Start::Boot, |(_, p)| Start::Restore(p));
        let started = self.spawn_instance(&state, &mut record, start);
        let mut live = Live::new(record);
        match started {
            Ok(vmm) => {
                if state.spec.health_check.is_none() {
                    live.record.status = InstanceStatus::Healthy;
                    live.ever_healthy = true;
                }
                live.signaller = vmm.signaller().ok();
                self.watch_exit(&id, vmm);
                if let Some(check) = &state.spec.health_check {
                    live.health = Some(self.spawn_checks(&live, check));
                }
                tracing::info!(instance = %id, pid = live.record.pid, "started");
                self.save(&live.record);
                self.counters.instances_started += 1;
                self.counters.count_start(live.record.start);
                let kind = EventKind::InstanceStarted {
                    generation: state.generation,
                    start: live.record.start,
                };
                self.emit(service, Some(&id), kind);
                self.instances.insert(id, live);
            }
            Err(why) => {
                tracing::error!(instance = %id, error = %why, "cannot start");
                self.instances.insert(id.clone(), live);
                self.on_exit(&id, None);
            }
        }
    }

    /// Prepares the instance and starts herd-vmm; the record is saved before the process
    /// starts (an agent killed in between finds it by its directory) and again after.
    fn spawn_instance(
        &mut self,
        state: &ServiceState,
        record: &mut InstanceRecord,
        start: Start<'_>,
    ) -> Result<Vmm, String> {
        let image = self.image(&state.digest).map_err(|e| chain(&e))?;
        let used = self.in_use();
        let prepared = prepare(
            &self.settings.launch,
            state,
            &image,
            &record.id,
            &used,
            start,
        )
        .map_err(|e| chain(&e))?;
        record.address = prepared.address;
        record.tap = prepared.tap;
        record.jail_uid = prepared.jail_uid;
        self.save(record);
        let files = InstanceFiles::new(&self.settings.launch.instances_dir, &record.id);
        let vmm = Vmm::spawn(&self.settings.vmm, &prepared.args, &files.vmm_log())
            .map_err(|e| chain(&e))?;
        // Boot times count from here (herd-vmm's start), as the API documents.
        record.started_at_ms = unix_ms();
        record.pid = Some(vmm.id.pid);
        record.start_ticks = Some(vmm.id.start_ticks);
        Ok(vmm)
    }

    /// A task that reports the process's exit.
    pub(super) fn watch_exit(&self, id: &str, vmm: Vmm) {
        let tx = self.events_tx.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            let code = vmm.wait().await;
            let _ = tx.send(Event::Exited { id, code });
        });
    }

    /// A task that runs the health check every interval and reports each result.
    pub(super) fn spawn_checks(&self, live: &Live, check: &HealthCheck) -> AbortHandle {
        let tx: mpsc::UnboundedSender<Event> = self.events_tx.clone();
        let id = live.record.id.clone();
        let socket = InstanceFiles::new(&self.settings.launch.instances_dir, &id).vsock();
        let address = live.address();
        let check = check.clone();
        let restored = live.record.start == StartKind::Snapshot && !live.ever_healthy;
        let task = tokio::spawn(async move {
            // The first check one interval after the start: the guest is still booting now.
            let every = Duration::from_millis(check.interval_ms);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let grace = Duration::from_millis(check.grace_ms);
            let mut quick_until = restored.then(|| tokio::time::Instant::now() + grace);
            loop {
                match quick_until {
                    Some(until) if tokio::time::Instant::now() < until => {
                        let quick = Duration::from_millis(RESTORED_CHECK_MS).min(every);
                        tokio::time::sleep(quick).await;
                    }
                    _ => {
                        quick_until = None;
                        tick.tick().await;
                    }
                }
                let target = Target {
                    vsock_socket: &socket,
                    address,
                };
                let timeout = Duration::from_millis(check.timeout_ms);
                let passed = probe(&check.probe, &target, timeout).await;
                if passed {
                    quick_until = None;
                }
                if tx
                    .send(Event::Health {
                        id: id.clone(),
                        passed,
                    })
                    .is_err()
                {
                    return;
                }
            }
        });
        task.abort_handle()
    }

    /// Asks an instance to stop: SIGTERM (herd-vmm tells the guest's init, then powers off
    /// after the grace period), or SIGKILL when it failed its checks or an operator killed it.
    pub(super) fn stop(&mut self, id: &str, reason: EndReason) {
        let now = self.now_ms();
        let Some(live) = self.instances.get_mut(id) else {
            return;
        };
        if !live.record.status.can_stop() {
            return;
        }
        let grace = self
            .services
            .get(&live.record.service)
            .map_or(10_000, |s| s.spec.stop_timeout_ms);
        live.record.status = InstanceStatus::Stopping;
        live.record.stop_reason = Some(reason);
        if let Some(h) = live.health.take() {
            h.abort();
        }
        let signal = if reason == EndReason::Stopped {
            Signal::TERM
        } else {
            Signal::KILL
        };
        if let Some(s) = &live.signaller
            && let Err(e) = s.signal(signal)
        {
            tracing::warn!(instance = id, error = %chain(&e), "cannot signal");
        }
        live.kill_at_ms = Some(now + grace + KILL_MARGIN_MS);
        tracing::info!(instance = id, ?reason, "stopping");
        let record = live.record.clone();
        self.save(&record);
        self.observe_stop(&record, reason);
    }

    /// Kills an instance now at an operator's request; it is replaced without back-off.
    pub(super) fn kill(&mut self, id: &str) -> bool {
        let Some(live) = self.instances.get(id) else {
            return false;
        };
        if !live.record.status.can_stop() {
            return live.record.status.is_live();
        }
        self.stop(id, EndReason::Stopped);
        if let Some(live) = self.instances.get(id) {
            live.force_kill();
        }
        true
    }

    /// herd-vmm is gone: record how, clean up, and count a failure if it was one.
    pub(super) fn on_exit(&mut self, id: &str, code: Option<i32>) {
        let Some(live) = self.instances.get_mut(id) else {
            return;
        };
        if !live.record.status.is_live() {
            return;
        }
        let reason = live.record.stop_reason.unwrap_or(EndReason::Exited);
        // Only a herd-vmm that ran can blame its snapshot (not a start the agent failed).
        let ran = live.record.pid.is_some();
        let blame = ran && blame_snapshot(live.record.start, reason, live.ever_healthy);
        live.record.status = InstanceStatus::Exited;
        live.record.pid = None;
        live.record.end = Some(InstanceEnd {
            reason,
            exit_code: code,
            at_ms: unix_ms(),
        });
        live.kill_at_ms = None;
        live.signaller = None;
        if let Some(h) = live.health.take() {
            h.abort();
        }
        tracing::info!(instance = id, ?reason, code, "ended");
        let record = live.record.clone();
        self.learn_boot_time(id);
        self.clean_up(&record);
        self.save(&record);
        self.observe_exit(&record);
        if blame {
            // The snapshot failed, not the service: no back-off, no rollback.
            self.drop_snapshot(&record);
            self.count_replacement(&record);
        } else if reason.is_failure() {
            self.count_failure(&record);
        }
    }

    /// Reads the instance's boot time from herd-vmm's log until it is there, then keeps it
    /// (and counts it in the boot-time histogram once); later calls cost nothing.
    pub(super) fn learn_boot_time(&mut self, id: &str) {
        let Some(live) = self.instances.get_mut(id) else {
            return;
        };
        if live.boot_time_ms.is_some() {
            return;
        }
        let files = InstanceFiles::new(&self.settings.launch.instances_dir, id);
        live.boot_time_ms = super::boot_time_ms(&files.vmm_log());
        if let Some(ms) = live.boot_time_ms {
            self.counters.boot_times.observe(ms);
        }
    }

    fn clean_up(&self, record: &InstanceRecord) {
        InstanceFiles::new(&self.settings.launch.instances_dir, &record.id).remove_runtime_files();
        if let Some(tap) = &record.tap
            && let Err(e) = network::remove_tap(tap)
        {
            tracing::warn!(instance = %record.id, error = %chain(&e), "cannot remove the TAP");
        }
        if let Some(jail) = &self.settings.launch.jail {
            let (cgroups, id) = (jail.cgroups.clone(), record.id.clone());
            // The jailed process may still be leaving its group: removal waits a little.
            tokio::task::spawn_blocking(move || {
                if let Err(e) = cgroups.remove(&id) {
                    tracing::warn!(instance = id, error = %e, "cannot remove the cgroup");
                }
            });
        }
    }

    /// A failed instance is replaced without counting against its service's back-off.
    fn count_replacement(&mut self, record: &InstanceRecord) {
        if let Some(service) = self.services.get_mut(&record.service) {
            service.replacements += 1;
            let name = record.service.clone();
            self.persist_service(&name);
            self.emit(&name, Some(&record.id), EventKind::InstanceReplaced);
        }
    }

    fn count_failure(&mut self, record: &InstanceRecord) {
        let now = self.now_ms();
        let Some(service) = self.services.get_mut(&record.service) else {
            return;
        };
        service.replacements += 1;
        let outcome = service.record_failure(record.generation, now);
        match &outcome {
            FailureOutcome::Replace { delay_ms } if *delay_ms > 0 => {
                tracing::warn!(service = %record.service, delay_ms, "crash loop: backing off");
            }
            FailureOutcome::Replace { .. } => {}
            FailureOutcome::RolledBack { to_digest } => {
                tracing::warn!(service = %record.service, %to_digest, "rollout failed: rolled back");
            }
        }
        let name = record.service.clone();
        self.persist_service(&name);
        self.observe_failure(record, &outcome);
    }

    /// A health check result.
    pub(super) fn on_health(&mut self, id: &str, passed: bool) {
        if !passed && self.catalog.is_taking(id) {
            // Paused for its snapshot: it cannot answer, and is resumed after.
            return;
        }
        let Some(live) = self.instances.get_mut(id) else {
            return;
        };
        let Some(check) = self
            .services
            .get(&live.record.service)
            .and_then(|s| s.spec.health_check.clone())
        else {
            return;
        };
        let in_grace = live.started.elapsed() < Duration::from_millis(check.grace_ms);
        if !passed && in_grace && live.record.status == InstanceStatus::Starting {
            return;
        }
        let Some(next) = live.record.status.after_check(passed) else {
            return;
        };
        live.check_failures = if passed { 0 } else { live.check_failures + 1 };
        let changed = next != live.record.status;
        live.record.status = next;
        live.ever_healthy |= next == InstanceStatus::Healthy;
        let failed_out = live.check_failures >= check.failure_threshold;
        let record = live.record.clone();
        if passed {
            self.learn_boot_time(id);
        }
        if changed {
            tracing::info!(instance = id, status = ?next, "health changed");
            self.save(&record);
            let kind = match next {
                InstanceStatus::Healthy => EventKind::InstanceHealthy,
                _ => EventKind::InstanceUnhealthy,
            };
            self.emit(&record.service, Some(id), kind);
        }
        if failed_out {
            tracing::warn!(
                instance = id,
                failures = check.failure_threshold,
                "unhealthy: replacing"
            );
            self.stop(id, EndReason::Unhealthy);
        }
    }

    pub(super) fn save(&self, record: &InstanceRecord) {
        if let Err(e) = self.db.put_instance(record) {
            tracing::error!(instance = %record.id, error = %chain(&e), "cannot save the instance");
        }
    }

    /// The resolved image for a digest (cached: images are immutable).
    pub(super) fn image(
        &mut self,
        digest: &str,
    ) -> Result<crate::store::ResolvedImage, crate::store::StoreError> {
        if let Some(i) = self.images.get(digest) {
            return Ok(i.clone());
        }
        let image = crate::store::Store::open(&self.settings.home)?.resolve(digest)?;
        self.images.insert(digest.to_owned(), image.clone());
        Ok(image)
    }
}
