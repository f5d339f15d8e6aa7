//! End-to-end: snapshots through the real herd-vmm with the probe guest serving on vsock
//! (`probe.end=serve`, which counts LAPIC timer ticks in guest memory and answers `count`,
//! `id` and `health` requests). Checked: pause, resume and snapshot follow the VM's state;
//! a restored VM continues where it was paused (its counter keeps counting from the saved
//! value, and it never boots again); clones of one snapshot get different identities; TAPs
//! and disks re-attach under new host names; and damaged, foreign or mismatched snapshots
//! are refused with the culprit named.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use herd_tests::vm::{Running, TestVm, kvm_available};
use serde_json::{Value, json};

macro_rules! require_kvm {
    ($name:expr) => {
        if !kvm_available($name) {
            return;
        }
    };
}

const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One request on the control socket; the reply.
fn api(sock: &Path, request: Value) -> Value {
    let mut s = UnixStream::connect(sock).expect("connect to the API socket");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .expect("a reply line");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?}: {e}"))
}

/// One request to the serving probe on vsock port 5000 (`count`, `id`, `health`); the
/// answer line without its newline.
fn ask(uds: &Path, request: &str) -> String {
    let mut s = UnixStream::connect(uds).expect("connect to the vsock socket");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"CONNECT 5000\n").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).expect("handshake reply");
    assert!(line.starts_with("OK "), "handshake: {line:?}");
    s.write_all(format!("{request}\n").as_bytes()).unwrap();
    line.clear();
    r.read_line(&mut line).expect("answer");
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    line.trim_end().to_owned()
}

fn count(uds: &Path) -> u64 {
    let answer = ask(uds, "count");
    let n = answer
        .strip_prefix("count=")
        .unwrap_or_else(|| panic!("{answer:?}"));
    n.parse().unwrap()
}

/// A serving probe with a control socket, in its own directory.
struct Serving {
    dir: tempfile::TempDir,
    vm: Running,
}

impl Serving {
    fn boot() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut vm = TestVm::probe_pvh()
            .cmdline("probe.end=serve")
            .args([
                "--vsock",
                &format!("3,{}", dir.path().join("v.sock").display()),
            ])
            .args([
                "--api-socket".as_ref(),
                dir.path().join("api.sock").as_os_str(),
            ])
            .timeout(Duration::from_secs(60))
            .spawn();
        vm.wait_for_line("probe: serve port=");
        Self { dir, vm }
    }

    fn api_sock(&self) -> PathBuf {
        self.dir.path().join("api.sock")
    }

    fn uds(&self) -> PathBuf {
        self.dir.path().join("v.sock")
    }

    /// Pauses, snapshots into `dir` (which must not exist yet); the VM stays paused.
    fn snapshot(&self, dir: &Path) {
        assert_eq!(
            api(&self.api_sock(), json!({"action": "pause"}))["state"],
            "paused"
        );
        let reply = api(&self.api_sock(), json!({"action": "snapshot", "dir": dir}));
        assert_eq!(reply["ok"], true, "{reply}");
        assert!(reply["bytes"].as_u64().unwrap() > 0, "{reply}");
    }
}

/// Restores `snap` with its vsock socket at `uds` and the identity members `identity`.
fn restore(snap: &Path, uds: &Path, identity: Option<Value>) -> Running {
    let mut vm = TestVm::raw(&[])
        .args(["--restore".as_ref(), snap.as_os_str()])
        .args(["--vsock", &format!("3,{}", uds.display())])
        .timeout(Duration::from_secs(60));
    if let Some(identity) = identity {
        let file = uds.with_extension("identity.json");
        std::fs::write(&file, identity.to_string()).unwrap();
        vm = vm.args(["--identity".as_ref(), file.as_os_str()]);
    }
    vm.spawn()
}

#[test]
fn pause_resume_and_snapshot_requests_follow_the_vms_state() {
    require_kvm!("pause_resume_and_snapshot_requests_follow_the_vms_state");
    let s = Serving::boot();
    let sock = s.api_sock();
    assert_eq!(api(&sock, json!({"action": "status"}))["state"], "running");
    let early = api(
        &sock,
        json!({"action": "snapshot", "dir": s.dir.path().join("x")}),
    );
    assert_eq!(early["ok"], false);
    assert!(
        early["error"]
            .as_str()
            .unwrap()
            .contains("running, so it cannot snapshot"),
        "{early}"
    );
    assert!(!s.dir.path().join("x").exists());
    assert_eq!(api(&sock, json!({"action": "resume"}))["ok"], false);
    assert_eq!(api(&sock, json!({"action": "pause"}))["state"], "paused");
    assert_eq!(api(&sock, json!({"action": "pause"}))["ok"], false);
    let bad = api(&sock, json!({"action": "pause", "now": true}));
    assert!(
        bad["error"].as_str().unwrap().starts_with("bad request"),
        "{bad}"
    );
    assert_eq!(api(&sock, json!({"action": "resume"}))["state"], "running");
    assert_eq!(ask(&s.uds(), "health"), "ok", "the guest runs again");
    s.vm.signal("KILL");
}

