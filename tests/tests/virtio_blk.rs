//! End-to-end: virtio-blk through the real herd-vmm, driven by the probe guest (`probe.blk.*`
//! words), with the backing files checked on the host after the VM exits.

use std::path::{Path, PathBuf};
use std::process::Command;

use herd_tests::vm::{Finished, TestVm, kvm_available};

macro_rules! require_kvm {
    ($name:expr) => {
        if !kvm_available($name) {
            return;
        }
    };
}

const SECTORS: u64 = 128;

/// A zero-filled disk image of `SECTORS` sectors in `dir`.
fn disk(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, vec![0u8; SECTORS as usize * 512]).unwrap();
    path
}

/// The `probe: blk ...` lines, prefix removed.
fn blk_lines(vm: &Finished) -> Vec<&str> {
    vm.probe_lines()
        .into_iter()
        .filter_map(|l| l.strip_prefix("blk "))
        .collect()
}

#[test]
fn written_and_flushed_data_reads_back_and_is_in_the_host_file() {
    require_kvm!("written_and_flushed_data_reads_back_and_is_in_the_host_file");
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path(), "data.img");
    let vm = TestVm::probe_pvh()
        .cmdline("exit=3 probe.blk.write=8:171:2 probe.blk.flush probe.blk.read=8:2")
        .args(["--disk", &format!("{},id=data", img.display())])
        .run();
    assert_eq!(vm.code(), 3, "{vm:#?}");
    assert_eq!(
        blk_lines(&vm),
        [
            "capacity=128",
            "id=data",
            "status=ok",
            "status=ok",
            "status=ok",
            "read sector=8 sum=0x2ac00",
            "status=ok"
        ],
        "{vm:#?}"
    );
    let file = std::fs::read(&img).unwrap();
    assert!(file[8 * 512..10 * 512].iter().all(|&b| b == 171));
    assert!(
        file[..8 * 512]
            .iter()
            .chain(&file[10 * 512..])
            .all(|&b| b == 0)
    );
    let cmdline = vm.probe_value("cmdline").unwrap();
    assert!(
        cmdline.ends_with("virtio_mmio.device=4K@0xc0001000:5"),
        "{cmdline}"
    );
}

#[test]
fn a_read_only_disk_refuses_writes_and_the_file_is_unchanged() {
    require_kvm!("a_read_only_disk_refuses_writes_and_the_file_is_unchanged");
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path(), "ro.img");
    std::fs::write(&img, vec![7u8; SECTORS as usize * 512]).unwrap();
    let vm = TestVm::probe_bzimage()
        .cmdline("probe.blk.write=0:1:1 probe.blk.read=0:1")
        .args(["--disk", &format!("{},ro", img.display())])
        .run();
    assert_eq!(vm.code(), 0, "{vm:#?}");
    let lines = blk_lines(&vm);
    assert_eq!(lines[1], "id=disk0");
    assert_eq!(lines[3], "status=ioerr", "{vm:#?}");
    assert_eq!(&lines[4..], ["read sector=0 sum=0xe00", "status=ok"]);
    assert_eq!(
        std::fs::read(&img).unwrap(),
        vec![7u8; SECTORS as usize * 512]
    );
}

#[test]
fn out_of_range_reads_get_ioerr_and_the_vm_goes_on() {
    require_kvm!("out_of_range_reads_get_ioerr_and_the_vm_goes_on");
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path(), "d.img");
    for sector in ["128", "127:2", "9223372036854775807"] {
        let (s, n) = sector.split_once(':').unwrap_or((sector, "1"));
        let vm = TestVm::probe_pvh()
            .cmdline(&format!("exit=5 probe.blk.read={s}:{n}"))
            .args(["--disk", img.to_str().unwrap()])
            .run();
        assert_eq!(vm.code(), 5, "{vm:#?}");
        assert_eq!(blk_lines(&vm).last(), Some(&"status=ioerr"), "{vm:#?}");
        assert!(vm.stderr.contains("request refused"), "{vm:#?}");
    }
}

#[test]
fn two_disks_each_get_their_own_writes() {
    require_kvm!("two_disks_each_get_their_own_writes");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (disk(dir.path(), "a.img"), disk(dir.path(), "b.img"));
    let vm = TestVm::probe_pvh()
        .cmdline("probe.blk.write=1:16:1 probe.blk.flush")
        .args(["--disk", &format!("{},id=first", a.display())])
        .args(["--disk", &format!("{},id=second", b.display())])
        .run();
    assert_eq!(vm.code(), 0, "{vm:#?}");
    let lines = blk_lines(&vm);
    assert!(
        lines.contains(&"id=first") && lines.contains(&"id=second"),
        "{vm:#?}"
    );
    for (img, byte) in [(a, 16u8), (b, 17u8)] {
        let file = std::fs::read(&img).unwrap();
        assert!(
            file[512..1024].iter().all(|&x| x == byte),
            "{}",
            img.display()
        );
        assert!(file[..512].iter().all(|&x| x == 0));
    }
}

