//! What the supervisor publishes after every change for readers outside it: per-service
//! counts, which image digests each service needs, which instances may still run, and the
//! agent's counters. The API reads it without queueing behind fleet changes (`/metrics`, the
//! image-in-use check, a log follower waiting for its instance to end); the supervisor stays
//! the only writer of fleet state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::watch;

use crate::fleet::{EndReason, StartKind};

/// The fleet as last published.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FleetSnapshot {
    pub services: Vec<ServiceSnapshot>,
    /// Every instance the supervisor knows (running or recently ended), and whether its
    /// herd-vmm may still run.
    pub instances: BTreeMap<String, bool>,
    pub counters: Counters,
    /// VM snapshots installed (`snapshot_starts`), and the guest memory bytes they hold.
    pub vm_snapshots: u64,
    pub vm_snapshot_bytes: u64,
}

impl FleetSnapshot {
    /// Services that need the image `digest` (current, rollback, or a live instance's).
    pub fn users_of(&self, digest: &str) -> Vec<String> {
        self.services
            .iter()
            .filter(|s| s.digests.contains(digest))
            .map(|s| s.name.clone())
            .collect()
    }

    /// Whether the instance `id` may still be running (false once it ended or is forgotten).
    pub fn is_live(&self, id: &str) -> bool {
        self.instances.get(id).copied().unwrap_or(false)
    }
}

/// One service's numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceSnapshot {
    pub name: String,
    pub replicas_desired: u32,
    /// Starting, healthy or unhealthy.
    pub running: u32,
    pub healthy: u32,
    /// Failed instances replaced since the service was created (kept across restarts).
    pub replacements: u64,
    /// Rollbacks since the agent started.
    pub rollbacks: u64,
    /// Image digests in use: the current one, the one a rollout would go back to, and
    /// those of its live instances.
    pub digests: BTreeSet<String>,
}

/// Counts since the agent started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    pub instances_started: u64,
    /// Instances started by how (see [`start_name`]).
    pub starts: BTreeMap<&'static str, u64>,
    /// VM snapshots taken and installed.
    pub snapshots_taken: u64,
    /// VM snapshots that failed, by stage: `take` (taking or installing it) or `restore` (an
    /// instance restored from it failed before its first passed check).
    pub snapshot_failures: BTreeMap<&'static str, u64>,
    /// Ended instances by reason.
    pub exits: BTreeMap<&'static str, u64>,
    /// Rollbacks by service.
    pub rollbacks: BTreeMap<String, u64>,
    pub boot_times: BootTimes,
}

impl Counters {
    pub fn count_exit(&mut self, reason: EndReason) {
        *self.exits.entry(reason_name(reason)).or_default() += 1;
    }

    pub fn count_start(&mut self, start: StartKind) {
        *self.starts.entry(start_name(start)).or_default() += 1;
    }
}

/// Every start kind.
pub const START_KINDS: [StartKind; 2] = [StartKind::Boot, StartKind::Snapshot];

/// How the API spells `start`.
pub fn start_name(start: StartKind) -> &'static str {
    match start {
        StartKind::Boot => "boot",
        StartKind::Snapshot => "snapshot",
    }
}

/// The stages a VM snapshot can fail in.
pub const SNAPSHOT_STAGES: [&str; 2] = ["take", "restore"];

/// Every end reason, as the API spells it.
pub const END_REASONS: [EndReason; 4] = [
    EndReason::Exited,
    EndReason::Unhealthy,
    EndReason::Stopped,
    EndReason::Vanished,
];

/// How the API spells `reason`.
pub fn reason_name(reason: EndReason) -> &'static str {
    match reason {
        EndReason::Exited => "exited",
        EndReason::Unhealthy => "unhealthy",
        EndReason::Stopped => "stopped",
        EndReason::Vanished => "vanished",
    }
}

/// A histogram of boot times (herd-vmm's start to the guest's boot-complete signal).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BootTimes {
    /// Observations per bucket of [`BOOT_BUCKETS_MS`], plus one for the rest.
    pub counts: [u64; BOOT_BUCKETS_MS.len() + 1],
    pub sum_ms: u64,
    pub count: u64,
}

/// Upper bounds of the boot-time buckets, in ms: microVMs boot in tens of milliseconds on
/// hardware, seconds under software virtualization.
pub const BOOT_BUCKETS_MS: [u64; 11] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

impl BootTimes {
    pub fn observe(&mut self, ms: u64) {
        let bucket = BOOT_BUCKETS_MS
            .iter()
            .position(|&bound| ms <= bound)
            .unwrap_or(BOOT_BUCKETS_MS.len());
        self.counts[bucket] += 1;
        self.sum_ms += ms;
        self.count += 1;
    }
}

/// A reader's end of the published snapshot.
pub type FleetWatch = watch::Receiver<Arc<FleetSnapshot>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_times_fall_into_the_first_bucket_that_holds_them() {
        let mut b = BootTimes::default();
        for ms in [0, 5, 6, 10_000, 10_001] {
            b.observe(ms);
        }
        assert_eq!(b.counts[0], 2);
        assert_eq!(b.counts[1], 1);
        assert_eq!(b.counts[BOOT_BUCKETS_MS.len() - 1], 1);
        assert_eq!(b.counts[BOOT_BUCKETS_MS.len()], 1);
        assert_eq!((b.count, b.sum_ms), (5, 20_012));
    }

    #[test]
    fn users_of_an_image_are_the_services_that_need_its_digest() {
        let service = |name: &str, digests: &[&str]| ServiceSnapshot {
            name: name.into(),
            digests: digests.iter().map(|d| (*d).to_owned()).collect(),
            ..Default::default()
        };
        let snap = FleetSnapshot {
            services: vec![service("a", &["d1"]), service("b", &["d2", "d1"])],
            instances: BTreeMap::from([("a-1".to_owned(), true), ("a-0".to_owned(), false)]),
            ..Default::default()
        };
        assert_eq!(snap.users_of("d1"), ["a", "b"]);
        assert!(snap.users_of("d3").is_empty());
        assert!(snap.is_live("a-1") && !snap.is_live("a-0") && !snap.is_live("x"));
    }
}
