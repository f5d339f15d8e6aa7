//! End-to-end: the probe guest as a long-running app (`probe.end=serve`) through the real
//! herd-vmm, booted the way the agent boots an instance: a vsock device, `--stop-grace`, and
//! an initrd holding `herd/image.json` and `herd/instance.json` whose `env` tells the probe
//! how to behave. Health checks use the agent's protocol: `CONNECT <port>\n` on herd-vmm's
//! socket, `OK <n>\n`, then `health\n`, answered `ok\n` or `fail\n` before the guest closes
//! the stream. Checked: the answers each `PROBE_HEALTH` asks for, `PROBE_EXIT_AFTER`, a
//! graceful stop on SIGTERM, that an idle serving probe does not busy-poll the host CPU, and
//! the `count` and `id` requests (which are not health checks).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use herd_tests::vm::{Running, TestVm, kvm_available};

macro_rules! require_kvm {
    ($name:expr) => {
        if !kvm_available($name) {
            return;
        }
    };
}

/// The emulated probe is slow: give every socket read plenty of time.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// herd-vmm's grace period for the guest to stop on SIGTERM.
const STOP_GRACE_MS: u64 = 5000;

/// A newc cpio archive of regular files, as the agent appends an instance's configuration.
fn newc(files: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files.iter().chain([&("TRAILER!!!", "")]) {
        let fields = [
            0,
            0o100644,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(data.as_bytes());
        out.resize(out.len().next_multiple_of(4), 0);
    }
    out
}

/// `{"K":"V",...}` for simple names and values.
fn env_json(env: &[(&str, &str)]) -> String {
    let members: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("\"{k}\":\"{v}\""))
        .collect();
    format!("{{{}}}", members.join(","))
}

/// A serving instance: its socket, and herd-vmm running (the temporary directory with them).
struct Instance {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    vm: Running,
}

/// Boots the probe's PVH ELF with `probe.end=serve exit=<exit> <words>`, the image's and the
/// instance's `env` in its initrd, and waits until it serves.
fn serve(exit: u8, words: &str, image_env: &[(&str, &str)], env: &[(&str, &str)]) -> Instance {
    serve_image(TestVm::probe_pvh(), exit, words, image_env, env)
}

/// As [`serve`], booting `probe` (one of the probe's images).
fn serve_image(
    probe: TestVm,
    exit: u8,
    words: &str,
    image_env: &[(&str, &str)],
    env: &[(&str, &str)],
) -> Instance {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let image = format!(
        r#"{{"entrypoint":["/probe"],"env":{}}}"#,
        env_json(image_env)
    );
    let instance = format!(
        r#"{{"instance_id":"i-1","hostname":"probe","env":{},"args":["PROBE_HEALTH"]}}"#,
        env_json(env)
    );
    let initrd = dir.path().join("initrd.cpio");
    let files = [
        ("herd/image.json", &*image),
        ("herd/instance.json", &*instance),
    ];
    std::fs::write(&initrd, newc(&files)).unwrap();
    let mut vm = probe
        .cmdline(&format!("probe.end=serve exit={exit} {words}"))
        .args(["--vsock", &format!("3,{}", uds.display())])
        .args(["--initrd".as_ref(), initrd.as_os_str()])
        .args(["--stop-grace", &STOP_GRACE_MS.to_string()])
        .timeout(Duration::from_secs(60))
        .spawn();
    vm.wait_for_line("probe: serve port=");
    Instance { _dir: dir, uds, vm }
}

/// One health check as the agent makes it; the answer line, or `None` if the stream was
/// closed before `OK`. The guest closes the stream after answering.
fn check(uds: &Path, port: u32) -> Option<String> {
    ask(uds, port, "health")
}

/// Sends one `request` line on a new stream as [`check`] does; the answer line.
fn ask(uds: &Path, port: u32, request: &str) -> Option<String> {
    let mut s = UnixStream::connect(uds).expect("connect to the vsock socket");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).expect("handshake reply");
    if line.is_empty() {
        return None;
    }
    assert!(line.starts_with("OK "), "handshake: {line:?}");
    s.write_all(format!("{request}\n").as_bytes()).unwrap();
    line.clear();
    r.read_line(&mut line).expect("answer");
    let mut rest = Vec::new();
    r.read_to_end(&mut rest)
        .expect("the guest closes the stream");
    assert!(rest.is_empty(), "nothing after the answer: {rest:?}");
    Some(line)
}

fn answers(uds: &Path, port: u32, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| check(uds, port).expect("accepted"))
        .collect()
}

/// SIGTERM with a grace period: the probe must stop on the control request, well in time.
fn stop(vm: Running) -> herd_tests::vm::Finished {
    let asked = Instant::now();
    vm.signal("TERM");
    let done = vm.wait();
    assert!(
        asked.elapsed() < Duration::from_millis(STOP_GRACE_MS / 2),
        "not stopped well within the grace period: {:?}, {done:#?}",
        asked.elapsed()
    );
    done
}

#[test]
fn a_healthy_probe_answers_ok_to_every_check_in_a_row() {
    require_kvm!("a_healthy_probe_answers_ok_to_every_check_in_a_row");
    let i = serve(3, "", &[], &[("OTHER", "x")]);
    assert_eq!(answers(&i.uds, 5000, 5), ["ok\n"; 5]);
    let done = stop(i.vm);
    assert_eq!(done.code(), 3, "{done:#?}");
    assert_eq!(done.probe_value("serve port"), Some("5000"));
    assert_eq!(done.probe_value("serve checks"), Some("5"), "{done:#?}");
}

