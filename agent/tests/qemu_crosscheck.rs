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
use herd_tests::guest_kernel::kernel_dir;

/// Records a skip of the cross-check (printed, and in `$HERD_SKIP_LOG` for `.ci/run`).
fn skip(why: &str) {
    herd_tests::vm::skip("qemu cross-check", why);
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

/// A store with `hello:1` built from the workspace's `hello` and our kernel, plus `extra`
/// build flags; `None` (a recorded skip) when QEMU or the kernel is missing.
struct HelloImage {
    home: tempfile::TempDir,
    kernel: PathBuf,
    inspect: serde_json::Value,
}

impl HelloImage {
    fn build(extra: &[&str]) -> Option<Self> {
        if Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .is_err()
        {
            skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
            return None;
        }
        let Some(kernel) = kernel_dir() else {
            skip("guest kernel not built (guest-kernel/build.sh)");
            return None;
        };
        let exe = std::env::current_exe().unwrap();
        let hello = exe.parent().unwrap().parent().unwrap().join("hello");
        assert!(
            hello.is_file(),
            "{} missing: cargo build --workspace --bins",
            hello.display()
        );
        let home = tempfile::tempdir().unwrap();
        let vmlinux = kernel.join("vmlinux");
        let mut args = vec![
            "build",
            "--binary",
            hello.to_str().unwrap(),
            "--name",
            "hello",
        ];
        args.extend(["--version", "1", "--kernel", vmlinux.to_str().unwrap()]);
        args.extend(extra);
        herd(home.path(), &args);
        let inspect = herd(home.path(), &["image", "inspect", "hello:1"]);
        let inspect = serde_json::from_str(&inspect).unwrap();
        Some(Self {
            home,
            kernel,
            inspect,
        })
    }

    /// The image's initramfs with `instance` appended, as herd-vmm would place it.
    fn initrd(&self, instance: &InstanceConfig) -> PathBuf {
        let initramfs = PathBuf::from(self.inspect["initramfs"]["path"].as_str().unwrap());
        let initrd = self.home.path().join("initrd.cpio");
        combined_initrd(&initramfs, instance, &initrd);
        initrd
    }

    /// Boots `kernel` (a file in the kernel directory) on QEMU `machine` with `devices`, the
    /// instance's initrd, the image's command line and a debug-exit device on port 0xf4.
    fn boot(
        &self,
        machine: &str,
        kernel: &str,
        devices: &[String],
        instance: &InstanceConfig,
    ) -> (Option<i32>, String) {
        let cmdline = self.inspect["config"]["kernel"]["cmdline"]
            .as_str()
            .unwrap();
        let out = Command::new("timeout")
            .args([
                "300",
                "qemu-system-x86_64",
                "-M",
                machine,
                "-cpu",
                "max",
                "-m",
                "256",
            ])
            .args([
                "-nographic",
                "-nodefaults",
                "-no-reboot",
                "-serial",
                "stdio",
            ])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x01"])
            .args(devices)
            .arg("-kernel")
            .arg(self.kernel.join(kernel))
            .arg("-initrd")
            .arg(self.initrd(instance))
            .args(["-append", cmdline])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

/// The instance configuration both checks inject.
fn instance(id: &str, env: &[(&str, &str)], args: &[&str]) -> InstanceConfig {
    InstanceConfig {
        instance_id: id.into(),
        hostname: id.into(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        args: Some(args.iter().map(|a| a.to_string()).collect()),
        network: None,
    }
}

#[test]
fn image_runs_its_app_with_the_appended_config_under_qemu_tcg() {
    let Some(image) = HelloImage::build(&["--env", "FROM_IMAGE=yes"]) else {
        return;
    };
    let inst = instance(
        "hello-qemu",
        &[("STAGE", "qemu"), ("EXIT_STATUS", "42")],
        &["a", "b c"],
    );
    let (status, console) = image.boot("pc", "bzImage", &[], &inst);
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
        status,
        Some((42 << 1) | 1),
        "the app's status reached port 0xf4:\n{console}"
    );
}

#[test]
fn rootfs_image_switches_root_to_its_ext4_disk_under_qemu_microvm() {
    if Command::new("mkfs.ext4").arg("-V").output().is_err() {
        return skip("mkfs.ext4 is not installed (apt-get install e2fsprogs)");
    }
    let Some(image) = HelloImage::build(&["--rootfs", "ext4"]) else {
        return;
    };
    let disk = image.inspect["rootfs"]["path"]
        .as_str()
        .expect("image has a rootfs layer");
    let devices = [
        "-drive".to_owned(),
        format!("id=root,file={disk},format=raw,if=none,readonly=on"),
        "-device".to_owned(),
        "virtio-blk-device,drive=root".to_owned(),
    ];
    let inst = instance("hello-rootfs", &[("EXIT_STATUS", "42")], &["from-disk"]);
    // microvm puts its virtio-mmio devices on the kernel command line itself, as herd-vmm does.
    let machine = "microvm,acpi=off,isa-serial=on,rtc=off";
    let (status, console) = image.boot(machine, "vmlinux", &devices, &inst);
    for line in [
        "hello from herd: 1 argument(s)",
        "arg 0 from-disk",
        "env EXIT_STATUS=42",
    ] {
        assert!(console.contains(line), "missing {line:?} in:\n{console}");
    }
    assert_eq!(
        status,
        Some((42 << 1) | 1),
        "status via port 0xf4:\n{console}"
    );
}
