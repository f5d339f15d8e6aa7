//! The one raw call benchmarks need: CLOCK_MONOTONIC as nanoseconds, the clock herd-vmm's
//! `first KVM_RUN monotonic_ns=` log line uses, so the two processes' times compare.

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
