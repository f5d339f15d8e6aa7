//! The reconciler: from a service's desired state and its instances, the starts and stops
//! that move it one step closer. Pure (no clocks, processes or I/O) so every rule is tested
//! here; the supervisor calls it after each event and carries out what it returns.
//!
//! Rules (the same as a Kubernetes Deployment's rolling update):
//! - instances of an older generation are replaced by the current one; during that, at most
//!   `replicas + max_surge` instances run, and no healthy instance is stopped while that would
//!   leave fewer than `replicas - max_unavailable` healthy;
//! - an old instance that is not healthy is stopped first (it serves nobody);
//! - scaling down stops instances that are not healthy first, then the newest;
//! - no start while the service is backing off after failures.

use super::spec::RolloutPolicy;
use super::state::InstanceStatus;

/// What the reconciler needs to know about one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceView {
    pub id: String,
    pub generation: u64,
    pub status: InstanceStatus,
    /// Start time (ms, any monotonic origin): scale-down keeps the oldest.
    pub started_ms: u64,
}

/// A service as the reconciler sees it.
#[derive(Clone, Debug)]
pub struct ServiceView<'a> {
    pub replicas: u32,
    /// The spec generation new instances get.
    pub generation: u64,
    pub rollout: RolloutPolicy,
    pub instances: &'a [InstanceView],
    /// Back-off in effect: stop what must stop, start nothing.
    pub starts_blocked: bool,
}

/// One step the supervisor carries out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Boot a new instance of the current generation.
    Start,
    /// Stop this instance gracefully.
    Stop { id: String },
}

