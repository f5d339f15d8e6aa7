//! How instances start: booted from their image, or restored from a snapshot of an instance
//! that booted (`snapshot_starts`). The rules, apart from files and sockets: which instance
//! to snapshot and when, when a restored instance's failure is the snapshot's fault, and how
//! failed attempts are spaced out and finally given up, so a snapshot that cannot be taken
//! or restored costs a few attempts and never a crash loop.
//!
//! Snapshots are kept per key (image digest, machine and everything else a restored VM
//! inherits, see `agent::vmsnap`); [`KeyState`] is what the supervisor knows of one key.

use serde::{Deserialize, Serialize};

use super::state::{EndReason, InstanceStatus};

/// How an instance's VM came to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartKind {
    /// Booted the image's kernel and initramfs.
    #[default]
    Boot,
    /// Restored from a snapshot of a booted instance with the same image and settings.
    Snapshot,
}

/// Failed takes plus refused restores after which a key is given up (until the agent
/// restarts): something about it does not survive a snapshot, and booting works.
pub const MAX_FAILURES: u32 = 3;
/// Wait after a key's first failure before the next attempt; it doubles with each failure.
pub const RETRY_MS: u64 = 10_000;

/// What the supervisor knows of one key besides whether a snapshot of it is installed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyState {
    /// The instance a snapshot is being taken of.
    pub taking: Option<String>,
    /// Failed takes and refused restores so far.
    pub failures: u32,
    /// No attempt before this time (monotonic ms).
    pub retry_at_ms: u64,
}

impl KeyState {
    /// Too many failures: instances of this key boot from now on.
    pub fn given_up(&self) -> bool {
        self.failures >= MAX_FAILURES
    }

    /// Whether a snapshot should be taken at `now`, given whether one is `ready`.
    pub fn wants_snapshot(&self, ready: bool, now_ms: u64) -> bool {
        !ready && self.taking.is_none() && !self.given_up() && now_ms >= self.retry_at_ms
    }

    /// Counts a failed take or a refused restore at `now`; returns whether the key is now
    /// given up.
    pub fn fail(&mut self, now_ms: u64) -> bool {
        self.failures += 1;
        let doublings = (self.failures - 1).min(16);
        self.retry_at_ms = now_ms.saturating_add(RETRY_MS << doublings);
        self.given_up()
    }
}

/// One instance as the snapshot rules see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub id: &'a str,
    pub generation: u64,
    pub status: InstanceStatus,
    pub start: StartKind,
    /// Unix ms of herd-vmm's start.
    pub started_ms: u64,
}

/// The instance to snapshot, if any: a healthy one of the service's current generation
/// that booted (a restored one descends from a snapshot, the thing that is missing). Of
/// several, the one that started last: it has served least, so the snapshot carries the
/// least of anyone's data and is closest to a freshly started app.
pub fn pick_source<'a>(generation: u64, candidates: &[Candidate<'a>]) -> Option<&'a str> {
    candidates
        .iter()
        .filter(|c| {
            c.generation == generation
                && c.status == InstanceStatus::Healthy
                && c.start == StartKind::Boot
        })
        .max_by_key(|c| (c.started_ms, c.id))
        .map(|c| c.id)
}

/// Whether an instance's end is its snapshot's fault: it was restored and failed (exited or
/// was killed unhealthy) before ever passing a health check. The instance it was taken of
/// passed its checks, so what differs is the restore. Such an end does not count against
/// the service (no back-off, no rollback): the snapshot is dropped and the next instance
/// boots.
pub fn blame_snapshot(start: StartKind, reason: EndReason, ever_healthy: bool) -> bool {
    start == StartKind::Snapshot
        && matches!(reason, EndReason::Exited | EndReason::Unhealthy)
        && !ever_healthy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_wants_a_snapshot_until_one_is_ready_or_being_taken() {
        let mut k = KeyState::default();
        assert!(k.wants_snapshot(false, 0));
        assert!(!k.wants_snapshot(true, 0));
        k.taking = Some("web-00000001".into());
        assert!(!k.wants_snapshot(false, 0));
    }

    #[test]
    fn failures_space_attempts_out_and_finally_give_the_key_up() {
        let mut k = KeyState::default();
        assert!(!k.fail(1000));
        assert_eq!(k.retry_at_ms, 1000 + RETRY_MS);
        assert!(!k.wants_snapshot(false, 1000 + RETRY_MS - 1));
        assert!(k.wants_snapshot(false, 1000 + RETRY_MS));
        assert!(!k.fail(2000));
        assert_eq!(k.retry_at_ms, 2000 + 2 * RETRY_MS);
        assert!(k.fail(3000), "the third failure gives up");
        assert!(k.given_up() && !k.wants_snapshot(false, u64::MAX));
    }

    fn candidate(
        id: &str,
        generation: u64,
        status: InstanceStatus,
        start: StartKind,
    ) -> Candidate<'_> {
        let started_ms = id.len() as u64;
        Candidate {
            id,
            generation,
            status,
            start,
            started_ms,
        }
    }

    #[test]
    fn the_source_is_the_newest_healthy_booted_instance_of_the_current_generation() {
        use InstanceStatus::*;
        use StartKind::*;
        let all = [
            candidate("a", 2, Healthy, Boot),
            candidate("bb", 2, Healthy, Boot),
            candidate("ccc", 2, Starting, Boot),
            candidate("dddd", 2, Healthy, Snapshot),
            candidate("eeeee", 1, Healthy, Boot),
            candidate("ffffff", 2, Unhealthy, Boot),
        ];
        assert_eq!(pick_source(2, &all), Some("bb"));
        assert_eq!(pick_source(1, &all), Some("eeeee"));
        assert_eq!(pick_source(3, &all), None);
        assert_eq!(pick_source(2, &all[2..4]), None, "none booted and healthy");
    }

    #[test]
    fn only_a_restored_instance_failing_before_its_first_passed_check_blames_the_snapshot() {
        use EndReason::*;
        use StartKind::*;
        assert!(blame_snapshot(Snapshot, Exited, false));
        assert!(blame_snapshot(Snapshot, Unhealthy, false));
        assert!(
            !blame_snapshot(Snapshot, Exited, true),
            "it worked, then the app failed"
        );
        assert!(!blame_snapshot(Snapshot, Stopped, false), "a planned stop");
        assert!(
            !blame_snapshot(Snapshot, Vanished, false),
            "died while the agent was away"
        );
        assert!(!blame_snapshot(Boot, Exited, false));
    }
}
