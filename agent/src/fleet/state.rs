//! An instance's life as the supervisor sees it: a status enum with the transitions it
//! allows, and why an instance ended. The supervisor asks the guards before acting, so an
//! event that arrives late (a health result after the exit, a second kill) is ignored instead
//! of resurrecting or double-stopping an instance.

use serde::{Deserialize, Serialize};

/// Where an instance is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    /// herd-vmm is running; the instance has not passed a health check yet.
    Starting,
    /// Passed its last health check (or has no check and is running).
    Healthy,
    /// Was healthy, has failed checks since, fewer than the threshold.
    Unhealthy,
    /// Asked to stop (SIGTERM to herd-vmm, the guest's init gets it); waiting for the exit.
    Stopping,
    /// herd-vmm is gone.
    Exited,
}

impl InstanceStatus {
    /// Whether herd-vmm may still be running.
    pub fn is_live(self) -> bool {
        self != Self::Exited
    }

    /// Counts towards the service's available instances.
    pub fn is_available(self) -> bool {
        self == Self::Healthy
    }

    /// Health results still matter (not stopping or gone).
    pub fn can_check(self) -> bool {
        matches!(self, Self::Starting | Self::Healthy | Self::Unhealthy)
    }

    /// A stop may be sent.
    pub fn can_stop(self) -> bool {
        self.can_check()
    }

    /// The status after a health check; `None` when the result is to be ignored.
    pub fn after_check(self, passed: bool) -> Option<Self> {
        match (self, passed) {
            (s, _) if !s.can_check() => None,
            (_, true) => Some(Self::Healthy),
            (Self::Starting, false) => Some(Self::Starting),
            (_, false) => Some(Self::Unhealthy),
        }
    }
}

/// Why an instance ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// herd-vmm exited on its own (the app exited, the guest crashed or herd-vmm failed).
    Exited,
    /// Killed after failing `failure_threshold` health checks in a row.
    Unhealthy,
    /// Stopped by the fleet: scale down, rollout, or an operator's kill.
    Stopped,
    /// Gone while the agent was not running, found on restart.
    Vanished,
}

impl EndReason {
    /// Whether this end counts as a failure (back-off, rollback), not a planned stop.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Exited | Self::Unhealthy | Self::Vanished)
    }
}

#[cfg(test)]
mod tests {
    use super::InstanceStatus::*;
    use super::*;

    #[test]
    fn checks_move_between_healthy_and_unhealthy_only_while_running() {
        assert_eq!(Starting.after_check(true), Some(Healthy));
        assert_eq!(Starting.after_check(false), Some(Starting));
        assert_eq!(Healthy.after_check(false), Some(Unhealthy));
        assert_eq!(Unhealthy.after_check(true), Some(Healthy));
        assert_eq!(Stopping.after_check(true), None);
        assert_eq!(Exited.after_check(true), None);
    }

    #[test]
    fn only_running_instances_can_be_stopped() {
        assert!(Starting.can_stop() && Healthy.can_stop() && Unhealthy.can_stop());
        assert!(!Stopping.can_stop() && !Exited.can_stop());
        assert!(Stopping.is_live() && !Exited.is_live());
        assert!(Healthy.is_available() && !Unhealthy.is_available());
    }

    #[test]
    fn planned_stops_are_not_failures() {
        assert!(!EndReason::Stopped.is_failure());
        assert!(EndReason::Exited.is_failure() && EndReason::Unhealthy.is_failure());
    }
}
