//! End-to-end: the real herd-vmm boots the probe guest through both boot protocols and the
//! guest reports what it was handed.

use std::time::Duration;

use herd_tests::vm::{TestVm, kvm_available};

const MIB: u64 = 1 << 20;

macro_rules! require_kvm {
    ($name:expr) => {
        if !kvm_available($name) {
            return;
        }
    };
}

#[test]
fn boots_pvh_elf_and_exits_with_guest_status() {
    require_kvm!("boots_pvh_elf_and_exits_with_guest_status");
    let vm = TestVm::probe_pvh().cmdline("exit=7").run();
    assert_eq!(vm.code(), 7, "{vm:#?}");
    assert_eq!(vm.probe_value("boot"), Some("pvh"));
    assert_eq!(vm.probe_value("done exit"), Some("7"));
}

#[test]
fn boots_bzimage_through_the_64_bit_linux_boot_protocol() {
    require_kvm!("boots_bzimage_through_the_64_bit_linux_boot_protocol");
    let vm = TestVm::probe_bzimage().cmdline("exit=9").run();
    assert_eq!(vm.code(), 9, "{vm:#?}");
    assert_eq!(vm.probe_value("boot"), Some("linux64"));
}

#[test]
fn guest_sees_its_command_line_verbatim() {
    require_kvm!("guest_sees_its_command_line_verbatim");
    let line = "console=ttyS0 quiet key=value  two-spaces exit=0";
    for vm in [TestVm::probe_pvh(), TestVm::probe_bzimage()] {
        let vm = vm.cmdline(line).run();
        assert_eq!(vm.code(), 0, "{vm:#?}");
        assert_eq!(vm.probe_value("cmdline"), Some(line));
    }
}

fn assert_memory_map(vm: &herd_tests::vm::Finished, mem: u64) {
    let low_end = mem.min(3 << 30);
    let mut want = vec![
        (0, 0x9fc00, 1),
        (0x9fc00, 0x100000, 2),
        (0x100000, low_end, 1),
    ];
    if mem > low_end {
        want.push((4 << 30, (4 << 30) + mem - low_end, 1));
    }
    assert_eq!(vm.probe_e820(), want, "{vm:#?}");
    let top = want.last().unwrap().1;
    assert_eq!(
        vm.probe_value("memcheck top"),
        Some(format!("{top:#x} ok").as_str()),
        "{vm:#?}"
    );
}

#[test]
fn guest_memory_map_matches_32_mib_64_mib_and_2_gib_on_both_protocols() {
    require_kvm!("guest_memory_map_matches_32_mib_64_mib_and_2_gib_on_both_protocols");
    for mib in [32, 64, 2048] {
        for vm in [TestVm::probe_pvh(), TestVm::probe_bzimage()] {
            let vm = vm.args(["--memory", &mib.to_string()]).run();
            assert_eq!(vm.code(), 0, "{vm:#?}");
            assert_memory_map(&vm, mib * MIB);
        }
    }
}

#[test]
fn memory_above_3_gib_continues_above_the_mmio_hole() {
    require_kvm!("memory_above_3_gib_continues_above_the_mmio_hole");
    let vm = TestVm::probe_pvh().args(["--memory", "4096"]).run();
    assert_eq!(vm.code(), 0, "{vm:#?}");
    assert_memory_map(&vm, 4096 * MIB);
}

#[test]
fn guest_counts_one_four_and_32_vcpus_in_the_mp_table() {
    require_kvm!("guest_counts_one_four_and_32_vcpus_in_the_mp_table");
    for (n, vm) in [
        (1, TestVm::probe_pvh()),
        (4, TestVm::probe_pvh()),
        (4, TestVm::probe_bzimage()),
    ] {
        let vm = vm.args(["--vcpus", &n.to_string()]).run();
        assert_eq!(vm.code(), 0, "{vm:#?}");
        assert_eq!(
            vm.probe_value("cpus"),
            Some(n.to_string().as_str()),
            "{vm:#?}"
        );
    }
}

fn byte_sum(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(0u32, |a, b| a.wrapping_add(u32::from(*b)))
}

#[test]
fn initrd_is_loaded_intact_where_the_guest_is_told() {
    require_kvm!("initrd_is_loaded_intact_where_the_guest_is_told");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("initrd.img");
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    for vm in [TestVm::probe_pvh(), TestVm::probe_bzimage()] {
        let vm = vm.args(["--initrd".as_ref(), path.as_os_str()]).run();
        assert_eq!(vm.code(), 0, "{vm:#?}");
        let line = vm.probe_value("initrd addr").expect("initrd line");
        let f: Vec<&str> = line.split(' ').collect();
        let addr = u64::from_str_radix(f[0].trim_start_matches("0x"), 16).unwrap();
        assert_eq!(addr % 4096, 0, "page aligned: {line}");
        assert!(addr + data.len() as u64 <= 128 * MIB, "{line}");
        assert_eq!(f[1], format!("size={:#x}", data.len()));
        assert_eq!(f[2], format!("sum={:#x}", byte_sum(&data)));
    }
}

