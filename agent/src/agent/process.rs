//! herd-vmm processes as the agent holds them: started detached (their own process group,
//! console and logs in files, nothing tied to the agent), named by pid plus the kernel's start
//! time so a reused pid is never mistaken for an instance, and watched through a pidfd so an
//! exit is noticed at once, also for processes adopted after an agent restart (which are not
//! the agent's children and cannot be waited for).

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use tokio::io::unix::AsyncFd;

/// Errors starting, finding or signalling a herd-vmm process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot open {0}")]
    Log(PathBuf, #[source] std::io::Error),
    #[error("cannot start {0}")]
    Spawn(PathBuf, #[source] std::io::Error),
    #[error("cannot open a pidfd for pid {0}")]
    Pidfd(u32, #[source] std::io::Error),
    #[error("cannot signal pid {0}")]
    Signal(u32, #[source] std::io::Error),
    #[error("pid {0} is no longer the process that was started")]
    Replaced(u32),
}

/// A process, named so that a reused pid does not match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: u32,
    /// Field 22 of /proc/PID/stat: clock ticks after boot when the process started.
    pub start_ticks: u64,
}

/// The start time of `pid` from /proc, if it exists.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

/// Field 22 of a /proc/PID/stat line; the command name (field 2) may contain spaces and
/// parentheses, so fields are counted after its last `)`.
fn parse_start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A running herd-vmm: its identity and a pidfd to signal and watch it.
#[derive(Debug)]
pub struct Vmm {
    pub id: ProcessId,
    pidfd: OwnedFd,
    /// Set when this agent started it (it is our child and must be reaped).
    child: Option<tokio::process::Child>,
}

impl Vmm {
    /// Starts `vmm` with `args`; its stdout and stderr (herd-vmm's own log lines; the guest
    /// console goes to `--console-log`) append to `log`. The process gets its own process
    /// group so signals meant for the agent (a terminal's Ctrl-C) do not reach it.
    pub fn spawn(vmm: &Path, args: &[OsString], log: &Path) -> Result<Self, ProcessError> {
        let out = append(log)?;
        let err = out
            .try_clone()
            .map_err(|e| ProcessError::Log(log.to_owned(), e))?;
        let child = tokio::process::Command::new(vmm)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            // The agent's own log filter is not herd-vmm's: the arguments say its level.
            .env_remove("HERD_LOG")
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| ProcessError::Spawn(vmm.to_owned(), e))?;
        let pid = child.id().ok_or(ProcessError::Replaced(0))?;
        let pidfd = open_pidfd(pid)?;
        // The child cannot be reaped before we wait for it, so its /proc entry is there.
        let start_ticks = start_ticks(pid).ok_or(ProcessError::Replaced(pid))?;
        Ok(Self {
            id: ProcessId { pid, start_ticks },
            pidfd,
            child: Some(child),
        })
    }

    /// Takes hold of a process started by an earlier agent, if it is still the same one.
    pub fn adopt(id: ProcessId) -> Result<Self, ProcessError> {
        let pidfd = open_pidfd(id.pid)?;
        // Checked after opening: the pidfd now pins this process, so the check cannot race
        // with the pid being reused.
        if start_ticks(id.pid) != Some(id.start_ticks) {
            return Err(ProcessError::Replaced(id.pid));
        }
        Ok(Self {
            id,
            pidfd,
            child: None,
        })
    }

    /// Sends `signal` (through the pidfd: never to a process that reused the pid).
    pub fn signal(&self, signal: Signal) -> Result<(), ProcessError> {
        pidfd_send_signal(&self.pidfd, signal)
            .map_err(|e| ProcessError::Signal(self.id.pid, e.into()))
    }

    /// A handle that can signal the process after `wait` took ownership of this one.
    pub fn signaller(&self) -> Result<Signaller, ProcessError> {
        let fd = self
            .pidfd
            .try_clone()
            .map_err(|e| ProcessError::Pidfd(self.id.pid, e))?;
        Ok(Signaller {
            pid: self.id.pid,
            pidfd: fd,
        })
    }

    /// Waits for the process to end; its exit status when it was our child and exited
    /// normally (adopted processes are reaped by their new parent, so theirs is unknown).
    pub async fn wait(self) -> Option<i32> {
        if let Some(mut child) = self.child {
            return child.wait().await.ok().and_then(|s| s.code());
        }
        // `new` is deprecated because a borrowed raw fd could be closed while registered;
        // here AsyncFd owns the OwnedFd, which is the sound case (`register` is the same call
        // marked unsafe, which this crate forbids).
        #[allow(deprecated)]
        let registered = AsyncFd::new(self.pidfd);
        match registered {
            // A pidfd turns readable when the process exits.
            Ok(fd) => {
                let _ = fd.readable().await;
            }
            Err(_) => {
                // Cannot register the fd (out of resources): fall back to checking /proc.
                while start_ticks(self.id.pid) == Some(self.id.start_ticks) {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
        None
    }
}

/// Signals one process through its pidfd.
#[derive(Debug)]
pub struct Signaller {
    pid: u32,
    pidfd: OwnedFd,
}

impl Signaller {
    /// Sends `signal`; an already-exited process is not an error.
    pub fn signal(&self, signal: Signal) -> Result<(), ProcessError> {
        match pidfd_send_signal(&self.pidfd, signal) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(ProcessError::Signal(self.pid, e.into())),
        }
    }
}

fn open_pidfd(pid: u32) -> Result<OwnedFd, ProcessError> {
    let raw = i32::try_from(pid).ok().and_then(Pid::from_raw);
    let pid_t = raw.ok_or(ProcessError::Replaced(pid))?;
    pidfd_open(pid_t, PidfdFlags::empty()).map_err(|e| ProcessError::Pidfd(pid, e.into()))
}

fn append(path: &Path) -> Result<File, ProcessError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| ProcessError::Log(path.to_owned(), e))
}

/// Processes whose command line mentions `needle` (an instance's directory): finds a
/// herd-vmm an agent started but died before recording its pid.
pub fn find_by_argument(needle: &str) -> Vec<ProcessId> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .any(|arg| arg.windows(needle.len()).any(|w| w == needle.as_bytes()))
            })
        })
        .filter_map(|pid| {
            Some(ProcessId {
                pid,
                start_ticks: start_ticks(pid)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_are_read_past_a_command_name_with_spaces() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1 2";
        assert_eq!(parse_start_ticks(stat), Some(987654));
        assert_eq!(parse_start_ticks("garbage"), None);
        assert!(start_ticks(std::process::id()).is_some());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_spawned_process_is_signalled_and_its_exit_seen() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let args = ["-c".into(), "echo started; exec sleep 30".into()];
        let vmm = Vmm::spawn(Path::new("/bin/sh"), &args, &log).unwrap();
        let id = vmm.id;
        assert_eq!(start_ticks(id.pid), Some(id.start_ticks));
        let signaller = vmm.signaller().unwrap();
        let waiter = tokio::spawn(vmm.wait());
        signaller.signal(Signal::TERM).unwrap();
        assert_eq!(
            waiter.await.unwrap(),
            None,
            "killed by a signal: no exit code"
        );
        signaller.signal(Signal::TERM).unwrap();
        assert!(Vmm::adopt(id).is_err(), "the pid is gone");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_adopted_process_is_watched_through_its_pidfd() {
        // A process that is not our child: a grandchild whose parent exits at once.
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("adopt-me");
        // The inner shell keeps its command line (with the marker) while it loops; output
        // goes to /dev/null so it does not hold our pipe open.
        let script = format!(
            "sh -c 'while :; do sleep 1; done; : {}' >/dev/null 2>&1 & echo $!",
            marker.display()
        );
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .output()
            .unwrap();
        let pid: u32 = String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // A `sleep` the loop just forked still shows the shell's command line until it execs.
        let found = find_by_argument(marker.to_str().unwrap());
        let id = *found
            .iter()
            .find(|p| p.pid == pid)
            .expect("the shell is found");
        let vmm = Vmm::adopt(id).unwrap();
        let signaller = vmm.signaller().unwrap();
        let waiter = tokio::spawn(vmm.wait());
        signaller.signal(Signal::KILL).unwrap();
        let waited = tokio::time::timeout(std::time::Duration::from_secs(10), waiter).await;
        assert_eq!(waited.unwrap().unwrap(), None);
    }
}
