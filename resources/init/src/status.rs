//! Exit statuses: what the VM ends with, computed from the app's wait status or from why the
//! app could not start. The table is the contract in `docs/image-format.md`: the app's own
//! status, 128 + N for death by signal N, 125/126/127 for init's own failures (as a shell).

use std::io;

/// Init could not set up: bad or missing configuration, a failed mount.
pub const SETUP_FAILED: u8 = 125;
/// The entrypoint exists but cannot be executed.
pub const CANNOT_EXECUTE: u8 = 126;
/// The entrypoint does not exist.
pub const NOT_FOUND: u8 = 127;

/// The exit status for a raw `waitpid` status, or `None` if it is not a termination
/// (stopped or continued, which init never asks for).
pub fn from_wait_status(raw: i32) -> Option<u8> {
    if libc::WIFEXITED(raw) {
        // WEXITSTATUS is the low 8 bits of the process's exit code.
        Some(libc::WEXITSTATUS(raw) as u8)
    } else if libc::WIFSIGNALED(raw) {
        let signal = libc::WTERMSIG(raw).clamp(0, 127) as u8;
        Some(128 + signal)
    } else {
        None
    }
}

/// Why the entrypoint did not start, from the `exec` error and whether the path exists.
#[derive(Debug, PartialEq, Eq)]
pub enum StartFailure {
    /// No such file (127).
    NotFound,
    /// The file is there but `exec` reported `ENOENT`: its ELF interpreter or `#!`
    /// interpreter is missing (126).
    InterpreterMissing,
    /// Any other `exec` failure: permissions, not an executable format, ... (126).
    CannotExecute,
}

impl StartFailure {
    /// Classifies an `exec` error.
    pub fn classify(err: &io::Error, path_exists: bool) -> Self {
        match err.raw_os_error() {
            Some(libc::ENOENT) if path_exists => Self::InterpreterMissing,
            Some(libc::ENOENT | libc::ENOTDIR) => Self::NotFound,
            _ => Self::CannotExecute,
        }
    }

    /// The VM's exit status for this failure.
    pub fn status(&self) -> u8 {
        match self {
            Self::NotFound => NOT_FOUND,
            Self::InterpreterMissing | Self::CannotExecute => CANNOT_EXECUTE,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    use super::*;

    #[test]
    fn exit_codes_pass_through_and_signals_add_128() {
        assert_eq!(from_wait_status(0), Some(0));
        assert_eq!(from_wait_status(3 << 8), Some(3));
        assert_eq!(from_wait_status(255 << 8), Some(255));
        assert_eq!(from_wait_status(libc::SIGTERM), Some(143));
        assert_eq!(from_wait_status(libc::SIGKILL), Some(137));
        // Core dump bit set.
        assert_eq!(from_wait_status(libc::SIGSEGV | 0x80), Some(139));
        // Stopped by SIGSTOP, continued: not terminations.
        assert_eq!(from_wait_status((libc::SIGSTOP << 8) | 0x7f), None);
        assert_eq!(from_wait_status(0xffff), None);
    }

    #[test]
    fn real_wait_statuses_from_the_kernel() {
        let run = |script: &str| {
            let st = Command::new("/bin/sh")
                .args(["-c", script])
                .status()
                .unwrap();
            from_wait_status(st.into_raw())
        };
        assert_eq!(run("exit 7"), Some(7));
        assert_eq!(run("kill -KILL $$"), Some(137));
        // Not SIGINT: a shell started in the background (`cmd &` without job control, as
        // under nohup) inherits it ignored and cannot reset it, and then exits 0.
        assert_eq!(run("kill -TERM $$"), Some(143));
    }

    #[test]
    fn start_failures_map_to_shell_statuses() {
        let err = io::Error::from_raw_os_error;
        let c = StartFailure::classify;
        assert_eq!(c(&err(libc::ENOENT), false), StartFailure::NotFound);
        assert_eq!(c(&err(libc::ENOTDIR), false), StartFailure::NotFound);
        assert_eq!(
            c(&err(libc::ENOENT), true),
            StartFailure::InterpreterMissing
        );
        assert_eq!(c(&err(libc::EACCES), true), StartFailure::CannotExecute);
        assert_eq!(c(&err(libc::ENOEXEC), true), StartFailure::CannotExecute);
        assert_eq!(StartFailure::NotFound.status(), 127);
        assert_eq!(StartFailure::InterpreterMissing.status(), 126);
        assert_eq!(StartFailure::CannotExecute.status(), 126);
    }
}