#[test]
fn firecracker_root_drive_is_announced_with_its_root_words() {
    require_kvm!("firecracker_root_drive_is_announced_with_its_root_words");
    let dir = tempfile::tempdir().unwrap();
    let img = disk(dir.path(), "root.img");
    let config = dir.path().join("vm.json");
    let json = serde_json::json!({
        "boot-source": {"kernel_image_path": herd_tests::probe::pvh_elf(),
                        "boot_args": "probe.blk.read=0:1"},
        "drives": [{"drive_id": "rootfs", "path_on_host": img, "is_root_device": true,
                    "is_read_only": true, "cache_type": "Writeback", "io_engine": "Sync"}]
    });
    std::fs::write(&config, json.to_string()).unwrap();
    let vm = TestVm::raw(&["--config-file", config.to_str().unwrap()]).run();
    assert_eq!(vm.code(), 0, "{vm:#?}");
    assert_eq!(
        vm.probe_value("cmdline"),
        Some("probe.blk.read=0:1 root=/dev/vda ro virtio_mmio.device=4K@0xc0001000:5")
    );
    assert_eq!(blk_lines(&vm)[..2], ["capacity=128", "id=rootfs"]);
}

/// Runs herd-vmm with `args` and checks it refused to start with `code` and `needles`.
fn assert_refused(vm: TestVm, code: i32, needles: &[&str]) {
    let vm = vm.run();
    assert_eq!(vm.code(), code, "{vm:#?}");
    for n in needles {
        assert!(vm.stderr.contains(n), "{n:?} not in {vm:#?}");
    }
    assert!(vm.probe_lines().is_empty(), "{vm:#?}");
}

#[test]
fn bad_drives_are_refused_at_start_naming_the_drive() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.img");
    let vm = TestVm::probe_pvh().args(["--disk", &format!("{},id=gone", missing.display())]);
    assert_refused(vm, 66, &["drive gone", "cannot open", "missing.img"]);
    let vm = TestVm::probe_pvh().args(["--disk", &format!("{}", dir.path().display())]);
    assert_refused(
        vm,
        65,
        &["drive disk0", "not a regular file or block device"],
    );
    let vm = TestVm::probe_pvh().args(["--disk", "/dev/null,id=null"]);
    assert_refused(vm, 65, &["drive null", "/dev/null is not a regular file"]);
    let locked = disk(dir.path(), "locked.img");
    let mut perms = std::fs::metadata(&locked).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
    std::fs::set_permissions(&locked, perms).unwrap();
    // root ignores permission bits; an immutable file refuses it too.
    let immutable = Command::new("chattr").arg("+i").arg(&locked).status();
    let vm = TestVm::probe_pvh().args(["--disk", &format!("{},id=locked", locked.display())]);
    assert_refused(vm, 65, &["drive locked", "cannot open", "read-write"]);
    if immutable.is_ok_and(|s| s.success()) {
        let _ = Command::new("chattr").arg("-i").arg(&locked).status();
    }
    let config = dir.path().join("vm.json");
    let json = serde_json::json!({
        "boot-source": {"kernel_image_path": herd_tests::probe::pvh_elf()},
        "drives": [{"drive_id": "rootfs", "path_on_host": locked, "is_root_device": true,
                    "io_engine": "Async"}]
    });
    std::fs::write(&config, json.to_string()).unwrap();
    let vm = TestVm::raw(&["--config-file", config.to_str().unwrap()]);
    assert_refused(vm, 64, &["drive rootfs", "io_engine"]);
    let vm = TestVm::probe_pvh().args(["--disk", "x.img,rw"]);
    assert_refused(vm, 64, &["--disk x.img,rw"]);
}

/// A disk image of `SECTORS` sectors of `byte`, synced so its blocks are allocated.
fn allocated_disk(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, vec![byte; SECTORS as usize * 512]).unwrap();
    std::fs::File::open(&path).unwrap().sync_all().unwrap();
    path
}

/// 512-byte blocks `path` occupies on the host.
fn blocks(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(path).unwrap())
}

/// Checks that sectors `[from, to)` of `file` are all `byte`.
fn assert_sectors(file: &[u8], from: usize, to: usize, byte: u8) {
    let bad = file[from * 512..to * 512].iter().position(|&b| b != byte);
    assert_eq!(bad, None, "sectors {from}..{to} not all {byte:#x}");
}

