//! The command-line surface of herd-vmm, checked without KVM: help, conflicts, usage errors.
//! (Building these tests also builds the binary the workspace's end-to-end tests boot.)

use std::process::Command;

fn herd_vmm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_herd-vmm"))
        .args(args)
        .output()
        .expect("run herd-vmm")
}

#[test]
fn help_documents_flags_and_exit_statuses_and_exits_zero() {
    let out = herd_vmm(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--vcpus",
        "--memory",
        "--config-file",
        "--console-log",
        "--console-log-max-bytes",
    ] {
        assert!(text.contains(flag), "help lacks {flag}");
    }
    assert!(
        text.contains("0xf4"),
        "help should document the exit-status port"
    );
}

#[test]
fn no_kernel_and_no_config_is_a_usage_error() {
    let out = herd_vmm(&[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kernel"));
}

#[test]
fn config_file_and_kernel_flags_conflict() {
    let out = herd_vmm(&["--config-file", "vm.json", "--vcpus", "2"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}

#[test]
fn missing_config_file_is_named_with_status_66() {
    let out = herd_vmm(&["--config-file", "/nonexistent/vm.json"]);
    assert_eq!(out.status.code(), Some(66));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("herd-vmm: error: cannot read config file /nonexistent/vm.json"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn console_log_cap_below_4096_bytes_is_a_usage_error_naming_the_flag() {
    let out = herd_vmm(&[
        "--kernel",
        "/nonexistent/vmlinux",
        "--console-log",
        "/nonexistent/console.log",
        "--console-log-max-bytes",
        "4095",
    ]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--console-log-max-bytes 4095 is below the minimum of 4096 bytes"),
        "{err}"
    );
}

#[test]
fn console_log_cap_without_a_console_log_is_a_usage_error() {
    let out = herd_vmm(&[
        "--kernel",
        "/nonexistent/vmlinux",
        "--console-log-max-bytes",
        "8192",
    ]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--console-log <PATH>"), "{err}");
}
