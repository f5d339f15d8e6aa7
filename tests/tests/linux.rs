//! Linux guest smoke tests: our guest kernel (guest-kernel/) boots under herd-vmm with the
//! memory, CPUs and command line it was given, through PVH (vmlinux) and the 64-bit boot
//! protocol (bzImage), and finds the partition on a virtio-blk disk it is given.
//!
//! On PVM hosts the kernel runs in KVM's instruction emulator: it needs a few CPU features
//! hidden (`clearcpuid`, `noxsave`), takes 30-40 s to reach `Run /init`, and its first system
//! call from user space faults, so the user-space half is skipped there with a message. On
//! hardware KVM the demo init runs, prints its greeting and exits through the exit-status port.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use herd_tests::guest_kernel::{demo_initrd, kernel_dir};
use herd_tests::vm::{Finished, TestVm, host_is_pvm, kvm_available, skip};

const DEMO_EXIT: i32 = 42;
/// CPU features PVM's emulator cannot run (see shared notes): cmpxchg16b, popcnt, SMAP/SMEP
/// (clac/stac), and XSAVE.
const PVM_WORKAROUNDS: &str = "clearcpuid=141,151,295,308 noxsave";

fn cmdline() -> String {
    let base =
        format!("console=ttyS0 reboot=k panic=-1 pci=off nomodule HERD_DEMO_EXIT={DEMO_EXIT}");
    if host_is_pvm() {
        format!("{base} {PVM_WORKAROUNDS}")
    } else {
        base
    }
}

fn boot_linux(test: &str, image: &str) -> Option<(Finished, String)> {
    if !kvm_available(test) {
        return None;
    }
    let (Some(dir), Some(initrd)) = (kernel_dir(), demo_initrd()) else {
        skip(
            test,
            "guest kernel or demo initramfs not built (run scripts/test.sh or guest-kernel/build.sh)",
        );
        return None;
    };
    let line = cmdline();
    let disks = tempfile::tempdir().expect("tempdir");
    let disk = mbr_disk(disks.path());
    let vm = TestVm::kernel(&dir.join(image))
        .args(["--vcpus", "2", "--memory", "256"])
        .args(["--initrd".as_ref(), initrd.as_os_str()])
        .args(["--disk", &format!("{},ro", disk.display())])
        .cmdline(&line)
        .timeout(Duration::from_secs(300))
        .run();
    Some((vm, line))
}

/// A 1 MiB disk image with an MBR partition table holding one Linux partition (sectors 64 to
/// 1087), which the kernel should find as `vda1`.
fn mbr_disk(dir: &Path) -> PathBuf {
    let mut img = vec![0u8; 1 << 20];
    let entry = &mut img[446..462];
    entry[4] = 0x83;
    entry[8..12].copy_from_slice(&64u32.to_le_bytes());
    entry[12..16].copy_from_slice(&1024u32.to_le_bytes());
    img[510..512].copy_from_slice(&[0x55, 0xaa]);
    let path = dir.join("mbr.img");
    std::fs::write(&path, img).expect("write disk image");
    path
}

fn assert_kernel_saw_its_machine(vm: &Finished, cmdline: &str) {
    let out = &vm.stdout;
    assert!(
        out.contains(&format!("Command line: {cmdline}")),
        "command line not echoed: {out}"
    );
    assert!(
        out.contains("smp: Brought up 1 node, 2 CPUs"),
        "2 CPUs not brought up: {out}"
    );
    let mem = out
        .lines()
        .find_map(|l| l.split("Memory: ").nth(1))
        .expect("Memory: line");
    let total_k: u64 = mem
        .split('/')
        .nth(1)
        .and_then(|t| t.split('K').next()?.parse().ok())
        .expect("total");
    assert!(
        (250 * 1024..=256 * 1024).contains(&total_k),
        "kernel saw {total_k}K of 256 MiB: {mem}"
    );
    assert!(
        out.contains("virtio_blk virtio0: [vda]"),
        "virtio-blk disk not found: {out}"
    );
    assert!(out.contains("vda: vda1"), "partition table not read: {out}");
    assert!(
        out.contains("Run /init as init process"),
        "did not reach init: {out}"
    );
}

