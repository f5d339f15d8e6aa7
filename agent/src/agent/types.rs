//! What goes over the agent's API, both ways: the typed requests the HTTP layer decodes into
//! (and the CLI client encodes), the views the supervisor answers with, the entries of the
//! event stream, the image views, and the error body. The HTTP transport (`api`) and the client (`client`) only move these; all decisions are in
//! the supervisor.

use serde::{Deserialize, Serialize};

use crate::fleet::{EndReason, InstanceStatus, ServiceSpec, StartKind};

/// One API action, decoded and validated at the boundary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    ListServices,
    GetService {
        name: String,
    },
    CreateService(ServiceSpec),
    /// Replace a service's spec (`PUT`); a new image or instance settings roll out.
    UpdateService(ServiceSpec),
    ScaleService {
        name: String,
        replicas: u32,
    },
    DeleteService {
        name: String,
    },
    /// Running instances, and those that ended recently; optionally of one service.
    ListInstances {
        service: Option<String>,
    },
    GetInstance {
        id: String,
    },
    /// Kill one instance; it is replaced like any failed one, without back-off.
    KillInstance {
        id: String,
    },
}

/// The supervisor's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    Service(ServiceInfo),
    Services(Vec<ServiceInfo>),
    Instance(InstanceInfo),
    Instances(Vec<InstanceInfo>),
    /// Accepted; nothing to report (deletes, kills).
    Done,
}

/// A service and how its instances are doing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceInfo {
    pub spec: ServiceSpec,
    /// The image digest instances of the current generation run.
    pub digest: String,
    pub generation: u64,
    /// Instances that are running (starting, healthy or unhealthy).
    pub running: u32,
    pub healthy: u32,
    /// A rolling update is in progress (from this generation).
    pub rolling_out_from: Option<u64>,
    /// Instances that failed and were replaced since the service was created.
    pub replacements: u64,
    /// Failures in a row are delaying starts.
    pub crash_looping: bool,
    /// Starts wait until this time (Unix ms) because of back-off.
    pub backoff_until_ms: Option<u64>,
    /// With `snapshot_starts`: the snapshot instances of the current generation start from
    /// (boxed: most services have none, and views travel by value).
    pub snapshot: Option<Box<SnapshotInfo>>,
}

/// Where a snapshot-starts service's snapshot is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotState {
    /// None yet: the next instance to pass its health check after booting is snapshotted.
    None,
    /// Being taken.
    Taking,
    /// Installed: new instances are restored from it.
    Ready,
    /// Failed too often: instances boot until the agent restarts.
    GivenUp,
}

/// A service's snapshot (`ServiceInfo.snapshot`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotInfo {
    pub state: SnapshotState,
    /// `<vcpus>x<MiB>-<hash>`: the machine and settings it is for (of the service's digest).
    pub key: String,
    /// Failed takes and refused restores so far.
    pub failures: u32,
    /// When it was taken (Unix ms), once ready.
    pub created_at_ms: Option<u64>,
    /// The instance it was taken of, once ready.
    pub source_instance: Option<String>,
    /// Guest memory bytes it holds, once ready.
    pub memory_bytes: Option<u64>,
}

/// One instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceInfo {
    pub id: String,
    pub service: String,
    pub generation: u64,
    pub digest: String,
    pub status: InstanceStatus,
    /// herd-vmm's process id while it runs.
    pub pid: Option<u32>,
    /// The guest's address on the agent's bridge, `10.0.0.2/24`.
    pub address: Option<String>,
    /// Unix ms when herd-vmm was started.
    pub started_at_ms: u64,
    /// Milliseconds from starting herd-vmm to the guest's boot-complete signal, once seen
    /// (a restored guest does not boot: none).
    pub boot_time_ms: Option<u64>,
    /// Booted, or restored from a snapshot.
    pub start: StartKind,
    pub uptime_ms: u64,
    /// Set once the instance ended.
    pub end: Option<InstanceEnd>,
}

/// How an instance ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceEnd {
    pub reason: EndReason,
    /// herd-vmm's exit status (`None` when killed by a signal or adopted).
    pub exit_code: Option<i32>,
    pub at_ms: u64,
}

