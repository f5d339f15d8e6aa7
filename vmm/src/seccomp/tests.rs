//! The filters are checked in a child process (this test binary run again for one test),
//! since a filter cannot be removed and a violation kills the whole process.

use std::os::unix::process::ExitStatusExt as _;
use std::process::Command;

use super::*;

const CASE_VAR: &str = "HERD_SECCOMP_TEST_CASE";

/// Runs `child_installs_a_filter_then_calls` in a fresh process for `case`.
fn run_case(case: &str) -> std::process::ExitStatus {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "seccomp::tests::child_installs_a_filter_then_calls",
        ])
        .args(["--nocapture", "--test-threads", "1"])
        .env(CASE_VAR, case)
        .output()
        .unwrap()
        .status
}

/// Not a test on its own: the body the cases above run in a child.
#[test]
fn child_installs_a_filter_then_calls() {
    let Ok(case) = std::env::var(CASE_VAR) else {
        return;
    };
    let (mode, kind, call) = case
        .split_once(':')
        .and_then(|(a, rest)| {
            let (b, c) = rest.split_once(':')?;
            Some((a.to_owned(), b.to_owned(), c.to_owned()))
        })
        .unwrap();
    let mode = if mode == "audit" {
        SeccompMode::Audit
    } else {
        SeccompMode::Kill
    };
    let kind = if kind == "vcpu" {
        ThreadKind::Vcpu
    } else {
        ThreadKind::EventLoop
    };
    let filters = Filters::build(mode).unwrap().unwrap();
    filters.install(kind).unwrap();
    match call.as_str() {
        // Allowed everywhere: memory, writes, reads of an already open descriptor.
        "allowed" => {
            let v = vec![7u8; 1 << 20];
            assert_eq!(v.iter().map(|b| u64::from(*b)).sum::<u64>(), 7 << 20);
        }
        "unix-socket" => drop(std::os::unix::net::UnixDatagram::unbound().unwrap()),
        "inet-socket" => drop(std::net::UdpSocket::bind("127.0.0.1:0")),
        "exec" => drop(Command::new("/bin/true").status()),
        other => panic!("unknown case {other}"),
    }
    std::process::exit(42);
}

#[test]
fn every_mode_builds_and_off_builds_nothing() {
    assert!(Filters::build(SeccompMode::Kill).unwrap().is_some());
    assert!(Filters::build(SeccompMode::Audit).unwrap().is_some());
    assert!(Filters::build(SeccompMode::Off).unwrap().is_none());
}

#[test]
fn a_call_outside_the_list_kills_the_process() {
    for case in [
        "kill:event-loop:inet-socket",
        "kill:event-loop:exec",
        "kill:vcpu:unix-socket",
    ] {
        let status = run_case(case);
        assert_eq!(status.signal(), Some(libc::SIGSYS), "{case}: {status:?}");
    }
}

#[test]
fn calls_on_the_list_go_through() {
    for case in [
        "kill:event-loop:allowed",
        "kill:vcpu:allowed",
        "kill:event-loop:unix-socket",
    ] {
        assert_eq!(run_case(case).code(), Some(42), "{case}");
    }
}

#[test]
fn audit_mode_lets_a_call_outside_the_list_through() {
    assert_eq!(run_case("audit:event-loop:inet-socket").code(), Some(42));
}

#[test]
fn only_kvm_run_the_tap_offload_calls_and_state_reads_pass_ioctl_on_a_vcpu() {
    let rules = rules::allowed(ThreadKind::Vcpu).unwrap();
    let reads = rules::KVM_VCPU_STATE_READS.len();
    assert_eq!(rules[&libc::SYS_ioctl].len(), 3 + reads);
    assert!(!rules.contains_key(&libc::SYS_socket));
    assert!(!rules.contains_key(&libc::SYS_execve));
    let event_loop = rules::allowed(ThreadKind::EventLoop).unwrap();
    assert!(!event_loop.contains_key(&libc::SYS_execve));
    assert!(!event_loop.contains_key(&libc::SYS_ptrace));
}

#[test]
fn kvm_state_reads_have_the_kernels_ioctl_numbers() {
    use super::rules::{KVM_VCPU_STATE_READS, KVM_VM_STATE_READS};
    // From <linux/kvm.h> as the kernel computes them on x86-64.
    assert_eq!(KVM_VCPU_STATE_READS[0], 0x8090_ae81, "KVM_GET_REGS");
    assert_eq!(KVM_VCPU_STATE_READS[1], 0x8138_ae83, "KVM_GET_SREGS");
    assert_eq!(KVM_VCPU_STATE_READS[2], 0xc008_ae88, "KVM_GET_MSRS");
    assert_eq!(KVM_VCPU_STATE_READS[3], 0x8400_ae8e, "KVM_GET_LAPIC");
    assert_eq!(KVM_VCPU_STATE_READS[8], 0x9000_aea4, "KVM_GET_XSAVE");
    assert_eq!(KVM_VM_STATE_READS[1], 0xc208_ae62, "KVM_GET_IRQCHIP");
    assert_eq!(KVM_VM_STATE_READS[2], 0x8070_ae9f, "KVM_GET_PIT2");
    assert_eq!(KVM_VM_STATE_READS[3], 0x8030_ae7c, "KVM_GET_CLOCK");
}