#[test]
fn initrd_parts_are_concatenated_4_byte_aligned_into_one_initrd() {
    require_kvm!("initrd_parts_are_concatenated_4_byte_aligned_into_one_initrd");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (da, db): (Vec<u8>, Vec<u8>) = (vec![0x11; 4097], vec![0x22; 10]);
    std::fs::write(&a, &da).unwrap();
    std::fs::write(&b, &db).unwrap();
    let vm = TestVm::probe_bzimage()
        .args([
            "--initrd".as_ref(),
            a.as_os_str(),
            "--initrd".as_ref(),
            b.as_os_str(),
        ])
        .run();
    assert_eq!(vm.code(), 0, "{vm:#?}");
    let line = vm.probe_value("initrd addr").expect("initrd line");
    let want_size = 4100 + 10;
    let sum = byte_sum(&da).wrapping_add(byte_sum(&db));
    assert!(
        line.ends_with(&format!("size={want_size:#x} sum={sum:#x}")),
        "{line}"
    );
}

#[test]
fn mapped_boot_files_give_the_guest_the_same_bytes_and_leave_the_files_untouched() {
    require_kvm!("mapped_boot_files_give_the_guest_the_same_bytes_and_leave_the_files_untouched");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    // `a` ends inside a page, so `b` is copied into a page that is mapped from `a`.
    let da: Vec<u8> = (0..8193u32).map(|i| (i * 13 + 5) as u8).collect();
    let db = vec![0x22; 10];
    std::fs::write(&a, &da).unwrap();
    std::fs::write(&b, &db).unwrap();
    let vm = TestVm::probe_pvh()
        .args([
            "--map-boot-files".as_ref(),
            "--log-level".as_ref(),
            "debug".as_ref(),
            "--initrd".as_ref(),
            a.as_os_str(),
            "--initrd".as_ref(),
            b.as_os_str(),
        ])
        .run();
    assert_eq!(vm.code(), 0, "{vm:#?}");
    assert!(
        vm.stderr
            .contains("kernel pages mapped from the page cache"),
        "{vm:#?}"
    );
    assert!(!vm.stderr.contains("stays copied"), "{vm:#?}");
    let line = vm.probe_value("initrd addr").expect("initrd line");
    let sum = byte_sum(&da).wrapping_add(byte_sum(&db));
    assert!(
        line.ends_with(&format!("size={:#x} sum={sum:#x}", 8196 + 10)),
        "{line}"
    );
    assert_eq!(
        std::fs::read(&a).unwrap(),
        da,
        "the mapped file is unchanged"
    );
}

#[test]
fn boot_timer_write_logs_firecracker_compatible_line() {
    require_kvm!("boot_timer_write_logs_firecracker_compatible_line");
    let vm = TestVm::probe_pvh().run();
    let line = vm
        .stderr
        .lines()
        .find(|l| l.contains("Guest-boot-time"))
        .expect("boot time line");
    let words: Vec<&str> = line[line.find("Guest-boot-time").unwrap()..]
        .split_whitespace()
        .collect();
    assert_eq!(words.len(), 12, "{line}");
    assert_eq!(
        (
            words[1], words[3], words[5], words[7], words[8], words[10], words[11]
        ),
        ("=", "us", "ms,", "CPU", "us", "CPU", "ms")
    );
    let us: u64 = words[2].parse().unwrap();
    let ms: u64 = words[4].parse().unwrap();
    assert_eq!(us / 1000, ms);
    assert!(us > 0 && us < 30_000_000, "{line}");
}

#[test]
fn serial_console_goes_to_console_log_file() {
    require_kvm!("serial_console_goes_to_console_log_file");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("console.log");
    let vm = TestVm::probe_pvh()
        .args(["--console-log".as_ref(), log.as_os_str()])
        .cmdline("exit=3")
        .run();
    assert_eq!(vm.code(), 3);
    assert!(
        vm.probe_lines().is_empty(),
        "stdout should be empty: {vm:#?}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("probe: boot=pvh") && text.contains("probe: done exit=3"),
        "{text}"
    );
}

#[test]
fn stdin_reaches_the_guest_serial_port() {
    require_kvm!("stdin_reaches_the_guest_serial_port");
    let vm = TestVm::probe_pvh()
        .cmdline("probe.end=echo exit=4")
        .stdin(b"hello herd\n")
        .run();
    assert_eq!(vm.code(), 4, "{vm:#?}");
    assert_eq!(vm.probe_value("echo"), Some("hello herd"));
}