#[test]
fn a_counter_in_guest_memory_keeps_counting_across_save_and_restore() {
    require_kvm!("a_counter_in_guest_memory_keeps_counting_across_save_and_restore");
    let s = Serving::boot();
    std::thread::sleep(Duration::from_millis(300));
    let before = count(&s.uds());
    assert!(before > 0, "the probe counts ticks");
    let snap = s.dir.path().join("snap");
    s.snapshot(&snap);
    // The original is gone before the restore: everything comes from the files.
    s.vm.signal("KILL");
    let _ = s.vm.wait();
    let uds = s.dir.path().join("v2.sock");
    let mut restored = restore(&snap, &uds, None);
    restored.wait_for_line("probe: restored id=");
    let first = count(&uds);
    assert!(
        first >= before,
        "counted on from {before}, not from zero: {first}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let later = count(&uds);
    assert!(later > first, "still counting: {first} then {later}");
    restored.signal("KILL");
    let done = restored.wait();
    assert!(
        done.probe_value("boot").is_none(),
        "a restored VM resumes, it does not boot: {done:#?}"
    );
}

#[test]
fn two_clones_of_one_snapshot_get_different_ids_and_generations() {
    require_kvm!("two_clones_of_one_snapshot_get_different_ids_and_generations");
    let s = Serving::boot();
    let snap = s.dir.path().join("snap");
    s.snapshot(&snap);
    s.vm.signal("KILL");
    let clones: Vec<_> = ["clone-a", "clone-b"]
        .into_iter()
        .map(|id| {
            let uds = s.dir.path().join(format!("{id}.sock"));
            let vm = restore(&snap, &uds, Some(json!({"instance_id": id})));
            (id, uds, vm)
        })
        .collect();
    let mut generations = Vec::new();
    for (id, uds, mut vm) in clones {
        let line = vm.wait_for_line("probe: restored id=");
        let want = format!("probe: restored id={id} generation=");
        assert!(line.starts_with(&want), "{line}");
        generations.push(line[want.len()..].to_owned());
        assert_eq!(ask(&uds, "id"), format!("id={id}"));
        assert_eq!(ask(&uds, "health"), "ok");
        vm.signal("KILL");
    }
    assert_eq!(generations[0].len(), 32, "{generations:?}");
    assert_ne!(generations[0], generations[1]);
}

/// A copy of `snap` at `to` with `damage` applied to it.
fn damaged(snap: &Path, to: &Path, damage: impl FnOnce(&Path)) -> PathBuf {
    std::fs::create_dir(to).unwrap();
    for name in ["state", "memory"] {
        std::fs::copy(snap.join(name), to.join(name)).unwrap();
    }
    damage(to);
    to.to_owned()
}

/// Rewrites the JSON body of a state file with `edit` and seals it again (length and
/// SHA-256 in the 52-byte header), as a snapshot written elsewhere would be.
fn reseal(path: &Path, edit: impl FnOnce(&mut Value)) {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).unwrap();
    let mut body: Value = serde_json::from_slice(&bytes[52..]).unwrap();
    edit(&mut body);
    let body = serde_json::to_vec(&body).unwrap();
    let mut out = bytes[..12].to_vec();
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&body));
    out.extend_from_slice(&body);
    std::fs::write(path, out).unwrap();
}

