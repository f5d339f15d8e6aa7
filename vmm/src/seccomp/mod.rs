//! Per-thread seccomp filters: the event-loop thread and each vCPU thread run under an
//! allow-list of exactly the system calls (and, for `ioctl`, `socket`, `fcntl`, `mmap` and
//! `mprotect`, the arguments) that thread makes once the VM is built. Everything before that
//! (opening inputs, creating the VM, spawning threads) runs unfiltered, so the lists stay
//! short: a guest that takes over a thread finds no way to open files, exec, create sockets
//! other than Unix ones, or map executable memory.
//!
//! The lists were found by running every end-to-end test under [`SeccompMode::Audit`], which
//! logs instead of killing (the kernel's audit log names each call: `type=1326 ... syscall=N`).

mod rules;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {0} seccomp filter")]
    Build(&'static str, #[source] seccompiler::BackendError),
    #[error("cannot compile the {0} seccomp filter")]
    Compile(&'static str, #[source] seccompiler::BackendError),
    #[error("cannot install the {0} seccomp filter")]
    Install(&'static str, #[source] seccompiler::Error),
}

/// What happens to a thread that makes a call outside its list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// The whole process is killed (`SIGSYS`): the default.
    #[default]
    Kill,
    /// The call goes ahead and the kernel logs it: for finding a missing entry.
    Audit,
    /// No filters (debugging only).
    Off,
}

/// Which allow-list a thread gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The thread running the event loop (the process's main thread).
    EventLoop,
    /// A vCPU thread.
    Vcpu,
}

impl ThreadKind {
    fn name(self) -> &'static str {
        match self {
            Self::EventLoop => "event-loop",
            Self::Vcpu => "vCPU",
        }
    }
}

/// The compiled filters, built once before any thread needs one.
#[derive(Clone, Debug)]
pub struct Filters {
    event_loop: BpfProgram,
    vcpu: BpfProgram,
}

impl Filters {
    /// Compiles both filters for `mode`; `None` for [`SeccompMode::Off`].
    pub fn build(mode: SeccompMode) -> Result<Option<Self>, SeccompError> {
        let mismatch = match mode {
            SeccompMode::Kill => SeccompAction::KillProcess,
            SeccompMode::Audit => SeccompAction::Log,
            SeccompMode::Off => return Ok(None),
        };
        Ok(Some(Self {
            event_loop: compile(ThreadKind::EventLoop, mismatch.clone())?,
            vcpu: compile(ThreadKind::Vcpu, mismatch)?,
        }))
    }

    /// Installs the filter for `kind` on the calling thread (and sets `no_new_privs`, which
    /// seccomp requires of an unprivileged caller). Threads it spawns afterwards inherit it.
    pub fn install(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let program = match kind {
            ThreadKind::EventLoop => &self.event_loop,
            ThreadKind::Vcpu => &self.vcpu,
        };
        seccompiler::apply_filter(program).map_err(|e| SeccompError::Install(kind.name(), e))
    }
}

fn compile(kind: ThreadKind, mismatch: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let rules = rules::allowed(kind).map_err(|e| SeccompError::Build(kind.name(), e))?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| SeccompError::Build(kind.name(), e))?;
    filter
        .try_into()
        .map_err(|e| SeccompError::Compile(kind.name(), e))
}

#[cfg(test)]
mod tests;
