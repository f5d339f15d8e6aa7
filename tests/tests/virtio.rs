//! End-to-end: virtio-mmio devices through the real herd-vmm, driven by the probe guest's
//! minimal virtio driver.

use herd_tests::vm::{TestVm, kvm_available};

macro_rules! require_kvm {
    ($name:expr) => {
        if !kvm_available($name) {
            return;
        }
    };
}

const RNG_WORD: &str = "virtio_mmio.device=4K@0xc0001000:5";

#[test]
fn entropy_device_is_announced_and_gives_varied_bytes() {
    require_kvm!("entropy_device_is_announced_and_gives_varied_bytes");
    let vm = TestVm::probe_pvh()
        .cmdline("exit=4 probe.rng=4096")
        .args(["--entropy"])
        .run();
    assert_eq!(vm.code(), 4, "{vm:#?}");
    let want = format!("exit=4 probe.rng=4096 {RNG_WORD}");
    assert_eq!(vm.probe_value("cmdline"), Some(want.as_str()));
    let line = vm.probe_value("rng bytes").expect("rng line");
    let (bytes, distinct) = line.split_once(" distinct=").expect("rng fields");
    assert_eq!(bytes, "4096", "{vm:#?}");
    let distinct: u32 = distinct.parse().unwrap();
    assert!(
        distinct > 200,
        "only {distinct} distinct byte values: {vm:#?}"
    );
}

#[test]
fn without_entropy_no_device_is_announced() {
    require_kvm!("without_entropy_no_device_is_announced");
    let vm = TestVm::probe_bzimage().cmdline("probe.rng=16").run();
    assert_eq!(vm.code(), 0, "{vm:#?}");
    assert_eq!(vm.probe_value("cmdline"), Some("probe.rng=16"));
    assert!(
        vm.stdout.contains("probe: rng error no-rng-device"),
        "{vm:#?}"
    );
}

#[test]
fn firecracker_entropy_section_adds_the_device() {
    require_kvm!("firecracker_entropy_section_adds_the_device");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vm.json");
    let kernel = herd_tests::probe::pvh_elf();
    let json = serde_json::json!({
        "boot-source": {"kernel_image_path": kernel, "boot_args": "probe.rng=32"},
        "entropy": {}
    });
    std::fs::write(&config, json.to_string()).unwrap();
    let vm = TestVm::raw(&["--config-file", config.to_str().unwrap()]).run();
    assert_eq!(vm.code(), 0, "{vm:#?}");
    assert_eq!(
        vm.probe_value("cmdline"),
        Some(format!("probe.rng=32 {RNG_WORD}").as_str())
    );
    assert!(
        vm.probe_value("rng bytes")
            .is_some_and(|v| v.starts_with("32 "))
    );
}

#[test]
fn hostile_entropy_requests_get_zero_bytes_and_the_vm_exits_normally() {
    require_kvm!("hostile_entropy_requests_get_zero_bytes_and_the_vm_exits_normally");
    for hostile in ["outside", "loop"] {
        let vm = TestVm::probe_pvh()
            .cmdline(&format!("exit=6 probe.rng=256 probe.rng.hostile={hostile}"))
            .args(["--entropy"])
            .run();
        assert_eq!(vm.code(), 6, "{hostile}: {vm:#?}");
        assert_eq!(vm.probe_value("rng bytes"), Some("0 distinct=0"), "{vm:#?}");
        assert_eq!(vm.probe_value("done exit"), Some("6"));
        assert!(vm.stderr.contains("request gets 0 bytes"), "{vm:#?}");
    }
}
