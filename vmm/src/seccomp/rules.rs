//! The allow-lists themselves, one function per group of calls, so each entry says which part
//! of herd-vmm needs it.

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond,
    SeccompRule,
};

use super::ThreadKind;
use crate::sys::tap::{TUNSETOFFLOAD, TUNSETVNETHDRSZ};

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// `_IO(KVMIO, 0x80)`: the only KVM call made after the VM is built.
pub const KVM_RUN: u64 = 0xae80;
/// Sets or clears `O_NONBLOCK` on a socket (the vsock muxer's accepted connections).
const FIONBIO: u64 = 0x5421;

/// The rules for `kind`'s thread.
pub fn allowed(kind: ThreadKind) -> Result<Rules, BackendError> {
    let mut rules = Rules::new();
    runtime(&mut rules)?;
    console(&mut rules);
    match kind {
        ThreadKind::EventLoop => {
            event_loop(&mut rules);
            block_io(&mut rules);
            vsock(&mut rules)?;
            exit_report(&mut rules);
            snapshots(&mut rules)?;
        }
        ThreadKind::Vcpu => {
            vcpu(&mut rules)?;
            vcpu_state(&mut rules)?;
        }
    }
    Ok(rules)
}

fn allow(rules: &mut Rules, calls: &[libc::c_long]) {
    for call in calls {
        rules.insert(*call, Vec::new());
    }
}

/// `call` is allowed only when argument `arg` equals one of `values`.
fn allow_arg_in(
    rules: &mut Rules,
    call: libc::c_long,
    arg: u8,
    values: &[u64],
) -> Result<(), BackendError> {
    let list = values
        .iter()
        .map(|v| SeccompRule::new(vec![Cond::new(arg, Len::Dword, Op::Eq, *v)?]))
        .collect::<Result<Vec<_>, _>>()?;
    rules.entry(call).or_default().extend(list);
    Ok(())
}

/// What Rust's runtime, the allocator and the synchronisation between threads use, on glibc
/// and musl alike. Memory may be mapped and protected, but never executable.
fn runtime(rules: &mut Rules) -> Result<(), BackendError> {
    allow(
        rules,
        &[
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_writev,
            libc::SYS_close,
            libc::SYS_futex,
            libc::SYS_clock_gettime,
            libc::SYS_brk,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            libc::SYS_sigaltstack,
            libc::SYS_sched_yield,
            libc::SYS_restart_syscall,
            libc::SYS_getrandom,
            libc::SYS_getpid,
            libc::SYS_gettid,
            libc::SYS_exit,
            libc::SYS_exit_group,
        ],
    );
    let no_exec = || Cond::new(2, Len::Dword, Op::MaskedEq(libc::PROT_EXEC as u64), 0);
    for call in [libc::SYS_mmap, libc::SYS_mprotect] {
        rules.insert(call, vec![SeccompRule::new(vec![no_exec()?])?]);
    }
    // A panic aborts the process with SIGABRT to itself (glibc: tgkill, musl: tkill).
    allow_arg_in(rules, libc::SYS_tgkill, 2, &[libc::SIGABRT as u64])?;
    allow_arg_in(rules, libc::SYS_tkill, 1, &[libc::SIGABRT as u64])?;
    let fcntl_cmds = [libc::F_GETFD, libc::F_SETFD, libc::F_GETFL, libc::F_SETFL];
    allow_arg_in(rules, libc::SYS_fcntl, 1, &fcntl_cmds.map(|c| c as u64))
}

/// The console log: written by whichever thread emulates the serial port, and rotated by
/// name (`console.log` to `console.log.1`) when it reaches its cap.
fn console(rules: &mut Rules) {
    allow(
        rules,
        &[
            // musl opens with `open`, glibc with `openat`.
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_rename,
            libc::SYS_renameat,
            libc::SYS_unlink,
            libc::SYS_unlinkat,
        ],
    );
}

/// The event loop's own waiting and timers.
fn event_loop(rules: &mut Rules) {
    allow(
        rules,
        &[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_timerfd_settime,
            libc::SYS_readv,
        ],
    );
}

/// virtio-blk requests.
fn block_io(rules: &mut Rules) {
    allow(
        rules,
        &[
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_fsync,
            libc::SYS_fdatasync,
            libc::SYS_fallocate,
        ],
    );
}

/// virtio-vsock: host connections accepted on the Unix socket, guest connections made to
/// `PATH_<port>`. Only Unix sockets can be created.
fn vsock(rules: &mut Rules) -> Result<(), BackendError> {
    allow(
        rules,
        &[
            libc::SYS_accept4,
            libc::SYS_connect,
            libc::SYS_sendto,
            libc::SYS_recvfrom,
            libc::SYS_sendmsg,
            libc::SYS_recvmsg,
            libc::SYS_shutdown,
        ],
    );
    allow_arg_in(rules, libc::SYS_socket, 0, &[libc::AF_UNIX as u64])?;
    allow_arg_in(rules, libc::SYS_ioctl, 1, &[FIONBIO])
}

