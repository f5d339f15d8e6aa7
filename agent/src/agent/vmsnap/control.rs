//! herd-vmm's control socket (`--api-socket`, docs/snapshots.md): one JSON request per line,
//! one JSON reply line per request. The agent uses it for one thing: pause the VM, write a
//! snapshot, resume, and it always resumes, whatever failed before.
//!
//! The socket lies in a directory the jailed herd-vmm owns, so it is connected to only if it
//! is a socket (never through a link in its place), and its replies are read like any
//! untrusted input: a line of bounded length, unknown fields refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

/// Longest reply line read (a reply is a few dozen bytes; an error carries a cause chain).
const MAX_REPLY: u64 = 16 * 1024;
/// How long pausing or resuming may take: vCPUs leave the guest within microseconds.
const QUICK: Duration = Duration::from_secs(5);

/// Why talking to herd-vmm's control socket failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0} is not a socket")]
    NotASocket(PathBuf),
    #[error("cannot connect to {0}")]
    Connect(PathBuf, #[source] std::io::Error),
    #[error("the control socket failed during {0}")]
    Io(&'static str, #[source] std::io::Error),
    #[error("no reply to {0} within {1:?}")]
    Timeout(&'static str, Duration),
    #[error("herd-vmm closed the control socket before answering {0}")]
    Closed(&'static str),
    #[error("the reply to {0} is longer than {MAX_REPLY} bytes")]
    TooLong(&'static str),
    #[error("the reply to {0} is not valid")]
    BadReply(&'static str, #[source] serde_json::Error),
    #[error("herd-vmm refused {action}: {error}")]
    Refused { action: &'static str, error: String },
    #[error("after {action} herd-vmm says the VM is {state:?}")]
    WrongState {
        action: &'static str,
        state: VmState,
    },
}

/// One request (`action` on the wire).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
enum Action<'a> {
    Status,
    Pause,
    Resume,
    Snapshot { dir: &'a str },
}

impl Action<'_> {
    fn name(&self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Snapshot { .. } => "snapshot",
        }
    }

    /// The state the VM is in after the action succeeded (`None`: as it was).
    fn leaves(&self) -> Option<VmState> {
        match self {
            Self::Status => None,
            Self::Resume => Some(VmState::Running),
            Self::Pause | Self::Snapshot { .. } => Some(VmState::Paused),
        }
    }
}

/// Whether the VM's vCPUs run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Running,
    Paused,
}

/// One reply line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Reply {
    ok: bool,
    #[serde(default)]
    state: Option<VmState>,
    /// Memory bytes written (snapshot).
    #[serde(default)]
    bytes: Option<u64>,
    #[serde(default)]
    error: Option<String>,
}

/// One connection to a control socket.
struct Control {
    stream: BufReader<UnixStream>,
}

impl Control {
    async fn connect(socket: &Path) -> Result<Self, ControlError> {
        let kind = tokio::fs::symlink_metadata(socket)
            .await
            .map_err(|e| ControlError::Connect(socket.to_owned(), e))?;
        if !std::os::unix::fs::FileTypeExt::is_socket(&kind.file_type()) {
            return Err(ControlError::NotASocket(socket.to_owned()));
        }
        let stream = tokio::time::timeout(QUICK, UnixStream::connect(socket))
            .await
            .map_err(|_| ControlError::Timeout("connect", QUICK))?
            .map_err(|e| ControlError::Connect(socket.to_owned(), e))?;
        Ok(Self {
            stream: BufReader::new(stream),
        })
    }

    /// Sends `action` and reads its reply within `timeout`; the VM must be in the state
    /// the action leaves it in.
    async fn call(
        &mut self,
        action: &Action<'_>,
        timeout: Duration,
    ) -> Result<Reply, ControlError> {
        let name = action.name();
        let exchange = async {
            let mut line = serde_json::to_vec(action).unwrap_or_default();
            line.push(b'\n');
            let io = |e| ControlError::Io(name, e);
            self.stream.get_mut().write_all(&line).await.map_err(io)?;
            let mut reply = Vec::new();
            let mut limited = (&mut self.stream).take(MAX_REPLY);
            limited.read_until(b'\n', &mut reply).await.map_err(io)?;
            match reply.last() {
                Some(b'\n') => Ok(reply),
                None => Err(ControlError::Closed(name)),
                Some(_) if reply.len() as u64 >= MAX_REPLY => Err(ControlError::TooLong(name)),
                Some(_) => Err(ControlError::Closed(name)),
            }
        };
        let line = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ControlError::Timeout(name, timeout))??;
        let reply: Reply =
            serde_json::from_slice(&line).map_err(|e| ControlError::BadReply(name, e))?;
        check(name, action.leaves(), reply)
    }
}

fn check(action: &'static str, want: Option<VmState>, reply: Reply) -> Result<Reply, ControlError> {
    if !reply.ok {
        let error = reply.error.unwrap_or_else(|| "no reason given".to_owned());
        return Err(ControlError::Refused { action, error });
    }
    match (reply.state, want) {
        (Some(state), Some(want)) if state != want => {
            Err(ControlError::WrongState { action, state })
        }
        _ => Ok(reply),
    }
}

/// Resumes the VM behind `socket` if it is paused, as an agent that died between pausing it
/// for a snapshot and resuming it leaves it; returns whether it was paused.
pub async fn resume_if_paused(socket: &Path) -> Result<bool, ControlError> {
    let mut control = Control::connect(socket).await?;
    let status = control.call(&Action::Status, QUICK).await?;
    if status.state != Some(VmState::Paused) {
        return Ok(false);
    }
    control.call(&Action::Resume, QUICK).await?;
    Ok(true)
}

/// How a VM's pause for a snapshot ended: whether it was resumed (tried whatever happened
/// to the snapshot), and how long it was paused.
#[derive(Debug)]
pub struct Paused {
    pub resumed: Result<(), ControlError>,
    pub ms: u64,
}

impl Paused {
    /// Never paused.
    pub fn not() -> Self {
        Self {
            resumed: Ok(()),
            ms: 0,
        }
    }
}

/// What [`take`] did: the snapshot (memory bytes written) and the pause.
#[derive(Debug)]
pub struct Taken {
    pub snapshot: Result<u64, ControlError>,
    pub paused: Paused,
}

/// Pauses the VM behind `socket`, has herd-vmm write a snapshot to `dir` (a path as herd-vmm
/// sees it: inside its jail when jailed) within `timeout`, and resumes the VM.
pub async fn take(socket: &Path, dir: &str, timeout: Duration) -> Taken {
    let not_paused = |e| Taken {
        snapshot: Err(e),
        paused: Paused::not(),
    };
    let mut control = match Control::connect(socket).await {
        Ok(c) => c,
        Err(e) => return not_paused(e),
    };
    let pausing = std::time::Instant::now();
    let snapshot = match control.call(&Action::Pause, QUICK).await {
        // Refused: the VM is as it was, running; there is nothing to resume.
        Err(e @ ControlError::Refused { .. }) => return not_paused(e),
        // Unknown whether it paused (or will): resume below.
        Err(e) => Err(e),
        Ok(_) => control
            .call(&Action::Snapshot { dir }, timeout)
            .await
            .map(|reply| reply.bytes.unwrap_or(0)),
    };
    // After a failure the connection may still owe a late reply: resume on a fresh one.
    let resumed = match snapshot.is_ok() {
        true => control.call(&Action::Resume, QUICK).await.map(|_| ()),
        false => {
            drop(control);
            match Control::connect(socket).await {
                Ok(mut fresh) => fresh.call(&Action::Resume, QUICK).await.map(|_| ()),
                Err(e) => Err(e),
            }
        }
    };
    let ms = pausing.elapsed().as_millis() as u64;
    Taken {
        snapshot,
        paused: Paused { resumed, ms },
    }
}

#[cfg(test)]
mod tests;
