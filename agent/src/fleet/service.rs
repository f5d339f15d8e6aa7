//! A service's own state beyond its spec: the generation counter, the spec to roll back to,
//! the crash-loop back-off and the progress of a rollout. Pure: times are passed in (ms since
//! any fixed origin), so the supervisor and its tests drive the clock.

use serde::{Deserialize, Serialize};

use super::spec::{RestartPolicy, ServiceSpec};

/// Crash-loop back-off of one service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    /// Failures in a row (each within `reset_after_ms` of the previous one).
    pub consecutive: u32,
    pub last_failure_ms: Option<u64>,
    /// No instance starts before this time.
    pub not_before_ms: u64,
}

impl Backoff {
    /// Records a failure at `now`: the first in a row is replaced at once, then the delay
    /// doubles from `initial_ms` up to `max_ms`. Returns the delay.
    pub fn record_failure(&mut self, now: u64, policy: &RestartPolicy) -> u64 {
        let fresh = self
            .last_failure_ms
            .is_none_or(|last| now.saturating_sub(last) >= policy.reset_after_ms);
        self.consecutive = if fresh { 1 } else { self.consecutive + 1 };
        self.last_failure_ms = Some(now);
        let delay = match self.consecutive {
            0 | 1 => 0,
            n => policy
                .initial_ms
                .saturating_mul(1u64 << (n - 2).min(40))
                .min(policy.max_ms),
        };
        self.not_before_ms = now + delay;
        delay
    }

    /// Whether starts must wait at `now`.
    pub fn blocks(&self, now: u64) -> bool {
        now < self.not_before_ms
    }

    /// Crash looping: failing again and again, so starts are being delayed.
    pub fn is_crash_looping(&self) -> bool {
        self.consecutive > 1
    }
}

/// A rollout in progress: from which generation, and how its new instances fare.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub from_generation: u64,
    /// The spec to go back to if the new version keeps failing.
    pub previous: ServiceSpec,
    pub previous_digest: String,
    /// New-generation instances that failed before the rollout finished.
    pub failures: u32,
}

/// What happened to a service after a failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Replace after this delay (ms).
    Replace { delay_ms: u64 },
    /// The new version failed too often: the service went back to the previous spec and its
    /// generation, so the instances still running it are current again and the failing ones
    /// are stopped by the usual rules.
    RolledBack { to_digest: String },
}

/// A service as the supervisor keeps it (and the database stores it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    pub spec: ServiceSpec,
    /// The image digest `spec.image` resolved to when the spec was accepted.
    pub digest: String,
    /// The generation new instances get: a new one for every change that needs new instances
    /// (image, env, args, sizes, network); a rollback goes back to the generation it left, so
    /// the instances still running it stay current.
    pub generation: u64,
    /// The highest generation ever used, so a generation number names one spec only.
    #[serde(default)]
    pub last_generation: u64,
    pub backoff: Backoff,
    pub rollout: Option<Rollout>,
    /// Instances that failed (and were replaced) since the service was created.
    #[serde(default)]
    pub replacements: u64,
}

impl ServiceState {
    /// A new service at generation 1.
    pub fn new(spec: ServiceSpec, digest: String) -> Self {
        Self {
            spec,
            digest,
            generation: 1,
            last_generation: 1,
            backoff: Backoff::default(),
            rollout: None,
            replacements: 0,
        }
    }

    /// Applies an updated spec. Changes to what instances run start a rollout (a new
    /// generation); replicas, health check and policies apply to the running instances.
    /// Returns whether a rollout started.
    pub fn update(&mut self, spec: ServiceSpec, digest: String) -> bool {
        let needs_new_instances = digest != self.digest || !same_instances(&spec, &self.spec);
        if needs_new_instances {
            // An update during a rollout rolls back to the last version that finished.
            let (previous, previous_digest, from) = match self.rollout.take() {
                Some(r) => (r.previous, r.previous_digest, r.from_generation),
                None => (self.spec.clone(), self.digest.clone(), self.generation),
            };
            self.rollout = Some(Rollout {
                from_generation: from,
                previous,
                previous_digest,
                failures: 0,
            });
            self.last_generation = self.last_generation.max(self.generation) + 1;
            self.generation = self.last_generation;
            self.backoff = Backoff::default();
        }
        self.spec = spec;
        self.digest = digest;
        needs_new_instances
    }

