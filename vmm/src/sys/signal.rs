//! Turns SIGTERM and SIGINT into an eventfd event the event loop can wait on. The handler only
//! stores the signal number and writes the eventfd, both async-signal-safe.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::register_signal_handler;

static SIGNAL_EVENT_FD: AtomicI32 = AtomicI32::new(-1);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(
    num: libc::c_int,
    _info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    LAST_SIGNAL.store(num, Ordering::SeqCst);
    let fd = SIGNAL_EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: `fd` is the eventfd kept open for the life of the process by the caller of
        // `forward_stop_signals`; we write 8 bytes from a live local. write(2) is
        // async-signal-safe.
        unsafe { libc::write(fd, (&raw const one).cast(), 8) };
    }
}

/// Routes SIGTERM and SIGINT to `evt`. `evt` must stay open for the rest of the process.
pub fn forward_stop_signals(evt: &EventFd) -> Result<(), vmm_sys_util::errno::Error> {
    SIGNAL_EVENT_FD.store(evt.as_raw_fd(), Ordering::SeqCst);
    register_signal_handler(libc::SIGTERM, on_stop_signal)?;
    register_signal_handler(libc::SIGINT, on_stop_signal)
}

/// The last stop signal received, if any.
pub fn last_stop_signal() -> Option<i32> {
    match LAST_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        n => Some(n),
    }
}
