//! `--jail`: herd-vmm confines itself before it builds the VM, so a guest that takes over the
//! VMM process finds nothing of the host around it. The steps, in this order:
//!
//! 1. join the cgroups the launcher made (memory, CPU and pids limits apply from here on);
//! 2. new mount, IPC, UTS and network namespaces, and a new PID namespace for the child;
//! 3. fork: the parent stays outside, relays stop signals and ends with the child's status,
//!    so the launcher keeps one process to supervise; the child is PID 1 of its namespace
//!    and is killed if the parent goes;
//! 4. the child makes the jail directory its `/` (`pivot_root`, the old root detached, the
//!    new one remounted `nosuid,nodev,noexec`);
//! 5. limits on open files and no core dumps (they would hold guest memory);
//! 6. drop to the unprivileged uid and gid with no supplementary groups and `no_new_privs`.
//!
//! Everything the VM needs from the host (KVM, TAPs, kernel, initrds, disks) is opened
//! before, by [`crate::vmm::HostInputs`]; inside, only the console log and vsock sockets are
//! named, and they live in the jail directory.

use std::io;
use std::path::PathBuf;

use crate::config::JailConfig;
use crate::sys::jail::{self as sys, Forked, Limit};

/// Errors confining the process.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("cannot join cgroup {0}")]
    Cgroup(PathBuf, #[source] io::Error),
    #[error("cannot {0}")]
    Step(&'static str, #[source] io::Error),
}

impl JailError {
    /// Whether it failed for want of privilege (herd-vmm must start as root to jail).
    pub fn is_permission(&self) -> bool {
        let e = match self {
            Self::Cgroup(_, e) | Self::Step(_, e) => e,
        };
        e.kind() == io::ErrorKind::PermissionDenied
    }
}

/// Where the caller is after [`enter`].
#[derive(Debug)]
pub enum Side {
    /// Outside, with the jailed child's pid: wait for it with [`wait_for_child`].
    Parent(i32),
    /// Inside the jail, as the unprivileged user.
    Jailed,
}

fn step(what: &'static str) -> impl FnOnce(io::Error) -> JailError {
    move |e| JailError::Step(what, e)
}

/// Confines the process as described in the module doc. Call while single-threaded.
pub fn enter(jail: &JailConfig) -> Result<Side, JailError> {
    for cgroup in &jail.cgroups {
        // "0" moves the writer itself, whatever its pid is called in any namespace.
        std::fs::write(cgroup.join("cgroup.procs"), b"0")
            .map_err(|e| JailError::Cgroup(cgroup.clone(), e))?;
    }
    sys::unshare_namespaces().map_err(step("create namespaces"))?;
    let (watch, alive) = sys::parent_watch_pipe().map_err(step("create the parent's pipe"))?;
    match sys::fork().map_err(step("fork the jailed process"))? {
        Forked::Parent { child } => {
            // Held open until this process ends: the child watches for its closing.
            std::mem::forget(alive);
            drop(watch);
            sys::relay_stop_signals(child).map_err(step("relay stop signals"))?;
            Ok(Side::Parent(child))
        }
        Forked::Child => {
            drop(alive);
            tie_to_parent(&watch)?;
            confine(jail)?;
            // Changing credentials cleared the parent-death signal: ask again, check again.
            tie_to_parent(&watch)?;
            Ok(Side::Jailed)
        }
    }
}

/// Asks to be killed when the parent ends, then makes sure it has not ended already.
fn tie_to_parent(watch: &std::os::fd::OwnedFd) -> Result<(), JailError> {
    sys::die_with_parent().map_err(step("tie the jailed process to its parent"))?;
    if sys::parent_gone(watch).map_err(step("watch the parent"))? {
        let gone = io::Error::other("it ended before the jail was set");
        return Err(JailError::Step("run without the parent process", gone));
    }
    Ok(())
}

fn confine(jail: &JailConfig) -> Result<(), JailError> {
    sys::make_mounts_private().map_err(step("make mounts private"))?;
    sys::bind_onto_itself(&jail.root).map_err(step("bind-mount the jail directory"))?;
    std::env::set_current_dir(&jail.root).map_err(step("enter the jail directory"))?;
    sys::pivot_into_cwd().map_err(step("pivot_root into the jail directory"))?;
    sys::harden_root_mount().map_err(step("remount the jail nosuid,nodev,noexec"))?;
    sys::set_hostname("herd").map_err(step("set the jail's hostname"))?;
    sys::set_limit(Limit::OpenFiles, jail.max_open_files).map_err(step("limit open files"))?;
    sys::set_limit(Limit::CoreFileSize, 0).map_err(step("disable core dumps"))?;
    sys::become_user(jail.uid, jail.gid).map_err(step("drop to the jail's user"))?;
    sys::no_new_privs().map_err(step("set no_new_privs"))
}

/// Waits for the jailed child; its exit status, or 128 plus the signal that ended it.
pub fn wait_for_child(child: i32) -> Result<i32, JailError> {
    sys::wait_for(child).map_err(step("wait for the jailed process"))
}
