//! `herd agent` from start to exit: lock the state directory, open the database, set up the
//! bridge, take over running instances, then serve the API until SIGTERM or SIGINT. Stopping
//! the agent never stops instances: they run on, and the next agent adopts them.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::api::{self, Access, ApiError, Backend};
use super::cgroup::{CgroupError, Cgroups};
use super::config::AgentArgs;
use super::db::{Db, DbError};
use super::dispatch::Dispatcher;
use super::network::{Bridge, NetworkError};
use super::supervisor::{JailSettings, LaunchSettings, Settings, Supervisor, SupervisorError};
use crate::run::RunError;

/// Why the agent could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot create the state directory {0}")]
    StateDir(PathBuf, #[source] std::io::Error),
    #[error("another agent uses the state directory {0}")]
    Locked(PathBuf),
    #[error("cannot lock {0}")]
    Lock(PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot set up the bridge")]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Vmm(#[from] RunError),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("cannot jail instances (--no-jail runs them unjailed)")]
    Jail(#[source] CgroupError),
    #[error("jailing instances needs root (--no-jail runs them unjailed)")]
    JailNeedsRoot,
}

/// `--bridge none`: instances get no network.
pub const NO_BRIDGE: &str = "none";

/// Runs the agent until it is told to stop.
pub fn run(args: AgentArgs, home: &Path) -> Result<(), AgentError> {
    init_logging();
    raise_open_file_limit();
    let state_dir = args.state_dir(home);
    let instances_dir = state_dir.join("instances");
    std::fs::create_dir_all(&instances_dir)
        .map_err(|e| AgentError::StateDir(instances_dir.clone(), e))?;
    let _lock = lock(&state_dir)?;
    let db = Db::open(&state_dir.join("state.db"))?;
    let bridge = if args.bridge == NO_BRIDGE {
        None
    } else {
        Some(Bridge::ensure(&args.bridge, args.subnet)?)
    };
    let jail = jail_settings(&args, &state_dir)?;
    let cgroups = jail.as_ref().map(|j| j.cgroups.clone());
    let settings = Settings {
        home: home.to_owned(),
        vmm: args.vmm_path()?,
        launch: LaunchSettings {
            instances_dir,
            bridge,
            console_log_max_bytes: args.log_max_bytes,
            pvm: Path::new("/sys/module/kvm_pvm").exists(),
            cpuid_cache: state_dir.clone(),
            jail,
        },
        keep_ended_ms: args.log_keep_ms,
        snapshots_dir: state_dir.join("snapshots"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    let served = runtime.block_on(serve(settings, db, &args.socket_path(), args.access()));
    // Instances outlive the agent and keep their groups; only an empty group goes.
    if let Some(cgroups) = cgroups {
        cgroups.remove_group_if_empty();
    }
    served
}

/// How instances are jailed, unless `--no-jail`: the cgroup hierarchy is found and prepared.
fn jail_settings(args: &AgentArgs, state_dir: &Path) -> Result<Option<JailSettings>, AgentError> {
    if args.no_jail {
        return Ok(None);
    }
    if !rustix::process::geteuid().is_root() {
        return Err(AgentError::JailNeedsRoot);
    }
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| AgentError::Jail(CgroupError::Read("/proc/self/cgroup".into(), e)))?;
    // Named after the state directory: this agent's instances, and only them, every run.
    let digest = crate::image::sha256_digest(state_dir.as_os_str().as_encoded_bytes());
    let group = format!("herd-{}", &digest["sha256:".len()..][..12]);
    let cgroups =
        Cgroups::detect(Path::new("/sys/fs/cgroup"), &own, &group).map_err(AgentError::Jail)?;
    tracing::info!(?cgroups, "instances are jailed");
    Ok(Some(JailSettings {
        uid_base: args.jail_uid_base,
        uid_count: args.jail_uid_count,
        cgroups,
        memory_overhead_mib: args.jail_memory_overhead_mib,
    }))
}

/// Each instance holds a pidfd and, while checked, a socket in the agent: hundreds of
/// instances pass the usual soft limit of 1024 open files. Raise it to the hard limit.
fn raise_open_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(open_files = ?limit.maximum, "raised the open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

async fn serve(
    settings: Settings,
    db: Db,
    socket: &Path,
    access: Access,
) -> Result<(), AgentError> {
    let (dispatcher, calls) = Dispatcher::channel();
    let (home, instances_dir) = (settings.home.clone(), settings.launch.instances_dir.clone());
    let bridge = settings.launch.bridge.clone();
    let supervisor = Supervisor::start(settings, db)?;
    let backend = Backend::new(
        dispatcher,
        supervisor.events(),
        supervisor.fleet(),
        home,
        instances_dir,
    )
    .with_notices(supervisor.notices());
    let fleet = tokio::spawn(supervisor.run(calls));
    tracing::info!(socket = %socket.display(), ?access, "serving");
    api::serve(socket, access, backend, stop_signal()).await?;
    // The API's dispatchers are gone, so the supervisor's queue closes and it returns.
    let running = fleet.await.unwrap_or(usize::MAX);
    match bridge {
        // Nothing uses the bridge any more: leave the host as it was.
        Some(bridge) if running == 0 => {
            if let Err(e) = bridge.remove() {
                tracing::warn!(bridge = %bridge.name, error = %super::supervisor::chain(&e), "cannot remove the bridge");
            }
            tracing::info!("stopped");
        }
        _ => tracing::info!(running, "stopped; instances keep running"),
    }
    Ok(())
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// One agent per state directory: an exclusive lock held for the agent's life.
fn lock(state_dir: &Path) -> Result<File, AgentError> {
    let path = state_dir.join("agent.lock");
    let file = File::create(&path).map_err(|e| AgentError::Lock(path.clone(), e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(AgentError::Locked(state_dir.to_owned())),
        Err(std::fs::TryLockError::Error(e)) => Err(AgentError::Lock(path, e)),
    }
}

/// Log lines to stderr; `HERD_LOG` sets the filter (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