/// The starts and stops that move `service` towards its desired state.
pub fn plan(service: &ServiceView<'_>) -> Vec<Action> {
    let replicas = service.replicas as usize;
    let running: Vec<&InstanceView> = service
        .instances
        .iter()
        .filter(|i| i.status.can_stop())
        .collect();
    let (mut current, mut old): (Vec<_>, Vec<_>) = running
        .iter()
        .copied()
        .partition(|i| i.generation == service.generation);
    let mut available = running.iter().filter(|i| i.status.is_available()).count();
    let mut actions = Vec::new();
    let mut stop = |i: &InstanceView, available: &mut usize| {
        if i.status.is_available() {
            *available -= 1;
        }
        actions.push(Action::Stop { id: i.id.clone() });
    };

    // Scaling down: the unhealthy first, then the newest.
    current.sort_by_key(|i| (i.status.is_available(), std::cmp::Reverse(i.started_ms)));
    while current.len() > replicas {
        stop(current.remove(0), &mut available);
    }

    // Old generations: the unhealthy at once, the healthy while enough stay available.
    let min_available = replicas.saturating_sub(service.rollout.max_unavailable as usize);
    old.sort_by_key(|i| (i.status.is_available(), i.started_ms));
    let mut kept_old = 0;
    for i in old.drain(..) {
        if !i.status.is_available() || available > min_available {
            stop(i, &mut available);
        } else {
            kept_old += 1;
        }
    }

    if !service.starts_blocked {
        let total = current.len() + kept_old;
        let want = replicas.saturating_sub(current.len());
        let room = (replicas + service.rollout.max_surge as usize).saturating_sub(total);
        actions.extend(std::iter::repeat_n(Action::Start, want.min(room)));
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::InstanceStatus::*;
    use super::*;

    fn inst(id: &str, generation: u64, status: InstanceStatus, started_ms: u64) -> InstanceView {
        InstanceView {
            id: id.into(),
            generation,
            status,
            started_ms,
        }
    }

    fn view(replicas: u32, generation: u64, instances: &[InstanceView]) -> ServiceView<'_> {
        ServiceView {
            replicas,
            generation,
            rollout: RolloutPolicy::default(),
            instances,
            starts_blocked: false,
        }
    }

    fn stops(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Stop { id } => Some(id.as_str()),
                Action::Start => None,
            })
            .collect()
    }

    fn starts(actions: &[Action]) -> usize {
        actions.iter().filter(|a| **a == Action::Start).count()
    }

    #[test]
    fn a_new_service_starts_all_replicas() {
        let a = plan(&view(3, 1, &[]));
        assert_eq!((starts(&a), stops(&a).len()), (3, 0));
    }

    #[test]
    fn an_exited_or_stopping_instance_is_replaced() {
        let i = [
            inst("a", 1, Healthy, 0),
            inst("b", 1, Exited, 0),
            inst("c", 1, Stopping, 0),
        ];
        assert_eq!(plan(&view(3, 1, &i)), vec![Action::Start, Action::Start]);
    }

    #[test]
    fn backing_off_starts_nothing() {
        let mut v = view(2, 1, &[]);
        v.starts_blocked = true;
        assert!(plan(&v).is_empty());
    }

    #[test]
    fn scaling_down_stops_the_unhealthy_then_the_newest() {
        let i = [
            inst("old", 1, Healthy, 1),
            inst("new", 1, Healthy, 9),
            inst("sick", 1, Unhealthy, 0),
            inst("mid", 1, Healthy, 5),
        ];
        assert_eq!(stops(&plan(&view(2, 1, &i))), ["sick", "new"]);
        assert_eq!(stops(&plan(&view(0, 1, &i))).len(), 4);
    }

    /// Plays a rolling update to the end: each step applies the plan, new instances turn
    /// healthy one step after they start, stopped ones vanish. Returns the fewest healthy
    /// instances and the most running ones seen.
    fn roll(replicas: u32, rollout: RolloutPolicy) -> (usize, usize) {
        let mut instances: Vec<InstanceView> = (0..replicas)
            .map(|n| inst(&format!("v1-{n}"), 1, Healthy, u64::from(n)))
            .collect();
        let (mut min_healthy, mut max_running, mut next) = (usize::MAX, 0, 0);
        for step in 0..100 {
            let v = ServiceView {
                rollout,
                ..view(replicas, 2, &instances)
            };
            let actions = plan(&v);
            if actions.is_empty() && instances.iter().any(|i| i.status != Healthy) {
                instances.iter_mut().for_each(|i| i.status = Healthy);
                continue;
            }
            if actions.is_empty() {
                assert!(
                    instances
                        .iter()
                        .all(|i| i.generation == 2 && i.status == Healthy)
                );
                assert_eq!(instances.len(), replicas as usize);
                return (min_healthy, max_running);
            }
            let gone = stops(&actions);
            instances.retain(|i| !gone.contains(&i.id.as_str()));
            let healthy = instances.iter().filter(|i| i.status == Healthy).count();
            min_healthy = min_healthy.min(healthy);
            for i in &mut instances {
                i.status = Healthy;
            }
            for _ in 0..starts(&actions) {
                next += 1;
                instances.push(inst(&format!("v2-{next}"), 2, Starting, 100 + step));
            }
            max_running = max_running.max(instances.len());
        }
        panic!("the rollout did not finish");
    }

    #[test]
    fn rolling_updates_respect_surge_and_availability() {
        let surge_only = RolloutPolicy::default();
        assert_eq!(roll(3, surge_only), (3, 4));
        let both = RolloutPolicy {
            max_surge: 2,
            max_unavailable: 1,
            ..surge_only
        };
        let (min_healthy, max_running) = roll(10, both);
        assert!(
            min_healthy >= 9 && max_running <= 12,
            "{min_healthy} {max_running}"
        );
        let unavailable_only = RolloutPolicy {
            max_surge: 0,
            max_unavailable: 1,
            ..surge_only
        };
        let (min_healthy, max_running) = roll(3, unavailable_only);
        assert!(
            min_healthy >= 2 && max_running <= 3,
            "{min_healthy} {max_running}"
        );
    }

    #[test]
    fn a_new_version_that_never_turns_healthy_keeps_the_old_ones() {
        let i = [
            inst("v1-a", 1, Healthy, 0),
            inst("v1-b", 1, Healthy, 0),
            inst("v2-a", 2, Starting, 5),
        ];
        let a = plan(&view(2, 2, &i));
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn old_instances_that_are_not_healthy_go_first() {
        let i = [
            inst("v1-sick", 1, Unhealthy, 0),
            inst("v1-ok", 1, Healthy, 0),
        ];
        let a = plan(&view(2, 2, &i));
        assert_eq!(stops(&a), ["v1-sick"]);
        assert_eq!(starts(&a), 2);
    }
}