/// `ioctl` numbers of the KVM calls that read state: `_IOR`/`_IOWR(KVMIO, nr, T)`.
const fn kvm_read(nr: u64, size: usize, write_too: bool) -> u64 {
    let dir = if write_too { 3 } else { 2 };
    (dir << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}

/// The KVM calls that read the VM-wide state for a snapshot, on the event loop.
pub const KVM_VM_STATE_READS: [u64; 4] = [
    kvm_read(0x02, size_of::<kvm_bindings::kvm_msr_list>(), true), // GET_MSR_INDEX_LIST
    kvm_read(0x62, size_of::<kvm_bindings::kvm_irqchip>(), true),  // GET_IRQCHIP
    kvm_read(0x9f, size_of::<kvm_bindings::kvm_pit_state2>(), false), // GET_PIT2
    kvm_read(0x7c, size_of::<kvm_bindings::kvm_clock_data>(), false), // GET_CLOCK
];

/// The KVM calls that read one vCPU's state, on its own thread.
pub const KVM_VCPU_STATE_READS: [u64; 11] = [
    kvm_read(0x81, size_of::<kvm_bindings::kvm_regs>(), false), // GET_REGS
    kvm_read(0x83, size_of::<kvm_bindings::kvm_sregs>(), false), // GET_SREGS
    kvm_read(0x88, size_of::<kvm_bindings::kvm_msrs>(), true),  // GET_MSRS
    kvm_read(0x8e, size_of::<kvm_bindings::kvm_lapic_state>(), false), // GET_LAPIC
    kvm_read(0x91, size_of::<kvm_bindings::kvm_cpuid2>(), true), // GET_CPUID2
    kvm_read(0x98, size_of::<kvm_bindings::kvm_mp_state>(), false), // GET_MP_STATE
    kvm_read(0x9f, size_of::<kvm_bindings::kvm_vcpu_events>(), false), // GET_VCPU_EVENTS
    kvm_read(0xa1, size_of::<kvm_bindings::kvm_debugregs>(), false), // GET_DEBUGREGS
    kvm_read(0xa4, size_of::<kvm_bindings::kvm_xsave>(), false), // GET_XSAVE
    kvm_read(0xa6, size_of::<kvm_bindings::kvm_xcrs>(), false), // GET_XCRS
    0xaea3,                                                     // GET_TSC_KHZ (_IO)
];

/// Pausing the vCPUs (a kick signal to each thread) and writing a snapshot: reading the
/// in-kernel devices' state, creating the snapshot directory and its files, syncing them,
/// and removing a partial directory after a failure.
fn snapshots(rules: &mut Rules) -> Result<(), BackendError> {
    let kick = crate::sys::kick::kick_signal() as u64;
    allow_arg_in(rules, libc::SYS_tgkill, 2, &[kick])?;
    allow_arg_in(rules, libc::SYS_tkill, 1, &[kick])?;
    allow_arg_in(rules, libc::SYS_ioctl, 1, &KVM_VM_STATE_READS)?;
    allow(
        rules,
        &[
            libc::SYS_mkdir,
            libc::SYS_mkdirat,
            libc::SYS_rmdir,
            libc::SYS_ftruncate,
            libc::SYS_fstat,
            libc::SYS_newfstatat,
            libc::SYS_statx,
            libc::SYS_lstat,
            libc::SYS_getdents64,
            // Whether the host has swap (untouched guest pages are zero without it).
            libc::SYS_sysinfo,
            libc::SYS_mincore,
        ],
    );
    Ok(())
}

/// A paused vCPU reads its own state for a snapshot.
fn vcpu_state(rules: &mut Rules) -> Result<(), BackendError> {
    allow_arg_in(rules, libc::SYS_ioctl, 1, &KVM_VCPU_STATE_READS)
}

/// The memory report logged when the VM stops (`--log-level debug`).
fn exit_report(rules: &mut Rules) {
    allow(rules, &[libc::SYS_getrusage, libc::SYS_mincore]);
}

/// A vCPU runs the guest, and activates virtio devices when the guest's driver says so
/// (virtio-net then sets the TAP's offloads).
fn vcpu(rules: &mut Rules) -> Result<(), BackendError> {
    // `libc::Ioctl` is `c_ulong` on glibc but `c_int` on musl.
    #[allow(clippy::unnecessary_cast)]
    let tun = [TUNSETOFFLOAD as u64, TUNSETVNETHDRSZ as u64];
    allow_arg_in(rules, libc::SYS_ioctl, 1, &[KVM_RUN, tun[0], tun[1]])
}