fn check_linux_boot(test: &str, image: &str) {
    let Some((vm, line)) = boot_linux(test, image) else {
        return;
    };
    assert_kernel_saw_its_machine(&vm, &line);
    if host_is_pvm() {
        // init's first syscall faults under PVM's emulator; panic=-1 then resets the VM.
        assert_eq!(vm.code(), 0, "PVM boot should end in a reset: {vm:#?}");
        println!(
            "{test}: user-space part skipped on this PVM host (no Linux user space under emulation)"
        );
        return;
    }
    assert!(
        vm.stdout.contains("Hello from a herd microVM: Linux"),
        "{vm:#?}"
    );
    assert_eq!(vm.code(), DEMO_EXIT, "{vm:#?}");
    assert!(
        vm.stderr.contains("Guest-boot-time = "),
        "init signals the boot timer: {vm:#?}"
    );
}

#[test]
fn linux_vmlinux_boots_through_pvh_with_given_memory_cpus_and_cmdline() {
    check_linux_boot(
        "linux_vmlinux_boots_through_pvh_with_given_memory_cpus_and_cmdline",
        "vmlinux",
    );
}

#[test]
fn linux_bzimage_boots_through_64_bit_protocol_with_given_memory_cpus_and_cmdline() {
    check_linux_boot(
        "linux_bzimage_boots_through_64_bit_protocol_with_given_memory_cpus_and_cmdline",
        "bzImage",
    );
}

/// Waits on a TAP (inside the test's namespace) for an IPv4/UDP frame to port 67 (a DHCP
/// request) and prints its source MAC.
const DHCP_WATCH: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind((sys.argv[1], 0))
print("ready", flush=True)
while True:
    f = s.recv(65535)
    if len(f) >= 42 and f[23] == 17 and struct.unpack("!H", f[36:38])[0] == 67:
        print("dhcp from " + ":".join("%02x" % b for b in f[6:12]), flush=True)
        break
"#;

#[test]
fn linux_sends_its_first_dhcp_frame_on_virtio_net() {
    let test = "linux_sends_its_first_dhcp_frame_on_virtio_net";
    if !kvm_available(test) {
        return;
    }
    let Some(dir) = kernel_dir() else {
        skip(
            test,
            "guest kernel not built (run scripts/test.sh or guest-kernel/build.sh)",
        );
        return;
    };
    let mut ns = match herd_tests::netns::NetNs::create() {
        Ok(ns) => ns,
        Err(why) => return skip(test, &format!("no network namespace: {why}")),
    };
    ns.add_tap("tap0");
    let mut watch = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "timeout",
            "280",
            "python3",
            "-c",
            DHCP_WATCH,
            "tap0",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the DHCP watcher");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(watch.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    // The kernel configures eth0 by DHCP (IP_PNP_DHCP) before init; nobody answers, so the
    // VM is stopped once its first request is seen.
    let mac = "02:00:00:00:00:42";
    let running = TestVm::kernel(&dir.join("bzImage"))
        .within(ns.exec_prefix())
        .args(["--memory", "128", "--net", &format!("tap0,mac={mac}")])
        .cmdline(&format!("{} ip=dhcp", cmdline()))
        .timeout(Duration::from_secs(300))
        .spawn();
    let seen = lines.next().expect("watcher ended").unwrap();
    running.signal("TERM");
    let vm = running.wait();
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(seen, format!("dhcp from {mac}"), "{vm:#?}");
    // The console lags the wire under emulation, so IP-Config's own message may not be out yet;
    // the frame on the TAP is the proof. The kernel did register the device it was told about.
    let registered = "virtio-mmio: Registering device virtio-mmio.0 at 0xc0001000";
    assert!(vm.stdout.contains(registered), "{}", vm.stdout);
}
