//! End-to-end: `herd run` boots an image through the real herd-vmm with the instance's
//! configuration appended at boot. The image's kernel is the probe guest, which reports the
//! `herd/` files it finds in the initrd, so this runs on any KVM host, PVM included.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use herd_tests::guest_kernel::kernel_dir;
use herd_tests::vm::kvm_available;

/// herd-vmm and the probe, built by the workspace (`cargo build --workspace`); `None` (a
/// recorded skip) without KVM.
fn prerequisites() -> Option<(PathBuf, PathBuf)> {
    if !kvm_available("herd run end-to-end tests") {
        return None;
    }
    let exe = std::env::current_exe().unwrap();
    let vmm = exe.parent()?.parent()?.join("herd-vmm");
    assert!(
        vmm.is_file(),
        "{} missing: cargo build --workspace first",
        vmm.display()
    );
    Some((vmm, herd_tests::probe::pvh_elf().to_owned()))
}

/// A `Herd` with an empty store of its own, and the probe image path; `None` (a recorded
/// skip) without KVM.
fn fresh_store() -> Option<(Herd, PathBuf)> {
    let (vmm, probe) = prerequisites()?;
    let home = tempfile::tempdir().unwrap();
    Some((Herd { home, vmm }, probe))
}

struct Herd {
    home: tempfile::TempDir,
    vmm: PathBuf,
}

