//! What the supervisor tells the outside about its fleet: events into the [`EventLog`] and
//! counters as things happen, and the [`FleetSnapshot`] it publishes after every change. The
//! fleet code calls the small helpers here so each event is one line where it happens.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{Live, Supervisor};
use crate::agent::db::InstanceRecord;
use crate::agent::events::EventLog;
use crate::agent::snapshot::{FleetSnapshot, FleetWatch, ServiceSnapshot};
use crate::agent::types::EventKind;
use crate::fleet::{EndReason, FailureOutcome};

impl Supervisor {
    /// The event log the supervisor records into.
    pub fn events(&self) -> EventLog {
        self.events.clone()
    }

    /// The published snapshot, for readers outside the supervisor.
    pub fn fleet(&self) -> FleetWatch {
        self.fleet_tx.subscribe()
    }

    /// Records an event about `service` (and `instance`).
    pub(super) fn emit(&self, service: &str, instance: Option<&str>, kind: EventKind) {
        self.events.record(service, instance, kind);
    }

    /// An instance ended: the event and the exit count.
    pub(super) fn observe_exit(&mut self, record: &InstanceRecord) {
        let Some(end) = &record.end else {
            return;
        };
        self.counters.count_exit(end.reason);
        let kind = EventKind::InstanceExited {
            reason: end.reason,
            exit_code: end.exit_code,
        };
        self.emit(&record.service, Some(&record.id), kind);
    }

    /// A failed instance was counted as a replacement; `outcome` is what its service does.
    pub(super) fn observe_failure(&mut self, record: &InstanceRecord, outcome: &FailureOutcome) {
        let service = record.service.as_str();
        self.emit(service, Some(&record.id), EventKind::InstanceReplaced);
        match outcome {
            FailureOutcome::Replace { delay_ms: 0 } => {}
            FailureOutcome::Replace { delay_ms } => {
                let kind = EventKind::ServiceCrashLooping {
                    delay_ms: *delay_ms,
                };
                self.emit(service, None, kind);
            }
            FailureOutcome::RolledBack { to_digest } => {
                *self
                    .counters
                    .rollbacks
                    .entry(service.to_owned())
                    .or_default() += 1;
                let generation = self.services.get(service).map_or(0, |s| s.generation);
                let kind = EventKind::ServiceRolledBack {
                    generation,
                    digest: to_digest.clone(),
                };
                self.emit(service, None, kind);
            }
        }
    }

    /// An instance was asked to stop.
    pub(super) fn observe_stop(&self, record: &InstanceRecord, reason: EndReason) {
        let kind = EventKind::InstanceStopping { reason };
        self.emit(&record.service, Some(&record.id), kind);
    }

    /// Publishes the fleet as it is now.
    pub(super) fn publish(&self) {
        let now = self.snapshot();
        // Readers (log followers) wake only for a change.
        self.fleet_tx.send_if_modified(|last| {
            let changed = **last != now;
            if changed {
                *last = Arc::new(now);
            }
            changed
        });
    }

    fn snapshot(&self) -> FleetSnapshot {
        let services = self
            .services
            .values()
            .map(|s| {
                let name = &s.spec.name;
                let instances: Vec<&Live> = self
                    .instances
                    .values()
                    .filter(|i| i.record.service == *name && i.record.status.is_live())
                    .collect();
                let running: Vec<&&Live> = instances
                    .iter()
                    .filter(|i| i.record.status.can_check())
                    .collect();
                let mut digests: BTreeSet<String> =
                    instances.iter().map(|i| i.record.digest.clone()).collect();
                digests.insert(s.digest.clone());
                digests.extend(s.rollout.as_ref().map(|r| r.previous_digest.clone()));
                ServiceSnapshot {
                    name: name.clone(),
                    replicas_desired: s.spec.replicas,
                    running: running.len() as u32,
                    healthy: running
                        .iter()
                        .filter(|i| i.record.status.is_available())
                        .count() as u32,
                    replacements: s.replacements,
                    rollbacks: self.counters.rollbacks.get(name).copied().unwrap_or(0),
                    digests,
                }
            })
            .collect();
        FleetSnapshot {
            services,
            instances: self
                .instances
                .iter()
                .map(|(id, i)| (id.clone(), i.record.status.is_live()))
                .collect(),
            counters: self.counters.clone(),
            vm_snapshots: self.catalog.totals().0,
            vm_snapshot_bytes: self.catalog.totals().1,
        }
    }
}
