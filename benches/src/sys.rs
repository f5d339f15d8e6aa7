//! The raw calls benchmarks need: CLOCK_MONOTONIC as nanoseconds, the clock herd-vmm's
//! `first KVM_RUN monotonic_ns=` log line uses, so the two processes' times compare; and a
//! socket receive buffer larger than `rmem_max` (std has no call for it), so a benchmark's
//! reader does not drop datagrams while it is not scheduled.

use std::io;
use std::os::fd::AsRawFd;

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// Sets `sock`'s receive buffer to `bytes` (clamped to `i32::MAX`): `SO_RCVBUFFORCE`, which
/// ignores `net.core.rmem_max` but needs `CAP_NET_ADMIN`, else `SO_RCVBUF` (capped at it).
pub fn set_recv_buffer(sock: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        let value = (&size as *const libc::c_int).cast();
        // SAFETY: setsockopt reads `len` bytes (one c_int) from `value`, which points at
        // `size`, alive for the call; the fd is open for as long as `sock` is borrowed.
        let rc =
            unsafe { libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, option, value, len) };
        if rc == 0 {
            return Ok(());
        }
    }
    Err(io::Error::last_os_error())
}

/// Sends SIGKILL to `pid` (without spawning `kill`, whose start-up would be timed too).
pub fn kill9(pid: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The binary `name` next to the running benchmark (cargo builds them into one directory).
pub fn sibling(name: &str) -> io::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or(io::ErrorKind::NotFound)?;
    Ok(dir.join(name))
}