impl Herd {
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_herd"))
            .arg("--home")
            .arg(self.home.path())
            .args(args)
            .env("HERD_VMM", &self.vmm)
            .output()
            .expect("run herd")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(
            out.status.success(),
            "herd {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// Builds an image whose kernel is the probe; app and init are the probe too (any small static
/// ELF will do: the probe never runs them, and it sums the whole initrd at emulated speed on
/// PVM hosts, so the initrd must stay small).
fn probe_image(herd: &Herd, probe: &Path, exit: u8) -> String {
    probe_image_with(herd, probe, &format!("console=ttyS0 exit={exit}"))
}

fn probe_image_with(herd: &Herd, probe: &Path, cmdline: &str) -> String {
    let app = herd.home.path().join("app");
    std::fs::copy(probe, &app).unwrap();
    std::fs::set_permissions(&app, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = herd.ok(&[
        "build",
        "--binary",
        app.to_str().unwrap(),
        "--name",
        "probe-app",
        "--version",
        "1.0.0",
        "--kernel",
        probe.to_str().unwrap(),
        "--init",
        probe.to_str().unwrap(),
        "--env",
        "FROM_IMAGE=yes",
        "--cmdline",
        cmdline,
    ]);
    out.lines().last().unwrap().trim().to_owned()
}

fn instance_config(stdout: &str) -> serde_json::Value {
    let line = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("probe: file-content herd/instance.json "))
        .next_back()
        .unwrap_or_else(|| panic!("no instance config reported:\n{stdout}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn run_injects_each_environment_at_boot_and_the_image_digest_never_changes() {
    let Some((herd, probe)) = fresh_store() else {
        return;
    };
    let digest = probe_image(&herd, &probe, 7);
    let envs = tempfile::tempdir().unwrap();
    let staging = envs.path().join("staging.env");
    let prod = envs.path().join("prod.env");
    std::fs::write(&staging, "STAGE=staging\nDB=db.staging\n").unwrap();
    std::fs::write(&prod, "STAGE=prod\nDB=db.prod\n").unwrap();

    let mut seen = Vec::new();
    for env_file in [&staging, &prod] {
        let out = herd.cmd(&[
            "run",
            "probe-app:1.0.0",
            "--env-file",
            env_file.to_str().unwrap(),
            "--",
            "serve",
            "--fast",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(7),
            "herd run exits with the guest's status: {stdout}"
        );
        assert!(
            stdout.contains("probe: file herd/image.json"),
            "image config present: {stdout}"
        );
        let cfg = instance_config(&stdout);
        assert_eq!(cfg["args"], serde_json::json!(["serve", "--fast"]));
        assert!(
            cfg["instance_id"]
                .as_str()
                .unwrap()
                .starts_with("probe-app-")
        );
        assert_eq!(cfg["hostname"], cfg["instance_id"]);
        seen.push(cfg);
    }
    assert_eq!(
        seen[0]["env"],
        serde_json::json!({"STAGE": "staging", "DB": "db.staging"})
    );
    assert_eq!(
        seen[1]["env"],
        serde_json::json!({"STAGE": "prod", "DB": "db.prod"})
    );
    assert_ne!(seen[0]["instance_id"], seen[1]["instance_id"]);

    let inspect: serde_json::Value =
        serde_json::from_str(&herd.ok(&["image", "inspect", "probe-app:1.0.0"])).unwrap();
    assert_eq!(
        inspect["digest"].as_str(),
        Some(digest.as_str()),
        "{inspect}"
    );
    assert_eq!(
        probe_image(&herd, &probe, 7),
        digest,
        "rebuilding gives the same digest"
    );
}

#[test]
fn sigterm_to_herd_run_asks_the_guest_to_stop_and_returns_its_status() {
    let Some((herd, probe)) = fresh_store() else {
        return;
    };
    probe_image_with(&herd, &probe, "console=ttyS0 probe.end=control exit=33");
    let mut child = Command::new(env!("CARGO_BIN_EXE_herd"))
        .arg("--home")
        .arg(herd.home.path())
        .args(["run", "probe-app:1.0.0"])
        .env("HERD_VMM", &herd.vmm)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("probe: memcheck") {
        let mut line = String::new();
        assert!(
            std::io::BufRead::read_line(&mut reader, &mut line).unwrap() > 0,
            "VM ended early: {seen}"
        );
        seen.push_str(&line);
    }
    let ok = Command::new("kill")
        .args(["-s", "TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    std::io::Read::read_to_string(&mut reader, &mut seen).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(33), "the guest stopped itself: {seen}");
    assert!(seen.contains("probe: control=stop"), "{seen}");
}

#[test]
fn run_refuses_unknown_images_and_bad_env_without_booting() {
    let Some((herd, probe)) = fresh_store() else {
        return;
    };
    probe_image(&herd, &probe, 0);
    let out = herd.cmd(&["run", "nope:1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope:1"), "{err}");
    let out = herd.cmd(&["run", "probe-app", "--env", "1BAD=x"]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1BAD=x"));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("probe:"),
        "nothing booted"
    );
}

/// Our guest kernel's vmlinux, from the cache guest-kernel/build.sh fills.
fn linux_kernel() -> Option<PathBuf> {
    kernel_dir().map(|d| d.join("vmlinux"))
}

#[test]
fn hello_app_prints_each_environment_and_exits_with_the_requested_status() {
    let Some((herd, _)) = fresh_store() else {
        return;
    };
    if Path::new("/sys/module/kvm_pvm").exists() {
        println!("skipped on PVM: Linux user space cannot start under PVM's instruction emulator");
        return;
    }
    let kernel = linux_kernel().expect("guest kernel not built: run guest-kernel/build.sh");
    let hello = target_bin("hello");
    herd.ok(&[
        "build",
        "--binary",
        hello.to_str().unwrap(),
        "--name",
        "hello",
        "--version",
        "1",
        "--kernel",
        kernel.to_str().unwrap(),
    ]);
    let envs = tempfile::tempdir().unwrap();
    for (stage, status) in [("staging", "3"), ("prod", "4")] {
        let file = envs.path().join(format!("{stage}.env"));
        std::fs::write(&file, format!("STAGE={stage}\nEXIT_STATUS={status}\n")).unwrap();
        let out = herd.cmd(&[
            "run",
            "hello:1",
            "--env-file",
            file.to_str().unwrap(),
            "--",
            "a",
            "b c",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(status.parse().unwrap()), "{stdout}");
        assert!(stdout.contains(&format!("env STAGE={stage}")), "{stdout}");
        assert!(
            stdout.contains("arg 0 a") && stdout.contains("arg 1 b c"),
            "{stdout}"
        );
    }
}

/// `herd run`'s device flags: a read-only disk the probe reads, and the network settings in
/// the instance configuration it reports. Entropy is always attached.
#[test]
fn run_attaches_disks_and_puts_the_network_settings_in_the_instance_config() {
    let Some((herd, probe)) = fresh_store() else {
        return;
    };
    probe_image_with(&herd, &probe, "console=ttyS0 probe.blk.read=0:1 exit=5");
    let disk = herd.home.path().join("data.img");
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&disk, &bytes).unwrap();
    let sum: u32 = bytes[..512].iter().map(|b| u32::from(*b)).sum();
    let disk_flag = format!("{},ro", disk.display());
    let out = herd.cmd(&[
        "run",
        "probe-app:1.0.0",
        "--disk",
        &disk_flag,
        "--ip",
        "10.0.0.2/24",
        "--gateway",
        "10.0.0.1",
        "--dns",
        "10.0.0.1",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(5), "{stdout}");
    assert!(stdout.contains("probe: blk capacity=8"), "{stdout}");
    assert!(
        stdout.contains(&format!("probe: blk read sector=0 sum={sum:#x}")),
        "{stdout}"
    );
    let cmdline = stdout
        .lines()
        .find_map(|l| l.strip_prefix("probe: cmdline="))
        .unwrap();
    assert_eq!(
        cmdline.matches("virtio_mmio.device=").count(),
        2,
        "entropy and the disk: {cmdline}"
    );
    let cfg = instance_config(&stdout);
    assert_eq!(
        cfg["network"],
        serde_json::json!({"address": "10.0.0.2/24", "gateway": "10.0.0.1", "dns": ["10.0.0.1"]})
    );
}

#[test]
fn run_refuses_bad_device_flags_without_booting() {
    let Some((herd, probe)) = fresh_store() else {
        return;
    };
    probe_image(&herd, &probe, 0);
    for (args, needle) in [
        (&["--ip", "10.0.0.2"][..], "prefix length"),
        (
            &["--ip", "10.0.0.2/24", "--gateway", "10.9.0.1"][..],
            "inside",
        ),
        (&["--gateway", "10.0.0.1"][..], "need --ip"),
        (&["--disk", "x,rw"][..], "--disk"),
        (&["--net", "no such tap"][..], "--net"),
    ] {
        let mut all = vec!["run", "probe-app"];
        all.extend_from_slice(args);
        let out = herd.cmd(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("probe:"));
    }
}

/// A network namespace of the test's own, deleted on drop: TAPs live and frames stay in it.
struct Netns(String);

impl Netns {
    fn create(test: &str) -> Option<Self> {
        let name = format!("herd-run-{}-{test}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            println!("HERD-SKIP: {test}: cannot create a network namespace (needs root and ip)");
            return None;
        }
        Some(Self(name))
    }

    fn ip(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["-n", &self.0])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn run_attaches_an_existing_tap_or_one_it_creates_and_removes() {
    let Some((herd, probe)) = fresh_store() else {
        return;
    };
    let Some(ns) = Netns::create("net") else {
        return;
    };
    probe_image(&herd, &probe, 0);
    let out = ns.ip(&["tuntap", "add", "dev", "tap0", "mode", "tap"]);
    assert!(out.status.success(), "{out:?}");
    for net in ["tap0", "auto"] {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_herd"), "--home"])
            .arg(herd.home.path())
            .args(["run", "probe-app", "--net", net, "--ip", "10.0.0.2/24"])
            .args(["--gateway", "10.0.0.1"])
            .env("HERD_VMM", &herd.vmm)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "--net {net}: {stdout}{stderr}");
        let cmdline = stdout
            .lines()
            .find_map(|l| l.strip_prefix("probe: cmdline="))
            .unwrap();
        assert_eq!(
            cmdline.matches("virtio_mmio.device=").count(),
            2,
            "{cmdline}"
        );
    }
    let links = String::from_utf8_lossy(&ns.ip(&["-o", "link"]).stdout).into_owned();
    assert!(links.contains("tap0"), "{links}");
    assert!(
        !links.contains("herd0"),
        "the automatic TAP is gone: {links}"
    );
}

/// Hardware KVM only: skipped (with a message) where Linux user space cannot start (PVM).
fn hardware_kvm(test: &str) -> bool {
    if Path::new("/sys/module/kvm_pvm").exists() {
        println!(
            "{test}: skipped on PVM: Linux user space cannot start under its instruction emulator"
        );
        return false;
    }
    true
}

fn target_bin(name: &str) -> PathBuf {
    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join(name);
    assert!(
        bin.is_file(),
        "{} missing: cargo build --workspace --bins",
        bin.display()
    );
    bin
}

#[test]
fn ext4_rootfs_image_boots_its_app_from_virtio_blk() {
    let Some((herd, _)) = fresh_store() else {
        return;
    };
    if !hardware_kvm("ext4_rootfs_image_boots_its_app_from_virtio_blk") {
        return;
    }
    let kernel = linux_kernel().expect("guest kernel not built: run guest-kernel/build.sh");
    let hello = target_bin("hello");
    herd.ok(&[
        "build",
        "--binary",
        hello.to_str().unwrap(),
        "--name",
        "hello",
        "--version",
        "1",
    ]
    .into_iter()
    .chain(["--rootfs", "ext4", "--kernel", kernel.to_str().unwrap()])
    .collect::<Vec<_>>());
    let out = herd.cmd(&[
        "run",
        "hello:1",
        "--env",
        "EXIT_STATUS=42",
        "--",
        "from-disk",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(42), "{stdout}");
    assert!(stdout.contains("arg 0 from-disk"), "{stdout}");
}

#[test]
fn http_app_answers_curl_over_virtio_net_in_a_namespace() {
    let Some((herd, _)) = fresh_store() else {
        return;
    };
    if !hardware_kvm("http_app_answers_curl_over_virtio_net_in_a_namespace") {
        return;
    }
    let Some(ns) = Netns::create("http") else {
        return;
    };
    let kernel = linux_kernel().expect("guest kernel not built: run guest-kernel/build.sh");
    let http = target_bin("http");
    let k = kernel.to_str().unwrap();
    herd.ok(&[
        "build",
        "--binary",
        http.to_str().unwrap(),
        "--name",
        "http",
        "--version",
        "1",
        "--kernel",
        k,
    ]);
    let mut vm = Command::new("ip")
        .args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_herd"), "--home"])
        .arg(herd.home.path())
        .args([
            "run",
            "http:1",
            "--net",
            "auto",
            "--ip",
            "10.0.2.2/24",
            "--gateway",
            "10.0.2.1",
        ])
        .args(["--env", "PORT=8080"])
        .env("HERD_VMM", &herd.vmm)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut body = String::new();
    for _ in 0..100 {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                "curl",
                "-sf",
                "--max-time",
                "1",
                "http://10.0.2.2:8080/healthz",
            ])
            .output()
            .unwrap();
        body = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = Command::new("kill")
        .args(["-s", "TERM", &vm.id().to_string()])
        .status();
    let _ = vm.wait();
    assert_eq!(
        body, "ok\n",
        "the http app answered /healthz from inside the guest"
    );
}