/// One entry of the event stream (`GET /v1/events`, one JSON object per line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Numbers events in order, from 1 each time the agent starts.
    pub seq: u64,
    /// Unix ms when the supervisor recorded it.
    pub time_ms: u64,
    pub service: String,
    /// The instance it is about; `None` for service events.
    pub instance: Option<String>,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened, with its details; `type` in the JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    InstanceStarted {
        generation: u64,
        /// Booted or restored (events of agents before snapshots: booted).
        #[serde(default)]
        start: StartKind,
    },
    InstanceHealthy,
    InstanceUnhealthy,
    /// The agent asked it to stop (SIGTERM), or killed it (unhealthy, operator's kill).
    InstanceStopping {
        reason: EndReason,
    },
    /// herd-vmm is gone; `exit_code` is `None` when it was killed by a signal.
    InstanceExited {
        reason: EndReason,
        exit_code: Option<i32>,
    },
    /// The instance failed and counts as a replacement (a new one starts by the usual rules).
    InstanceReplaced,
    ServiceCreated {
        generation: u64,
        digest: String,
    },
    ServiceUpdated {
        generation: u64,
        digest: String,
        /// The change needs new instances: a rollout started.
        rolling: bool,
    },
    ServiceScaled {
        replicas: u32,
    },
    ServiceDeleted,
    /// Every instance runs this generation and is healthy.
    ServiceRolledOut {
        generation: u64,
    },
    /// The new version failed too often: back to the previous digest as a new generation.
    ServiceRolledBack {
        generation: u64,
        digest: String,
    },
    /// Failures in a row: the next start waits this long.
    ServiceCrashLooping {
        delay_ms: u64,
    },
    /// A snapshot of the instance was installed; the service's next instances start from it.
    SnapshotTaken {
        digest: String,
        key: String,
        memory_bytes: u64,
        /// How long the instance was paused (it serves nothing meanwhile).
        paused_ms: u64,
        /// To the snapshot installed: the pause, then a copy into the agent's own files.
        duration_ms: u64,
    },
    /// Taking a snapshot of the instance failed; instances keep booting.
    SnapshotFailed {
        key: String,
        error: String,
        /// Too many failures: no further attempts until the agent restarts.
        given_up: bool,
    },
    /// The instance, restored from the snapshot, failed before passing a check: the
    /// snapshot was removed and the next instance boots.
    SnapshotRemoved {
        key: String,
        given_up: bool,
    },
}

/// One image ref in the agent's store (`GET /v1/images`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInfo {
    /// `name:version`.
    pub reference: String,
    pub name: String,
    pub version: String,
    pub digest: String,
    /// Manifest and blobs in bytes; `None` when the manifest cannot be read.
    pub size: Option<u64>,
}

/// One image in detail (`GET /v1/images/{ref}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageDetails {
    pub digest: String,
    /// Every `name:version` pointing at this image.
    pub refs: Vec<String>,
    /// Manifest and blobs in bytes.
    pub size: u64,
    pub config: crate::image::config::ImageConfig,
}

/// What `DELETE /v1/images/{ref}` removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRemoval {
    /// Refs removed from the store's index.
    pub untagged: Vec<String>,
    /// Blobs deleted because no image uses them any more.
    pub deleted: Vec<String>,
}

/// One image `POST /v1/images/import` added.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportedImage {
    /// `name:version`.
    pub reference: String,
    pub digest: String,
    /// The digest the ref pointed at before, if it pointed elsewhere.
    pub replaced: Option<String>,
}

/// Body of every 4xx and 5xx answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// One line saying what is wrong.
    pub error: String,
    /// The request field that is wrong, as a JSON path, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Why a request was refused, with the HTTP status it maps to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{field}: {why}")]
    Invalid { field: String, why: String },
    #[error("{kind} {name:?} does not exist")]
    NotFound { kind: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

impl RequestError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Self::Invalid { .. } => 400,
            Self::NotFound { .. } => 404,
            Self::Conflict(_) => 409,
            Self::Internal(_) => 500,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.to_string(),
            field: match self {
                Self::Invalid { field, .. } => Some(field.clone()),
                _ => None,
            },
        }
    }
}

impl From<crate::fleet::SpecError> for RequestError {
    fn from(e: crate::fleet::SpecError) -> Self {
        Self::Invalid {
            field: e.field,
            why: e.why,
        }
    }
}
