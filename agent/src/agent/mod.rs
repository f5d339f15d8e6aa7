//! `herd agent`: the per-host daemon that keeps the desired fleet running. Requests arrive on
//! a Unix socket (`api`, HTTP/1.1 + JSON), are decoded into `types::Request` and go through
//! the `dispatch` queue to the supervisor, which owns all state, applies the `fleet` rules and
//! starts and stops herd-vmm processes. What it does is observable without queueing behind
//! it: an `events` log, a published `snapshot` (for `metrics` and the image routes), and the
//! instances' console `logs`. Services with `snapshot_starts` start instances from VM
//! snapshots (`vmsnap`; not to be confused with the published fleet `snapshot`).

pub mod api;
pub mod cgroup;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod db;
pub mod dispatch;
pub mod events;
pub mod health;
pub mod images;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod process;
pub mod ratelimit;
pub mod snapshot;
pub mod supervisor;
pub mod table;
pub mod types;
pub mod vmsnap;

pub use daemon::{AgentError, run};
