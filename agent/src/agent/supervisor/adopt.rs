//! Taking over after a restart: services come back from the database, and every instance that
//! was running is found again (by pid and start time, or by its directory on herd-vmm's
//! command line when the agent died before recording the pid) and watched as before. What
//! died meanwhile is recorded as vanished and cleaned up; leftover TAPs are removed. No running
//! instance is restarted.

use std::collections::BTreeSet;

use super::launch::InstanceFiles;
use super::{Live, Supervisor};
use crate::agent::db::{DbError, InstanceRecord};
use crate::agent::network;
use crate::agent::process::{self, ProcessId, Vmm};
use crate::fleet::{EndReason, InstanceStatus};

impl Supervisor {
    pub(super) fn adopt(&mut self) -> Result<(), DbError> {
        for mut state in self.db.services()? {
            // Back-off times were on the old agent's clock.
            state.backoff = Default::default();
            self.services.insert(state.spec.name.clone(), state);
        }
        let now = self.now_ms();
        for record in self.db.instances()? {
            let live = record.status.is_live();
            let id = record.id.clone();
            let mut entry = Live::new(record);
            if !live {
                self.instances.insert(id, entry);
                continue;
            }
            match self.find_process(&entry.record) {
                Some(vmm) => {
                    entry.record.pid = Some(vmm.id.pid);
                    entry.record.start_ticks = Some(vmm.id.start_ticks);
                    entry.signaller = vmm.signaller().ok();
                    if entry.record.status == InstanceStatus::Stopping {
                        let grace = self
                            .services
                            .get(&entry.record.service)
                            .map_or(10_000, |s| s.spec.stop_timeout_ms);
                        entry.kill_at_ms = Some(now + grace + 5000);
                    }
                    self.watch_exit(&id, vmm);
                    let check = self
                        .services
                        .get(&entry.record.service)
                        .and_then(|s| s.spec.health_check.clone());
                    if let Some(check) = check.filter(|_| entry.record.status.can_check()) {
                        entry.health = Some(self.spawn_checks(&entry, &check));
                    }
                    tracing::info!(instance = %id, pid = entry.record.pid, "adopted");
                    self.save(&entry.record);
                    self.instances.insert(id, entry);
                }
                None => {
                    if entry.record.stop_reason.is_none() {
                        entry.record.stop_reason = Some(EndReason::Vanished);
                    }
                    self.instances.insert(id.clone(), entry);
                    self.on_exit(&id, None);
                }
            }
        }
        self.remove_stray_taps();
        Ok(())
    }

    /// The running herd-vmm of a record, if it is still there.
    fn find_process(&self, record: &InstanceRecord) -> Option<Vmm> {
        if let (Some(pid), Some(start_ticks)) = (record.pid, record.start_ticks) {
            return Vmm::adopt(ProcessId { pid, start_ticks }).ok();
        }
        let dir = InstanceFiles::new(&self.settings.launch.instances_dir, &record.id).dir;
        let needle = format!("{}/", dir.display());
        process::find_by_argument(&needle)
            .into_iter()
            .find_map(|id| Vmm::adopt(id).ok())
    }

    /// TAPs with the agent's prefix that no live instance uses.
    fn remove_stray_taps(&self) {
        let Some(bridge) = &self.settings.launch.bridge else {
            return;
        };
        let used: BTreeSet<&str> = self
            .instances
            .values()
            .filter(|i| i.record.status.is_live())
            .filter_map(|i| i.record.tap.as_deref())
            .collect();
        for tap in bridge.taps() {
            if !used.contains(tap.as_str()) {
                tracing::info!(tap, "removing a TAP left by a dead instance");
                let _ = network::remove_tap(&tap);
            }
        }
    }
}
