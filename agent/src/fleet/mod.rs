//! The fleet's rules, apart from processes and I/O: what a service asks for (`spec`), where an
//! instance is in its life (`state`), a service's generations, back-off and rollouts
//! (`service`), the reconciler that turns all that into starts and stops (`plan`), and how
//! instances start, booted or from a snapshot (`starts`). The agent's supervisor owns the
//! clocks and processes and asks these modules what to do.

pub mod plan;
pub mod service;
pub mod spec;
pub mod starts;
pub mod state;

pub use plan::{Action, InstanceView, ServiceView, plan};
pub use service::{Backoff, FailureOutcome, Rollout, ServiceState};
pub use spec::{
    HealthCheck, MAX_REPLICAS, NetworkMode, ProbeKind, RestartPolicy, RolloutPolicy, ServiceSpec,
    SpecError,
};
pub use starts::{Candidate, KeyState, StartKind};
pub use state::{EndReason, InstanceStatus};
