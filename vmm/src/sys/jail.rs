//! The system calls that confine herd-vmm (`crate::jail` decides the order): namespaces,
//! `fork`, mounts and `pivot_root`, dropping to an unprivileged user, resource limits, and
//! the parent's relay of stop signals to its jailed child.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use vmm_sys_util::signal::register_signal_handler;

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput.into())
}

/// Moves the process into new mount, IPC, UTS and network namespaces, and its next child into
/// a new PID namespace.
pub fn unshare_namespaces() -> io::Result<()> {
    let flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWPID;
    // SAFETY: unshare takes flags only and changes no memory of ours.
    check(unsafe { libc::unshare(flags) })
}

/// Which side of a `fork` we are on.
pub enum Forked {
    Parent { child: libc::pid_t },
    Child,
}

/// Forks. Only call while the process has a single thread: the child gets only the caller.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: herd-vmm forks before it starts any thread (the caller's contract), so the
    // child's copy of every lock and allocator state is consistent.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        child => Ok(Forked::Parent { child }),
    }
}

/// A pipe whose write end only the parent keeps open: once the parent has ended, the read
/// end reports hang-up. It closes the gap `die_with_parent` leaves (a parent that ends before
/// the child asks to die with it).
pub fn parent_watch_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a live array of two ints the kernel fills in.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    let read = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above.
    let write = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    Ok((read, write))
}

/// Whether every write end of the pipe `read` belongs to is closed (the parent has ended),
/// without waiting.
pub fn parent_gone(read: &OwnedFd) -> io::Result<bool> {
    let mut poll = libc::pollfd {
        fd: read.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd, a zero timeout.
    check(unsafe { libc::poll(&mut poll, 1, 0) })?;
    Ok(poll.revents & libc::POLLHUP != 0)
}

/// The kernel sends SIGKILL to this process when the process that forked it ends.
pub fn die_with_parent() -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number; no pointers.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) })
}

/// Stops mounts made from now on from reaching the namespace we came from.
pub fn make_mounts_private() -> io::Result<()> {
    // SAFETY: the target is a static NUL-terminated string; the other pointers may be null
    // for a propagation change.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })
}

/// Bind-mounts `dir` onto itself, so it is a mount point `pivot_root` accepts.
pub fn bind_onto_itself(dir: &Path) -> io::Result<()> {
    let dir = c_path(dir)?;
    // SAFETY: both paths point at the live CString; type and data may be null for a bind.
    check(unsafe {
        libc::mount(
            dir.as_ptr(),
            dir.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    })
}

/// Makes the current directory `/` and detaches the old root, so nothing of the host's
/// filesystem stays reachable.
pub fn pivot_into_cwd() -> io::Result<()> {
    let dot = c".";
    // SAFETY: pivot_root takes two NUL-terminated paths, both the static ".". With the same
    // directory for both, the old root is stacked under the new one until detached below.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } as i32)?;
    // SAFETY: "." is a static NUL-terminated string.
    check(unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) })?;
    std::env::set_current_dir("/")
}

/// Remounts `/` (the jail) without set-uid programs, device files or executables.
pub fn harden_root_mount() -> io::Result<()> {
    let flags =
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: the target is a static string; source, type and data may be null for a
    // remount of a bind mount.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    })
}

/// Names the (new) UTS namespace's host.
pub fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, which outlive the call.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

/// A resource limit the jail sets.
#[derive(Clone, Copy, Debug)]
pub enum Limit {
    OpenFiles,
    CoreFileSize,
}

/// Sets a resource limit, soft and hard alike.
pub fn set_limit(which: Limit, value: u64) -> io::Result<()> {
    let resource = match which {
        Limit::OpenFiles => libc::RLIMIT_NOFILE,
        Limit::CoreFileSize => libc::RLIMIT_CORE,
    };
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `limit` is a live, initialised rlimit the kernel only reads.
    check(unsafe { libc::setrlimit(resource, &limit) })
}

/// Drops every supplementary group, then becomes `gid` and `uid` (real, effective and saved),
/// which also clears all capabilities.
pub fn become_user(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: a zero-length list; the pointer is not read.
    check(unsafe { libc::setgroups(0, std::ptr::null()) })?;
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresgid(gid, gid, gid) })?;
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresuid(uid, uid, uid) })
}

/// Sets `no_new_privs`: nothing this process executes can gain privileges.
pub fn no_new_privs() -> io::Result<()> {
    // SAFETY: integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn relay(num: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let child = CHILD.load(Ordering::SeqCst);
    if child > 0 {
        // SAFETY: kill(2) is async-signal-safe and takes integers only.
        unsafe { libc::kill(child, num) };
    }
}

/// From now on SIGTERM and SIGINT sent to this process go to `child` instead.
pub fn relay_stop_signals(child: libc::pid_t) -> io::Result<()> {
    CHILD.store(child, Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        register_signal_handler(sig, relay).map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    }
    Ok(())
}

/// Waits for `child` to end; returns its exit status, or 128 plus the signal that killed it.
pub fn wait_for(child: libc::pid_t) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a live int the kernel writes.
        let rc = unsafe { libc::waitpid(child, &mut status, 0) };
        if rc == child {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    })
}