    /// Records that an instance of `generation` failed at `now`.
    pub fn record_failure(&mut self, generation: u64, now: u64) -> FailureOutcome {
        let delay_ms = self.backoff.record_failure(now, &self.spec.restart);
        let Some(rollout) = self
            .rollout
            .as_mut()
            .filter(|_| generation == self.generation)
        else {
            return FailureOutcome::Replace { delay_ms };
        };
        rollout.failures += 1;
        if rollout.failures < self.spec.rollout.rollback_after_failures {
            return FailureOutcome::Replace { delay_ms };
        }
        let rollout = self.rollout.take().expect("checked above");
        // Keep the replica count the operator set last; everything else goes back.
        let replicas = self.spec.replicas;
        self.spec = ServiceSpec {
            replicas,
            ..rollout.previous
        };
        self.digest = rollout.previous_digest.clone();
        self.generation = rollout.from_generation;
        self.backoff = Backoff::default();
        FailureOutcome::RolledBack {
            to_digest: rollout.previous_digest,
        }
    }

    /// Ends the rollout once every running instance is of the current generation and healthy.
    /// Returns true when it just ended.
    pub fn finish_rollout_if(&mut self, all_current_and_healthy: bool) -> bool {
        if self.rollout.is_some() && all_current_and_healthy {
            self.rollout = None;
            return true;
        }
        false
    }
}

/// Whether two specs run identical instances (only replicas, checks or policies differ).
fn same_instances(a: &ServiceSpec, b: &ServiceSpec) -> bool {
    a.image == b.image
        && a.env == b.env
        && a.args == b.args
        && a.vcpus == b.vcpus
        && a.memory_mib == b.memory_mib
        && a.network == b.network
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(image: &str, replicas: u32) -> ServiceSpec {
        serde_json::from_value(serde_json::json!({
            "name": "web", "image": image, "replicas": replicas,
            "restart": {"initial_ms": 100, "max_ms": 1000, "reset_after_ms": 5000},
        }))
        .unwrap()
    }

    #[test]
    fn backoff_replaces_the_first_failure_at_once_then_doubles_to_the_cap() {
        let policy = spec("a", 1).restart;
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..7)
            .map(|n| b.record_failure(1000 + n * 10, &policy))
            .collect();
        assert_eq!(delays, [0, 100, 200, 400, 800, 1000, 1000]);
        assert!(b.is_crash_looping() && b.blocks(1070) && !b.blocks(2060));
        assert_eq!(b.record_failure(1060 + 5000, &policy), 0);
        assert!(!b.is_crash_looping());
    }

    #[test]
    fn scaling_does_not_start_a_rollout_but_a_new_image_does() {
        let mut s = ServiceState::new(spec("a:1", 3), "sha256:a".into());
        assert!(!s.update(spec("a:1", 5), "sha256:a".into()));
        assert_eq!((s.generation, s.spec.replicas), (1, 5));
        assert!(s.update(spec("a:2", 5), "sha256:b".into()));
        assert_eq!(s.generation, 2);
        assert_eq!(s.rollout.as_ref().unwrap().previous_digest, "sha256:a");
        assert!(s.finish_rollout_if(true));
        assert!(s.rollout.is_none());
    }

    #[test]
    fn a_failing_new_version_rolls_back_keeping_the_replica_count() {
        let mut s = ServiceState::new(spec("a:1", 3), "sha256:a".into());
        s.update(spec("a:2", 4), "sha256:b".into());
        // Failures of old instances do not count against the new version.
        assert!(matches!(
            s.record_failure(1, 0),
            FailureOutcome::Replace { .. }
        ));
        assert!(matches!(
            s.record_failure(2, 10),
            FailureOutcome::Replace { .. }
        ));
        assert!(matches!(
            s.record_failure(2, 20),
            FailureOutcome::Replace { .. }
        ));
        let out = s.record_failure(2, 30);
        assert_eq!(
            out,
            FailureOutcome::RolledBack {
                to_digest: "sha256:a".into()
            }
        );
        assert_eq!((s.generation, s.digest.as_str()), (1, "sha256:a"));
        assert_eq!((s.spec.image.as_str(), s.spec.replicas), ("a:1", 4));
        assert!(s.rollout.is_none() && !s.backoff.blocks(30));
        // The next update gets a generation never used before.
        s.update(spec("a:3", 4), "sha256:c".into());
        assert_eq!(s.generation, 3);
    }

    #[test]
    fn an_update_during_a_rollout_keeps_the_last_finished_version_to_roll_back_to() {
        let mut s = ServiceState::new(spec("a:1", 1), "sha256:a".into());
        s.update(spec("a:2", 1), "sha256:b".into());
        s.update(spec("a:3", 1), "sha256:c".into());
        let r = s.rollout.as_ref().unwrap();
        assert_eq!(
            (r.previous_digest.as_str(), r.from_generation),
            ("sha256:a", 1)
        );
        assert_eq!(s.generation, 3);
    }
}
