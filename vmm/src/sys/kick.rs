//! Kicking a vCPU thread out of `KVM_RUN`: a real-time signal whose handler sets the thread's
//! `immediate_exit` flag in its `kvm_run` area. A signal alone is not enough: one that lands
//! just before the thread enters `KVM_RUN` would be lost and a halted guest would never exit;
//! with the flag set, the next `KVM_RUN` returns `EINTR` at once (after finishing any port or
//! MMIO access in progress, so the saved state is consistent).

use std::cell::Cell;

use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuFd;
use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

thread_local! {
    /// This thread's `kvm_run` area, set once by a vCPU thread before it first runs.
    static KVM_RUN_AREA: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal that kicks vCPU threads (the first real-time one, unused by the C runtime).
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn on_kick(_num: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let area = KVM_RUN_AREA.with(Cell::get);
    if !area.is_null() {
        // SAFETY: a non-null pointer was stored by `register_vcpu_thread` on this thread and
        // points into the vCPU's `kvm_run` mapping, which lives as long as the VcpuFd the
        // thread owns until it exits; taking a field's address reads nothing.
        let flag = unsafe { &raw mut (*area).immediate_exit };
        // SAFETY: `flag` points at a byte of that live mapping; a one-byte volatile store is
        // async-signal-safe and KVM reads the flag only when the thread enters KVM_RUN.
        unsafe { std::ptr::write_volatile(flag, 1) };
    }
}

/// Installs the kick handler for the process (once, before any vCPU thread starts).
pub fn install_kick_handler() -> vmm_sys_util::errno::Result<()> {
    register_signal_handler(kick_signal(), on_kick)
}

/// Makes kicks sent to the calling thread stop `fd`'s `KVM_RUN`. The thread must own `fd`
/// until it exits.
pub fn register_vcpu_thread(fd: &mut VcpuFd) {
    let area: *mut kvm_run = fd.get_kvm_run();
    KVM_RUN_AREA.with(|cell| cell.set(area));
}