fn rewrite(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    edit(&mut bytes);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn damaged_foreign_or_mismatched_snapshots_are_refused_naming_the_culprit() {
    require_kvm!("damaged_foreign_or_mismatched_snapshots_are_refused_naming_the_culprit");
    let s = Serving::boot();
    let snap = s.dir.path().join("snap");
    s.snapshot(&snap);
    s.vm.signal("KILL");
    let d = s.dir.path();
    let uds = d.join("r.sock");
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            damaged(&snap, &d.join("cut"), |p| {
                rewrite(&p.join("state"), |b| b.truncate(b.len() - 10))
            }),
            "is truncated or extended",
        ),
        (
            damaged(&snap, &d.join("flip"), |p| {
                rewrite(&p.join("state"), |b| *b.last_mut().unwrap() ^= 1)
            }),
            "is damaged: its checksum does not match",
        ),
        (
            damaged(&snap, &d.join("newer"), |p| {
                rewrite(&p.join("state"), |b| b[8] += 1)
            }),
            "has snapshot format version 2",
        ),
        (
            damaged(&snap, &d.join("foreign"), |p| {
                rewrite(&p.join("state"), |b| b[0] = b'X')
            }),
            "is not a herd snapshot state file",
        ),
        (
            damaged(&snap, &d.join("short-memory"), |p| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(p.join("memory"))
                    .unwrap();
                f.set_len(1 << 20).unwrap();
            }),
            "the memory file holds 1048576 bytes",
        ),
        (
            damaged(&snap, &d.join("no-memory"), |p| {
                std::fs::remove_file(p.join("memory")).unwrap()
            }),
            "snapshot memory",
        ),
        (
            damaged(&snap, &d.join("other-cpu"), |p| {
                reseal(&p.join("state"), |v| {
                    let model = v["cpu"]["model"].as_u64().unwrap();
                    v["cpu"]["model"] = json!(model ^ 0x3a);
                })
            }),
            "CPU; this host has a",
        ),
    ];
    for (dir, why) in cases {
        let done = restore(&dir, &uds, None).wait();
        assert_ne!(done.code(), 0, "{why}: {done:#?}");
        assert!(done.stderr.contains(why), "{why}: {}", done.stderr);
        assert!(
            done.stderr.contains(&*dir.to_string_lossy()),
            "names the file: {}",
            done.stderr
        );
    }
    let no_vsock = TestVm::raw(&[])
        .args(["--restore".as_ref(), snap.as_os_str()])
        .run();
    assert_eq!(no_vsock.code(), 64, "{no_vsock:#?}");
    assert!(
        no_vsock
            .stderr
            .contains("the snapshot has 1 virtio-vsock device(s); 0 given"),
        "{}",
        no_vsock.stderr
    );
    let other_cid = TestVm::raw(&[])
        .args(["--restore".as_ref(), snap.as_os_str()])
        .args(["--vsock", &format!("4,{}", uds.display())])
        .run();
    assert!(
        other_cid
            .stderr
            .contains("vsock guest CID: 4 given, the snapshot's is 3"),
        "{}",
        other_cid.stderr
    );
}

#[test]
fn taps_and_disks_reattach_under_new_host_names_and_must_match_the_snapshot() {
    let test = "taps_and_disks_reattach_under_new_host_names_and_must_match_the_snapshot";
    require_kvm!(test);
    let mut ns = match herd_tests::netns::NetNs::create() {
        Ok(ns) => ns,
        Err(why) => return herd_tests::vm::skip(test, &format!("no network namespace: {why}")),
    };
    ns.add_tap("snap0");
    ns.add_tap("snap1");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for disk in ["a.img", "b.img"] {
        std::fs::write(d.join(disk), vec![0u8; 1 << 20]).unwrap();
    }
    let disk_flag = |name: &str, ro: bool| {
        let ro = if ro { ",ro" } else { "" };
        format!("{}{ro}", d.join(name).display())
    };
    let vsock = |name: &str| format!("3,{}", d.join(name).display());
    let mut vm = TestVm::probe_pvh()
        .within(ns.exec_prefix())
        .cmdline("probe.end=serve")
        .args(["--net", "snap0,mac=02:00:00:00:00:07"])
        .args(["--disk", &disk_flag("a.img", true)])
        .args(["--vsock", &vsock("v.sock")])
        .args(["--api-socket".as_ref(), d.join("api.sock").as_os_str()])
        .timeout(Duration::from_secs(60))
        .spawn();
    vm.wait_for_line("probe: serve port=");
    let snap = d.join("snap");
    assert_eq!(
        api(&d.join("api.sock"), json!({"action": "pause"}))["ok"],
        true
    );
    let reply = api(
        &d.join("api.sock"),
        json!({"action": "snapshot", "dir": snap}),
    );
    assert_eq!(reply["ok"], true, "{reply}");
    vm.signal("KILL");
    let _ = vm.wait();

    let restore_with = |net: &str, disk: &str, sock: &str| {
        TestVm::raw(&[])
            .within(ns.exec_prefix())
            .args(["--restore".as_ref(), snap.as_os_str()])
            .args(["--net", net, "--disk", disk, "--vsock", &vsock(sock)])
            .timeout(Duration::from_secs(60))
    };
    let mut moved = restore_with("snap1", &disk_flag("b.img", true), "w.sock").spawn();
    moved.wait_for_line("probe: restored id=");
    assert_eq!(ask(&d.join("w.sock"), "health"), "ok");
    moved.signal("KILL");
    let _ = moved.wait();

    let writable = restore_with("snap1", &disk_flag("b.img", false), "x.sock").run();
    assert_eq!(writable.code(), 64, "{writable:#?}");
    assert!(
        writable
            .stderr
            .contains("read-write given, the snapshot's is read-only"),
        "{}",
        writable.stderr
    );
    let other_mac = restore_with(
        "snap1,mac=02:00:00:00:00:08",
        &disk_flag("b.img", true),
        "y.sock",
    )
    .run();
    assert!(
        other_mac
            .stderr
            .contains("net0 MAC: 02:00:00:00:00:08 given, the snapshot's is 02:00:00:00:00:07"),
        "{}",
        other_mac.stderr
    );
}