#[test]
fn guest_reset_through_i8042_ends_herd_vmm_with_status_zero() {
    require_kvm!("guest_reset_through_i8042_ends_herd_vmm_with_status_zero");
    let vm = TestVm::probe_bzimage()
        .cmdline("probe.end=reboot exit=5")
        .run();
    assert_eq!(vm.code(), 0, "{vm:#?}");
    assert!(vm.stdout.contains("probe: done"), "{vm:#?}");
}

#[test]
fn sigterm_and_sigint_stop_a_running_vm_cleanly() {
    require_kvm!("sigterm_and_sigint_stop_a_running_vm_cleanly");
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let mut running = TestVm::probe_pvh()
            .args(["--vcpus", "2"])
            .cmdline("probe.end=halt")
            .spawn();
        running.wait_for_line("probe: done");
        running.signal(signal);
        let vm = running.wait();
        assert_eq!(vm.code(), code, "{vm:#?}");
    }
}

#[test]
fn sigterm_with_grace_asks_the_guest_to_stop_on_the_control_port() {
    require_kvm!("sigterm_with_grace_asks_the_guest_to_stop_on_the_control_port");
    let mut running = TestVm::probe_pvh()
        .args(["--stop-grace", "20000"])
        .cmdline("probe.end=control exit=21")
        .spawn();
    running.wait_for_line("probe: memcheck");
    running.signal("TERM");
    let vm = running.wait();
    assert_eq!(vm.code(), 21, "the guest ended the VM itself: {vm:#?}");
    assert_eq!(vm.probe_value("control"), Some("stop"));
    assert!(vm.stderr.contains("asking the guest to stop"), "{vm:#?}");
}

#[test]
fn guest_that_ignores_the_stop_request_is_powered_off_after_grace_or_second_signal() {
    require_kvm!("guest_that_ignores_the_stop_request_is_powered_off_after_grace_or_second_signal");
    let mut running = TestVm::probe_pvh()
        .args(["--stop-grace", "300"])
        .cmdline("probe.end=halt")
        .spawn();
    running.wait_for_line("probe: done");
    let signalled = std::time::Instant::now();
    running.signal("TERM");
    let vm = running.wait();
    assert_eq!(vm.code(), 143, "{vm:#?}");
    assert!(
        signalled.elapsed() >= Duration::from_millis(300),
        "grace period not honoured"
    );
    assert!(
        vm.stderr.contains("did not stop within its grace period"),
        "{vm:#?}"
    );

    let mut running = TestVm::probe_pvh()
        .args(["--stop-grace", "60000"])
        .cmdline("probe.end=halt")
        .spawn();
    running.wait_for_line("probe: done");
    running.signal("TERM");
    std::thread::sleep(Duration::from_millis(50));
    running.signal("INT");
    let vm = running.wait();
    assert_eq!(vm.code(), 130, "second signal stops at once: {vm:#?}");
}

#[test]
fn triple_fault_ends_herd_vmm_with_a_guest_fault_error() {
    require_kvm!("triple_fault_ends_herd_vmm_with_a_guest_fault_error");
    let vm = TestVm::probe_pvh()
        .cmdline("probe.end=triple-fault")
        .timeout(Duration::from_secs(20))
        .run();
    assert_eq!(vm.code(), 80, "{vm:#?}");
    let err = vm
        .stderr
        .lines()
        .find(|l| l.starts_with("herd-vmm: error:"))
        .expect("error line");
    assert!(
        err.contains("triple fault") || err.contains("internal error"),
        "{err}"
    );
}

#[test]
fn idle_1_gib_guest_does_not_cost_1_gib_of_rss() {
    require_kvm!("idle_1_gib_guest_does_not_cost_1_gib_of_rss");
    let mut running = TestVm::probe_pvh()
        .args(["--memory", "1024"])
        .cmdline("probe.end=halt")
        .spawn();
    running.wait_for_line("probe: done");
    let status = std::fs::read_to_string(format!("/proc/{}/status", running.pid())).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    running.signal("TERM");
    running.wait();
    assert!(
        rss_kib < 32 * 1024,
        "idle 1 GiB guest has RSS {rss_kib} KiB"
    );
}

#[test]
fn firecracker_config_file_boots_the_same_guest() {
    require_kvm!("firecracker_config_file_boots_the_same_guest");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vm.json");
    let kernel = herd_tests::probe::pvh_elf().display().to_string();
    let json = serde_json::json!({
        "boot-source": {"kernel_image_path": kernel, "boot_args": "console=ttyS0 exit=12"},
        "drives": [],
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": false},
        "network-interfaces": []
    });
    std::fs::write(&cfg, json.to_string()).unwrap();
    let vm = TestVm::raw(&["--config-file", cfg.to_str().unwrap()]).run();
    assert_eq!(vm.code(), 12, "{vm:#?}");
    assert_eq!(vm.probe_value("cpus"), Some("2"));
    assert_eq!(vm.probe_value("cmdline"), Some("console=ttyS0 exit=12"));
    assert_eq!(vm.probe_e820().last().map(|e| e.1), Some(256 * MIB));
}