#[test]
fn probe_health_fail_fails_every_check_on_the_configured_port() {
    require_kvm!("probe_health_fail_fails_every_check_on_the_configured_port");
    let i = serve(0, "probe.serve.port=6000", &[], &[("PROBE_HEALTH", "fail")]);
    assert_eq!(answers(&i.uds, 6000, 2), ["fail\n"; 2]);
    assert_eq!(check(&i.uds, 5000), None, "no one serves port 5000");
    let done = stop(i.vm);
    assert_eq!(done.code(), 0, "{done:#?}");
    assert_eq!(done.probe_value("serve checks"), Some("2"), "{done:#?}");
}

#[test]
fn fail_after_two_passes_two_checks_then_fails() {
    require_kvm!("fail_after_two_passes_two_checks_then_fails");
    let i = serve(0, "", &[], &[("PROBE_HEALTH", "fail-after:2")]);
    assert_eq!(
        answers(&i.uds, 5000, 4),
        ["ok\n", "ok\n", "fail\n", "fail\n"]
    );
    let done = stop(i.vm);
    assert_eq!(done.code(), 0, "{done:#?}");
}

#[test]
fn exit_after_three_checks_ends_herd_vmm_with_the_probe_status_and_instance_env_wins() {
    require_kvm!(
        "exit_after_three_checks_ends_herd_vmm_with_the_probe_status_and_instance_env_wins"
    );
    let image_env = [("PROBE_HEALTH", "fail"), ("PROBE_EXIT_AFTER", "3")];
    let i = serve(17, "", &image_env, &[("PROBE_HEALTH", "ok")]);
    assert_eq!(answers(&i.uds, 5000, 3), ["ok\n"; 3]);
    let done = i.vm.wait();
    assert_eq!(done.code(), 17, "{done:#?}");
    assert_eq!(done.probe_value("serve checks"), Some("3"), "{done:#?}");
    assert_eq!(done.probe_value("control"), None, "not stopped by the host");
    assert!(!i.uds.exists(), "herd-vmm removed its socket on exit");
}

#[test]
fn sigterm_stops_a_serving_probe_through_the_control_port_within_the_grace_period() {
    require_kvm!("sigterm_stops_a_serving_probe_through_the_control_port_within_the_grace_period");
    // The bzImage, entered in long mode on herd-vmm's GDT: the timer's gate uses its CS.
    let i = serve_image(TestVm::probe_bzimage(), 21, "", &[], &[]);
    assert_eq!(check(&i.uds, 5000).as_deref(), Some("ok\n"));
    let done = stop(i.vm);
    assert_eq!(done.code(), 21, "the guest ended the VM itself: {done:#?}");
    assert_eq!(done.probe_value("control"), Some("stop"), "{done:#?}");
    let lines = done.probe_lines();
    let at = |prefix: &str| lines.iter().position(|l| l.starts_with(prefix));
    assert!(at("control=") < at("serve checks=1"), "{done:#?}");
    assert!(at("serve checks=1") < at("done exit=21"), "{done:#?}");
}

#[test]
fn count_follows_the_timer_and_id_is_the_instance_id_and_neither_is_a_check() {
    require_kvm!("count_follows_the_timer_and_id_is_the_instance_id_and_neither_is_a_check");
    let i = serve(4, "", &[], &[("PROBE_EXIT_AFTER", "1")]);
    let count = || {
        let line = ask(&i.uds, 5000, "count").expect("accepted");
        let n = line
            .strip_prefix("count=")
            .and_then(|n| n.trim_end().parse::<u64>().ok());
        n.unwrap_or_else(|| panic!("count answer {line:?}"))
    };
    let first = count();
    std::thread::sleep(Duration::from_millis(500));
    let second = count();
    // 10 ms ticks: about 50 in 500 ms; far fewer only if the host starved the VM.
    assert!(second >= first + 5, "ticks {first} then {second}");
    assert_eq!(ask(&i.uds, 5000, "id").as_deref(), Some("id=i-1\n"));
    assert_eq!(check(&i.uds, 5000).as_deref(), Some("ok\n"));
    let done = i.vm.wait();
    assert_eq!(done.code(), 4, "the first health check ended it: {done:#?}");
    assert_eq!(done.probe_value("serve checks"), Some("1"), "{done:#?}");
}

/// utime + stime of `pid` in clock ticks (`/proc/PID/stat` fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> u64 {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK")
}

#[test]
fn an_idle_serving_probe_leaves_the_host_cpu_mostly_idle() {
    require_kvm!("an_idle_serving_probe_leaves_the_host_cpu_mostly_idle");
    let i = serve(0, "", &[], &[]);
    assert_eq!(check(&i.uds, 5000).as_deref(), Some("ok\n"));
    let hz = clock_ticks_per_second();
    let (t0, w0) = (cpu_ticks(i.vm.pid()), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let (t1, wall) = (cpu_ticks(i.vm.pid()), w0.elapsed());
    let cpu = Duration::from_millis((t1 - t0) * 1000 / hz);
    // A busy-polling guest keeps a vCPU thread at 100%: half of the wall time is far from
    // both that and the few milliseconds the timer ticks cost.
    assert!(
        cpu < wall / 2,
        "herd-vmm used {cpu:?} of CPU in {wall:?} idle"
    );
    println!("idle: herd-vmm used {cpu:?} of CPU in {wall:?}");
    assert_eq!(
        check(&i.uds, 5000).as_deref(),
        Some("ok\n"),
        "still serving"
    );
    let done = stop(i.vm);
    assert_eq!(done.code(), 0, "{done:#?}");
}
