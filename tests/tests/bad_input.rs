//! End-to-end: every kind of bad input ends herd-vmm at once with a one-line error naming the
//! culprit, a distinct exit status, and nothing left behind.

use std::path::Path;
use std::process::Command;

use herd_tests::vm::{Finished, TestVm, herd_vmm_bin, kvm_available};

const USAGE: i32 = 64;
const DATA: i32 = 65;
const NO_INPUT: i32 = 66;
const UNAVAILABLE: i32 = 69;
const NO_PERM: i32 = 77;

fn error_line(vm: &Finished) -> &str {
    let errors: Vec<&str> = vm
        .stderr
        .lines()
        .filter(|l| l.starts_with("herd-vmm: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "exactly one error line expected: {vm:#?}");
    errors[0]
}

fn assert_fails(vm: &Finished, code: i32, needles: &[&str]) {
    assert_eq!(vm.code(), code, "{vm:#?}");
    let line = error_line(vm);
    for n in needles {
        assert!(line.contains(n), "{line:?} should mention {n:?}");
    }
    assert!(
        vm.probe_lines().is_empty(),
        "guest must not have run: {vm:#?}"
    );
}

#[test]
fn missing_kernel_is_named_with_status_66() {
    let vm = TestVm::raw(&["--kernel", "/nonexistent/vmlinux"]).run();
    assert_fails(
        &vm,
        NO_INPUT,
        &["kernel /nonexistent/vmlinux", "No such file"],
    );
}

#[test]
fn file_that_is_not_a_kernel_is_refused_with_status_65() {
    if !kvm_available("file_that_is_not_a_kernel_is_refused_with_status_65") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![0x42u8; 8192]).unwrap();
    let vm = TestVm::kernel(&junk).run();
    assert_fails(&vm, DATA, &["junk", "neither an ELF vmlinux nor a bzImage"]);
    let vm = TestVm::kernel(dir.path()).run();
    assert_fails(&vm, DATA, &["not a regular file"]);
}

#[test]
fn initrd_that_does_not_fit_is_refused_and_leaves_no_console_log() {
    if !kvm_available("initrd_that_does_not_fit_is_refused_and_leaves_no_console_log") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.cpio");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(40 << 20)
        .unwrap();
    let log = dir.path().join("console.log");
    let vm = TestVm::probe_pvh()
        .args([
            "--memory",
            "32",
            "--initrd",
            big.to_str().unwrap(),
            "--console-log",
            log.to_str().unwrap(),
        ])
        .run();
    assert_fails(&vm, DATA, &["initrd", "big.cpio", "does not fit"]);
    assert!(!log.exists(), "a failed start must not leave a console log");
    let vm = TestVm::probe_pvh()
        .args(["--initrd", "/nonexistent.cpio"])
        .run();
    assert_fails(&vm, NO_INPUT, &["initrd /nonexistent.cpio"]);
}

#[test]
fn vcpu_and_memory_values_out_of_range_are_usage_errors() {
    let probe = herd_tests::probe::pvh_elf().to_str().unwrap().to_owned();
    for (flags, needle) in [
        (vec!["--vcpus", "0"], "vcpu count 0"),
        (vec!["--vcpus", "33"], "vcpu count 33"),
        (vec!["--memory", "16"], "16 MiB is below"),
        (vec!["--memory", "99999999"], "more than this host has"),
    ] {
        let mut args = vec!["--kernel", probe.as_str()];
        args.extend(flags);
        assert_fails(&TestVm::raw(&args).run(), USAGE, &[needle]);
    }
    let vm = TestVm::raw(&["--kernel", &probe, "--vcpus", "two"]).run();
    assert_eq!(vm.code(), USAGE, "{vm:#?}");
    assert!(vm.stderr.contains("--vcpus"), "{vm:#?}");
}

#[test]
fn config_file_with_unknown_field_or_bad_value_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let probe = herd_tests::probe::pvh_elf().display().to_string();
    let cases = [
        (
            serde_json::json!({"boot-source": {"kernel_image_path": probe, "bootargs": "x"}}),
            "boot-source.bootargs",
        ),
        (
            serde_json::json!({"boot-source": {"kernel_image_path": probe},
                            "machine-config": {"vcpu_count": -1, "mem_size_mib": 128}}),
            "machine-config.vcpu_count",
        ),
        (
            serde_json::json!({"boot-source": {"kernel_image_path": probe},
                            "machine-config": {"vcpu_count": 64, "mem_size_mib": 128}}),
            "vcpu count 64",
        ),
        (
            serde_json::json!({"boot-source": {"kernel_image_path": probe}, "vsock": {"guest_cid": 3}}),
            "`vsock`",
        ),
    ];
    for (i, (json, needle)) in cases.into_iter().enumerate() {
        let cfg = dir.path().join(format!("vm{i}.json"));
        std::fs::write(&cfg, json.to_string()).unwrap();
        assert_fails(
            &TestVm::raw(&["--config-file", cfg.to_str().unwrap()]).run(),
            USAGE,
            &[needle],
        );
    }
    let cfg = dir.path().join("broken.json");
    std::fs::write(&cfg, "{\"boot-source\": ").unwrap();
    assert_fails(
        &TestVm::raw(&["--config-file", cfg.to_str().unwrap()]).run(),
        USAGE,
        &["broken.json"],
    );
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn run_wrapped(wrapper: &[&str], probe: &Path) -> Finished {
    let started = std::time::Instant::now();
    let out = Command::new(wrapper[0])
        .args(&wrapper[1..])
        .arg(herd_vmm_bin())
        .arg("--kernel")
        .arg(probe)
        .output()
        .expect("run wrapper");
    Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
        elapsed: started.elapsed(),
    }
}

#[test]
fn missing_dev_kvm_is_reported_with_status_69() {
    if !is_root() {
        println!("skipped: needs root to hide /dev/kvm in a private mount namespace");
        return;
    }
    // A private mount namespace with an empty /dev: /dev/kvm does not exist in there.
    let script = "mount -t tmpfs none /dev && exec \"$0\" \"$@\"";
    let vm = run_wrapped(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
        ],
        herd_tests::probe::pvh_elf(),
    );
    assert_fails(&vm, UNAVAILABLE, &["/dev/kvm does not exist"]);
}

#[test]
fn inaccessible_dev_kvm_is_reported_with_status_77() {
    if !is_root() || !Path::new("/dev/kvm").exists() {
        println!("skipped: needs root and /dev/kvm to run herd-vmm as an unprivileged user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe.elf");
    std::fs::copy(herd_tests::probe::pvh_elf(), &probe).unwrap();
    let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(dir.path(), perms).unwrap();
    let kvm_mode = std::fs::metadata("/dev/kvm").unwrap().permissions();
    if std::os::unix::fs::PermissionsExt::mode(&kvm_mode) & 0o006 != 0 {
        println!("skipped: /dev/kvm is world-accessible here");
        return;
    }
    let vm = run_wrapped(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        &probe,
    );
    assert_fails(&vm, NO_PERM, &["/dev/kvm is not accessible"]);
}
