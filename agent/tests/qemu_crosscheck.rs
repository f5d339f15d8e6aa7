//! Cross-check of the user-space half of an image under QEMU's software emulation (TCG).
//!
//! Our CI hosts' KVM is PVM, where a Linux guest cannot start user space, so herd-vmm cannot
//! show herd-init and the app running there. QEMU's TCG emulates the whole machine instead: it
//! boots the same image (our kernel, herd-init, `hello`) with an instance archive appended
//! exactly as herd-vmm appends it, and an `isa-debug-exit` device on herd-vmm's exit-status
//! port 0xf4 (QEMU exits with `status << 1 | 1`). This proves the image format, the appended
//! configuration, herd-init and the kernel work together in a real guest. It does not test
//! herd-vmm; the probe-guest tests and hardware-KVM runs do that.

use std::path::{Path, PathBuf};
use std::process::Command;

use herd::run::instance_archive;
use herd_proto::InstanceConfig;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn skip(why: &str) {
    let line = format!("HERD-SKIP: qemu cross-check: {why}\n");
    print!("{line}");
    if let Some(log) = std::env::var_os("HERD_SKIP_LOG") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        std::io::Write::write_all(&mut f, line.as_bytes()).unwrap();
    }
}

fn kernel_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("HERD_KERNEL_DIR") {
        return Some(PathBuf::from(d));
    }
    let out = Command::new(workspace().join("guest-kernel/build.sh"))
        .arg("--print-dir")
        .output()
        .ok()?;
    let dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()?
        .trim()
        .to_owned();
    out.status.success().then(|| PathBuf::from(dir))
}

fn herd(home: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_herd"))
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "herd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The image's initramfs followed by the instance archive, 4-byte aligned: what herd-vmm puts
/// in guest memory for `herd run`.
fn combined_initrd(initramfs: &Path, instance: &InstanceConfig, out: &Path) {
    let mut bytes = std::fs::read(initramfs).unwrap();
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    bytes.extend(instance_archive(instance).unwrap());
    std::fs::write(out, bytes).unwrap();
}

#[test]
fn image_runs_its_app_with_the_appended_config_under_qemu_tcg() {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        return skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
    }
    let Some(kernel) = kernel_dir() else {
        return skip("guest kernel not built (guest-kernel/build.sh)");
    };
    let hello = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("hello");
    assert!(
        hello.is_file(),
        "{} missing: cargo build --workspace --bins",
        hello.display()
    );
    let home = tempfile::tempdir().unwrap();
    let vmlinux = kernel.join("vmlinux");
    herd(
        home.path(),
        &[
            "build",
            "--binary",
            hello.to_str().unwrap(),
            "--name",
            "hello",
            "--version",
            "1",
            "--env",
            "FROM_IMAGE=yes",
            "--kernel",
            vmlinux.to_str().unwrap(),
        ],
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&herd(home.path(), &["image", "inspect", "hello:1"])).unwrap();
    let initramfs = PathBuf::from(inspect["initramfs"]["path"].as_str().unwrap());
    let instance = InstanceConfig {
        instance_id: "hello-qemu".into(),
        hostname: "hello-qemu".into(),
        env: [
            ("STAGE".into(), "qemu".into()),
            ("EXIT_STATUS".into(), "42".into()),
        ]
        .into(),
        args: Some(vec!["a".into(), "b c".into()]),
        network: None,
    };
    let initrd = home.path().join("initrd.cpio");
    combined_initrd(&initramfs, &instance, &initrd);
    let out = Command::new("timeout")
        .args([
            "300",
            "qemu-system-x86_64",
            "-M",
            "pc",
            "-cpu",
            "max",
            "-m",
            "256",
            "-nographic",
            "-nodefaults",
            "-no-reboot",
        ])
        .args([
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x01",
        ])
        .arg("-kernel")
        .arg(kernel.join("bzImage"))
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            inspect["config"]["kernel"]["cmdline"].as_str().unwrap(),
        ])
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stdout);
    for line in [
        "hello from herd: 2 argument(s)",
        "arg 0 a",
        "arg 1 b c",
        "env EXIT_STATUS=42",
        "env FROM_IMAGE=yes",
        "env STAGE=qemu",
    ] {
        assert!(console.contains(line), "missing {line:?} in:\n{console}");
    }
    assert!(!console.contains("herd-init: warning"), "{console}");
    assert_eq!(
        out.status.code(),
        Some((42 << 1) | 1),
        "the app's status reached port 0xf4:\n{console}"
    );
}

#[test]
fn rootfs_image_switches_root_to_its_ext4_disk_under_qemu_microvm() {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        return skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
    }
    if Command::new("mkfs.ext4").arg("-V").output().is_err() {
        return skip("mkfs.ext4 is not installed (apt-get install e2fsprogs)");
    }
    let Some(kernel) = kernel_dir() else {
        return skip("guest kernel not built (guest-kernel/build.sh)");
    };
    let hello = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("hello");
    assert!(
        hello.is_file(),
        "{} missing: cargo build --workspace --bins",
        hello.display()
    );
    let home = tempfile::tempdir().unwrap();
    let vmlinux = kernel.join("vmlinux");
    let build = [
        "build",
        "--binary",
        hello.to_str().unwrap(),
        "--name",
        "hello",
        "--version",
        "1",
    ];
    let rootfs = ["--rootfs", "ext4", "--kernel", vmlinux.to_str().unwrap()];
    herd(home.path(), &[&build[..], &rootfs[..]].concat());
    let inspect: serde_json::Value =
        serde_json::from_str(&herd(home.path(), &["image", "inspect", "hello:1"])).unwrap();
    let initramfs = PathBuf::from(inspect["initramfs"]["path"].as_str().unwrap());
    let disk = inspect["rootfs"]["path"]
        .as_str()
        .expect("image has a rootfs layer")
        .to_owned();
    let instance = InstanceConfig {
        instance_id: "hello-rootfs".into(),
        hostname: "hello-rootfs".into(),
        env: [("EXIT_STATUS".into(), "42".into())].into(),
        args: Some(vec!["from-disk".into()]),
        network: None,
    };
    let initrd = home.path().join("initrd.cpio");
    combined_initrd(&initramfs, &instance, &initrd);
    // microvm puts its virtio-mmio devices on the kernel command line itself, as herd-vmm does.
    let out = Command::new("timeout")
        .args([
            "300",
            "qemu-system-x86_64",
            "-M",
            "microvm,acpi=off,isa-serial=on,rtc=off",
        ])
        .args([
            "-cpu",
            "max",
            "-m",
            "256",
            "-nographic",
            "-nodefaults",
            "-no-reboot",
        ])
        .args([
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x01",
        ])
        .arg("-drive")
        .arg(format!(
            "id=root,file={disk},format=raw,if=none,readonly=on"
        ))
        .args(["-device", "virtio-blk-device,drive=root"])
        .arg("-kernel")
        .arg(&vmlinux)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            inspect["config"]["kernel"]["cmdline"].as_str().unwrap(),
        ])
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stdout);
    for line in [
        "hello from herd: 1 argument(s)",
        "arg 0 from-disk",
        "env EXIT_STATUS=42",
    ] {
        assert!(console.contains(line), "missing {line:?} in:\n{console}");
    }
    assert_eq!(
        out.status.code(),
        Some((42 << 1) | 1),
        "status via port 0xf4:\n{console}"
    );
}
