//! A stand-in supervisor answering from canned data (one service `web`, two instances), and
//! the API served by it on a socket in a temporary directory. It records every request that
//! reached it, so tests can tell what the transport let through and how it decoded it. What
//! the real supervisor publishes (events, the fleet snapshot) the tests publish through a
//! [`World`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use herd::agent::api::{self, Backend};
use herd::agent::client::Client;
use herd::agent::dispatch::{Call, Dispatcher};
use herd::agent::events::EventLog;
use herd::agent::snapshot::FleetSnapshot;
use herd::agent::types::{
    InstanceEnd, InstanceInfo, Request, RequestError, Response, ServiceInfo, SnapshotInfo,
    SnapshotState,
};
use herd::fleet::{EndReason, InstanceStatus, ServiceSpec, StartKind};
use tokio::sync::{mpsc, oneshot, watch};

/// The views a supervisor publishes, written by the test, and the directories the API reads.
pub struct World {
    pub events: EventLog,
    pub fleet: watch::Sender<Arc<FleetSnapshot>>,
    pub home: PathBuf,
    pub instances_dir: PathBuf,
}

impl World {
    pub fn new(home: &Path, instances_dir: &Path) -> Self {
        Self {
            events: EventLog::new(1000),
            fleet: watch::channel(Arc::default()).0,
            home: home.to_owned(),
            instances_dir: instances_dir.to_owned(),
        }
    }

    /// A world in `dir` (`home/`, `instances/`).
    pub fn in_dir(dir: &Path) -> Self {
        Self::new(&dir.join("home"), &dir.join("instances"))
    }

    pub fn backend(&self, dispatcher: Dispatcher) -> Backend {
        Backend::new(
            dispatcher,
            self.events.clone(),
            self.fleet.subscribe(),
            self.home.clone(),
            self.instances_dir.clone(),
        )
    }

    /// Publishes `snapshot` as the supervisor would.
    pub fn publish(&self, snapshot: FleetSnapshot) {
        self.fleet.send_replace(Arc::new(snapshot));
    }
}

/// A running API with the fake supervisor behind it.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub world: Arc<World>,
    /// Requests the supervisor received, in order.
    pub seen: Arc<Mutex<Vec<Request>>>,
    stop: Option<oneshot::Sender<()>>,
    pub served: tokio::task::JoinHandle<Result<(), api::ApiError>>,
}

