//! End-to-end: `herd-vmm --jail` through the real binary. The jailed process must see none of
//! the host's files, processes or network, run as the unprivileged uid with no capabilities,
//! `no_new_privs` and seccomp on every thread, and its cgroup's memory limit must hold
//! against a guest that touches more memory than the limit allows.

use std::path::{Path, PathBuf};
use std::time::Duration;

use herd_tests::vm::{Running, TestVm, kvm_available};

const UID: u32 = 4_100_000;

/// A jail directory owned by the jail's uid, as the agent makes one.
fn jail_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(UID), Some(UID)).unwrap();
    dir
}

fn jailed(dir: &Path) -> TestVm {
    let (jail, id) = (dir.display().to_string(), UID.to_string());
    TestVm::probe_pvh().args(["--jail", &jail, "--jail-uid", &id, "--jail-gid", &id])
}

/// The jailed process: the only child of the herd-vmm we started.
fn jailed_child(vm: &Running) -> u32 {
    let pid = vm.pid();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let children: Vec<u32> = children
        .split_whitespace()
        .map(|c| c.parse().unwrap())
        .collect();
    assert_eq!(children.len(), 1, "one jailed child expected: {children:?}");
    children[0]
}

fn status_field(path: &Path, field: &str) -> String {
    let status = std::fs::read_to_string(path).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line[field.len()..]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn assert_unprivileged_and_filtered(child: u32) {
    let status = PathBuf::from(format!("/proc/{child}/status"));
    let id = UID.to_string();
    assert_eq!(status_field(&status, "Uid:"), [&*id; 4].join(" "));
    assert_eq!(status_field(&status, "Gid:"), [&*id; 4].join(" "));
    assert_eq!(status_field(&status, "Groups:"), "");
    assert_eq!(status_field(&status, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(&status, "CapPrm:"), "0000000000000000");
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1");
    // The jailed process is PID 1 of its own PID namespace.
    assert!(status_field(&status, "NSpid:").ends_with(" 1"));
    let tasks = std::fs::read_dir(format!("/proc/{child}/task")).unwrap();
    let mut threads = 0;
    for task in tasks.map(|t| t.unwrap().path()) {
        assert_eq!(
            status_field(&task.join("status"), "Seccomp:"),
            "2",
            "{task:?}"
        );
        threads += 1;
    }
    assert!(threads >= 2, "the event loop and a vCPU thread");
}

fn assert_sees_nothing_of_the_host(child: u32, jail: &Path) {
    for ns in ["mnt", "pid", "net", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{child}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace is the host's");
    }
    // Its `/` is the jail directory and nothing else is mounted.
    let mut root: Vec<String> = std::fs::read_dir(format!("/proc/{child}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut jail_entries: Vec<String> = std::fs::read_dir(jail)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    root.sort();
    jail_entries.sort();
    assert_eq!(root, jail_entries);
    let mounts = std::fs::read_to_string(format!("/proc/{child}/mountinfo")).unwrap();
    let points: Vec<&str> = mounts
        .lines()
        .map(|l| l.split(' ').nth(4).unwrap())
        .collect();
    assert_eq!(points, ["/"], "{mounts}");
    // Its network namespace has only a loopback device.
    let dev = std::fs::read_to_string(format!("/proc/{child}/net/dev")).unwrap();
    let devices: Vec<&str> = dev
        .lines()
        .skip(2)
        .map(|l| l.trim().split(':').next().unwrap())
        .collect();
    assert_eq!(devices, ["lo"]);
}

#[test]
fn a_jailed_vmm_sees_nothing_of_the_host_and_runs_unprivileged_under_seccomp() {
    if !kvm_available("a_jailed_vmm_sees_nothing_of_the_host_and_runs_unprivileged_under_seccomp") {
        return;
    }
    let dir = jail_dir();
    let uds = dir.path().join("v.sock");
    let mut vm = jailed(dir.path())
        .cmdline("probe.end=serve exit=7")
        .args(["--vsock".into(), format!("3,{}", uds.display())])
        .args(["--stop-grace", "5000"])
        .timeout(Duration::from_secs(60))
        .spawn();
    vm.wait_for_line("probe: serve port=");
    let child = jailed_child(&vm);
    assert_unprivileged_and_filtered(child);
    assert_sees_nothing_of_the_host(child, dir.path());
    // The socket was made inside the jail, as the jail's user, where the host can reach it.
    let meta = std::fs::metadata(&uds).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), UID);
    // A stop reaches the jailed process through the parent, and its status comes back.
    vm.signal("TERM");
    let done = vm.wait();
    assert_eq!(done.code(), 7, "{done:#?}");
    assert!(!uds.exists(), "the jailed process removes its socket");
}

/// A memory cgroup under this test's own, with `limit` bytes, removed on drop.
struct MemoryCgroup(PathBuf);

impl MemoryCgroup {
    fn new(name: &str, limit: u64) -> Self {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let (controller, file) = if v2 {
            ("", "memory.max")
        } else {
            ("memory", "memory.limit_in_bytes")
        };
        let path = own
            .lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':').skip(1);
                let names = f.next()?;
                (names.split(',').any(|n| n == controller)).then(|| f.next().unwrap().to_owned())
            })
            .expect("own memory cgroup");
        let mount = if v2 {
            "/sys/fs/cgroup".into()
        } else {
            format!("/sys/fs/cgroup/{controller}")
        };
        let dir = PathBuf::from(format!("{mount}{path}")).join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), limit.to_string()).unwrap_or_else(|e| {
            panic!("cannot set {file} of {dir:?} (v2 needs memory delegated): {e}")
        });
        Self(dir)
    }

    fn peak(&self) -> u64 {
        let file = ["memory.max_usage_in_bytes", "memory.peak"]
            .into_iter()
            .map(|f| self.0.join(f))
            .find(|p| p.exists())
            .unwrap();
        std::fs::read_to_string(file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_guest_touching_more_memory_than_its_cgroup_allows_is_killed_at_the_limit() {
    if !kvm_available("a_guest_touching_more_memory_than_its_cgroup_allows_is_killed_at_the_limit")
    {
        return;
    }
    const LIMIT: u64 = 64 << 20;
    let cgroup = MemoryCgroup::new(&format!("herd-test-{}", std::process::id()), LIMIT);
    let dir = jail_dir();
    let done = jailed(dir.path())
        .cmdline("probe.mem.touch=all")
        .args(["--memory", "256", "--jail-cgroup"])
        .args([&cgroup.0])
        .timeout(Duration::from_secs(60))
        .run();
    // Killed by the kernel's OOM killer inside the cgroup: the parent reports SIGKILL.
    assert_eq!(done.code(), 128 + 9, "{done:#?}");
    assert!(done.probe_value("touched KiB").is_none(), "{done:#?}");
    assert!(
        cgroup.peak() <= LIMIT,
        "peak {} over the limit",
        cgroup.peak()
    );
    // The same guest with room to spare touches all of its memory.
    let roomy = MemoryCgroup::new(
        &format!("herd-test-{}-roomy", std::process::id()),
        512 << 20,
    );
    let done = jailed(dir.path())
        .cmdline("probe.mem.touch=all")
        .args(["--memory", "256", "--jail-cgroup"])
        .args([&roomy.0])
        .timeout(Duration::from_secs(60))
        .run();
    assert_eq!(done.code(), 0, "{done:#?}");
    assert_eq!(done.probe_value("touched KiB"), Some("261120"));
    assert!(
        roomy.peak() > 256 << 20,
        "the guest's memory is charged to the cgroup"
    );
}

#[test]
fn jail_settings_that_would_leak_or_run_as_root_are_refused_naming_them() {
    let dir = jail_dir();
    let jail = dir.path().display().to_string();
    let outside = TestVm::probe_pvh()
        .args([
            "--jail",
            &jail,
            "--jail-uid",
            "4100000",
            "--jail-gid",
            "4100000",
        ])
        .args(["--console-log", "/tmp/herd-outside-the-jail.log"])
        .run();
    assert_eq!(outside.code(), 64, "{outside:#?}");
    assert!(
        outside
            .stderr
            .contains("console log /tmp/herd-outside-the-jail.log is outside the jail directory"),
        "{outside:#?}"
    );
    let as_root = TestVm::probe_pvh()
        .args(["--jail", &jail, "--jail-uid", "0", "--jail-gid", "0"])
        .run();
    assert_eq!(as_root.code(), 64, "{as_root:#?}");
    assert!(as_root.stderr.contains("must not be 0"), "{as_root:#?}");
    let no_uid = TestVm::probe_pvh().args(["--jail", &jail]).run();
    assert_eq!(no_uid.code(), 64, "{no_uid:#?}");
    assert!(no_uid.stderr.contains("--jail-uid"), "{no_uid:#?}");
}

#[test]
fn killing_the_parent_kills_the_jailed_vmm() {
    if !kvm_available("killing_the_parent_kills_the_jailed_vmm") {
        return;
    }
    let dir = jail_dir();
    let mut vm = jailed(dir.path())
        .cmdline("probe.end=halt")
        .timeout(Duration::from_secs(60))
        .spawn();
    vm.wait_for_line("probe: done");
    let child = jailed_child(&vm);
    // The agent kills an instance that must go now with SIGKILL to the pid it started.
    vm.signal("KILL");
    let gone = std::time::Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{child}")).exists() {
        assert!(
            std::time::Instant::now() < gone,
            "jailed process {child} outlived its parent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