#[test]
fn discarded_sectors_read_as_zeroes_and_are_a_hole_in_the_host_file() {
    require_kvm!("discarded_sectors_read_as_zeroes_and_are_a_hole_in_the_host_file");
    let dir = tempfile::tempdir().unwrap();
    let img = allocated_disk(dir.path(), "d.img", 0x11);
    let before = blocks(&img);
    let vm = TestVm::probe_pvh()
        .cmdline(
            "probe.blk.write=16:171:16 probe.blk.discard=16:8 probe.blk.flush probe.blk.read=16:8",
        )
        .args(["--disk", img.to_str().unwrap()])
        .run();
    assert_eq!(vm.code(), 0, "{vm:#?}");
    assert_eq!(
        blk_lines(&vm)[3..],
        [
            "status=ok",
            "status=ok",
            "status=ok",
            "read sector=16 sum=0x0",
            "status=ok"
        ],
        "{vm:#?}"
    );
    let file = std::fs::read(&img).unwrap();
    assert_sectors(&file, 0, 16, 0x11);
    assert_sectors(&file, 16, 24, 0);
    assert_sectors(&file, 24, 32, 171);
    assert_sectors(&file, 32, SECTORS as usize, 0x11);
    assert!(
        blocks(&img) + 8 <= before,
        "no hole: {before} -> {} blocks",
        blocks(&img)
    );
    // A range past the end is refused, the file untouched, and the VM goes on.
    let vm = TestVm::probe_pvh()
        .cmdline("exit=4 probe.blk.discard=120:16")
        .args(["--disk", img.to_str().unwrap()])
        .run();
    assert_eq!(vm.code(), 4, "{vm:#?}");
    assert_eq!(blk_lines(&vm).last(), Some(&"status=ioerr"), "{vm:#?}");
    assert_eq!(std::fs::read(&img).unwrap(), file);
}

#[test]
fn written_zeroes_read_as_zeroes_and_unmap_leaves_a_hole() {
    require_kvm!("written_zeroes_read_as_zeroes_and_unmap_leaves_a_hole");
    let dir = tempfile::tempdir().unwrap();
    let img = allocated_disk(dir.path(), "z.img", 0x11);
    let disk = format!("{}", img.display());
    let vm = TestVm::probe_pvh()
        .cmdline("probe.blk.write=16:171:16 probe.blk.zeroes=16:8 probe.blk.read=16:16")
        .args(["--disk", &disk])
        .run();
    assert_eq!(vm.code(), 0, "{vm:#?}");
    // Sectors 16-23 are zero, 24-31 still 171: 8 * 512 * 171.
    assert_eq!(
        blk_lines(&vm)[3..],
        [
            "status=ok",
            "status=ok",
            "read sector=16 sum=0xab000",
            "status=ok"
        ],
        "{vm:#?}"
    );
    let file = std::fs::read(&img).unwrap();
    assert_sectors(&file, 16, 24, 0);
    assert_sectors(&file, 24, 32, 171);
    let before = blocks(&img);
    let vm = TestVm::probe_pvh()
        .cmdline("probe.blk.zeroes=32:16:unmap probe.blk.read=32:16")
        .args(["--disk", &disk])
        .run();
    assert_eq!(vm.code(), 0, "{vm:#?}");
    assert_eq!(
        blk_lines(&vm)[3..],
        ["status=ok", "read sector=32 sum=0x0", "status=ok"],
        "{vm:#?}"
    );
    let file = std::fs::read(&img).unwrap();
    assert_sectors(&file, 24, 32, 171);
    assert_sectors(&file, 32, 48, 0);
    assert_sectors(&file, 48, SECTORS as usize, 0x11);
    assert!(
        blocks(&img) + 16 <= before,
        "no hole: {before} -> {} blocks",
        blocks(&img)
    );
}

#[test]
fn a_read_only_disk_offers_no_discard_and_refuses_it() {
    require_kvm!("a_read_only_disk_offers_no_discard_and_refuses_it");
    let dir = tempfile::tempdir().unwrap();
    let img = allocated_disk(dir.path(), "ro.img", 0x22);
    let vm = TestVm::probe_pvh()
        .cmdline("probe.blk.discard=0:8 probe.blk.zeroes=8:8:unmap probe.blk.read=0:1")
        .args(["--disk", &format!("{},ro", img.display())])
        .run();
    assert_eq!(vm.code(), 0, "{vm:#?}");
    // UNSUPP, not IOERR: the driver could not negotiate the features, so the types are unknown.
    assert_eq!(
        blk_lines(&vm)[3..],
        [
            "status=unsupp",
            "status=unsupp",
            "read sector=0 sum=0x4400",
            "status=ok"
        ],
        "{vm:#?}"
    );
    assert_eq!(
        std::fs::read(&img).unwrap(),
        vec![0x22; SECTORS as usize * 512]
    );
}