impl Agent {
    /// Serves on `<tempdir>/run/herd.sock` (the directory does not exist yet).
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let world = World::in_dir(dir.path());
        Self::start_in(dir, world).await
    }

    /// Serves on `<dir>/run/herd.sock` with `world` behind the API.
    pub async fn start_in(dir: tempfile::TempDir, world: World) -> Self {
        let socket = dir.path().join("run/herd.sock");
        let world = Arc::new(world);
        let (served, stop, seen) = serve_in(socket.clone(), None, world.clone()).await;
        Self {
            dir,
            socket,
            world,
            seen,
            stop: Some(stop),
            served,
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops serving and returns how `serve` ended.
    pub async fn stop(mut self) -> Result<(), api::ApiError> {
        let _ = self.stop.take().map(|s| s.send(()));
        self.served.await.unwrap()
    }
}

type Started = (
    tokio::task::JoinHandle<Result<(), api::ApiError>>,
    oneshot::Sender<()>,
    Arc<Mutex<Vec<Request>>>,
);

/// Spawns `api::serve` on `socket` with the fake supervisor; waits until the socket answers
/// (or serve failed). With `hold`, list requests are held until that many are waiting.
pub async fn serve(socket: PathBuf, hold: Option<usize>) -> Started {
    let dir = socket.parent().unwrap().to_owned();
    serve_in(socket, hold, Arc::new(World::in_dir(&dir))).await
}

/// [`serve`] with `world` behind the API.
pub async fn serve_in(socket: PathBuf, hold: Option<usize>, world: Arc<World>) -> Started {
    let (dispatcher, calls) = Dispatcher::channel();
    let backend = world.backend(dispatcher);
    let seen = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(supervise(calls, seen.clone(), hold));
    let (stop, stopped) = oneshot::channel::<()>();
    let path = socket.clone();
    let served = tokio::spawn(async move {
        api::serve(&path, api::Access::default(), backend, async {
            let _ = stopped.await;
        })
        .await
    });
    let client = Client::new(&socket);
    for _ in 0..500 {
        if served.is_finished() || client.health().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    (served, stop, seen)
}

async fn supervise(
    mut calls: mpsc::Receiver<Call>,
    seen: Arc<Mutex<Vec<Request>>>,
    hold: Option<usize>,
) {
    let mut held = Vec::new();
    while let Some((request, reply)) = calls.recv().await {
        seen.lock().unwrap().push(request.clone());
        let answer = answer(request);
        match hold {
            Some(n) => {
                held.push((reply, answer));
                if held.len() == n {
                    for (reply, answer) in held.drain(..) {
                        let _ = reply.send(answer);
                    }
                }
            }
            None => {
                let _ = reply.send(answer);
            }
        }
    }
}

fn not_found(kind: &'static str, name: String) -> RequestError {
    RequestError::NotFound { kind, name }
}

/// The canned answer to `request`.
pub fn answer(request: Request) -> Result<Response, RequestError> {
    Ok(match request {
        Request::ListServices => Response::Services(vec![web(web_spec())]),
        Request::GetService { name } if name == "web" => Response::Service(web(web_spec())),
        Request::CreateService(spec) if spec.name == "web" => {
            return Err(RequestError::Conflict("service \"web\" exists".into()));
        }
        Request::CreateService(spec) => Response::Service(web(spec)),
        Request::UpdateService(spec) if spec.name == "web" => Response::Service(web(spec)),
        Request::ScaleService { name, replicas } if name == "web" => {
            let mut spec = web_spec();
            spec.replicas = replicas;
            Response::Service(web(spec))
        }
        Request::DeleteService { name } if name == "web" => Response::Done,
        Request::GetService { name }
        | Request::UpdateService(ServiceSpec { name, .. })
        | Request::ScaleService { name, .. }
        | Request::DeleteService { name } => return Err(not_found("service", name)),
        Request::ListInstances { service } => Response::Instances(
            instances()
                .into_iter()
                .filter(|i| service.as_ref().is_none_or(|s| *s == i.service))
                .collect(),
        ),
        Request::GetInstance { id } => match instances().into_iter().find(|i| i.id == id) {
            Some(i) => Response::Instance(i),
            None => return Err(not_found("instance", id)),
        },
        Request::KillInstance { id } if instances().iter().any(|i| i.id == id) => Response::Done,
        Request::KillInstance { id } => return Err(not_found("instance", id)),
    })
}

pub fn web_spec() -> ServiceSpec {
    serde_json::from_str(
        r#"{"name":"web","image":"hello:1","replicas":2,"env":{"MODE":"prod"},
            "health_check":{"vsock":{"port":5000},"interval_ms":200,"timeout_ms":100},
            "snapshot_starts":true}"#,
    )
    .unwrap()
}

fn web(spec: ServiceSpec) -> ServiceInfo {
    ServiceInfo {
        running: spec.replicas,
        healthy: 1,
        spec,
        digest: format!("sha256:{}", "ab".repeat(32)),
        generation: 2,
        rolling_out_from: Some(1),
        replacements: 3,
        crash_looping: false,
        backoff_until_ms: None,
        snapshot: Some(Box::new(SnapshotInfo {
            state: SnapshotState::Ready,
            key: "1x128-0123456789abcdef".into(),
            failures: 1,
            created_at_ms: Some(1_700_000_000_500),
            source_instance: Some("web-000002a1".into()),
            memory_bytes: Some(9 << 20),
        })),
    }
}

pub fn instances() -> Vec<InstanceInfo> {
    let running = InstanceInfo {
        id: "web-000002a1".into(),
        service: "web".into(),
        generation: 2,
        digest: format!("sha256:{}", "ab".repeat(32)),
        status: InstanceStatus::Healthy,
        pid: Some(4242),
        address: Some("172.31.0.2/24".into()),
        started_at_ms: 1_700_000_000_000,
        boot_time_ms: Some(31),
        start: StartKind::Boot,
        uptime_ms: 187_000,
        end: None,
    };
    let ended = InstanceInfo {
        id: "web-000001b7".into(),
        generation: 1,
        status: InstanceStatus::Exited,
        pid: None,
        address: None,
        boot_time_ms: None,
        start: StartKind::Snapshot,
        uptime_ms: 900,
        end: Some(InstanceEnd {
            reason: EndReason::Unhealthy,
            exit_code: Some(143),
            at_ms: 1_700_000_001_000,
        }),
        ..running.clone()
    };
    vec![running, ended]
}
