//! End-to-end: snapshot starts through the real agent and herd-vmm, jailed, with the probe
//! guest serving vsock health checks (`probe.end=serve`). The first instance boots and, once
//! healthy, is snapshotted; scale-ups and replacements are restored from the snapshot, each
//! with its own identity; a snapshot herd-vmm refuses is dropped without a crash loop; and the
//! snapshot goes with its image.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Agent, kill_pid, pid_of, service};
use serde_json::{Value, json};

/// The probe stays up and answers on vsock port 5000: `health`, `id`, `count`.
const SERVE: &str = "console=ttyS0 probe.end=serve";

fn snapshot_service(name: &str, image: &str, replicas: u32) -> Value {
    let mut spec = service(name, image, replicas);
    spec["health_check"] = json!({"vsock": {"port": 5000}, "interval_ms": 200,
        "timeout_ms": 150, "failure_threshold": 2, "grace_ms": 10000});
    spec["snapshot_starts"] = json!(true);
    spec
}

fn id_of(instance: &Value) -> String {
    instance["id"].as_str().unwrap().to_owned()
}

/// Sends `line` to the guest of instance `id` on vsock port 5000 (through its herd-vmm's
/// socket, Firecracker's `CONNECT` convention) and returns the answer line.
fn ask(agent: &Agent, id: &str, line: &str) -> String {
    let socket = agent.instance_dirs().join(id).join("vsock.sock");
    let stream = UnixStream::connect(&socket).unwrap_or_else(|e| panic!("{id}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    w.write_all(b"CONNECT 5000\n").unwrap();
    let mut answer = String::new();
    reader.read_line(&mut answer).unwrap();
    assert!(answer.starts_with("OK "), "{id}: {answer:?}");
    w.write_all(format!("{line}\n").as_bytes()).unwrap();
    answer.clear();
    reader.read_line(&mut answer).unwrap();
    answer.trim_end().to_owned()
}

/// The guest's tick counter (`count` answers `count=N`).
fn count(agent: &Agent, id: &str) -> u64 {
    let answer = ask(agent, id, "count");
    let n = answer
        .strip_prefix("count=")
        .unwrap_or_else(|| panic!("{answer:?}"));
    n.parse().unwrap()
}

/// One request on the control socket of instance `id`'s herd-vmm; its JSON reply.
fn vmm_control(agent: &Agent, id: &str, action: &str) -> Value {
    let socket = agent.instance_dirs().join(id).join("api.sock");
    let stream = UnixStream::connect(&socket).unwrap_or_else(|e| panic!("{id}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    w.write_all(format!("{{\"action\":\"{action}\"}}\n").as_bytes())
        .unwrap();
    let mut reply = String::new();
    reader.read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"))
}

fn ids_of(instances: &[Value]) -> Vec<String> {
    instances.iter().map(id_of).collect()
}

fn service_info(agent: &Agent, name: &str) -> Value {
    let (status, info) = agent.api("GET", &format!("/v1/services/{name}"), None);
    assert_eq!(status, 200, "{info}");
    info
}

fn healthy(agent: &Agent, name: &str) -> Vec<Value> {
    (agent.running(name).into_iter())
        .filter(|i| i["status"] == "healthy")
        .collect()
}

/// The agent's snapshots of the image `digest` (directories under its state).
fn snapshot_dirs(agent: &Agent, digest: &str) -> Vec<PathBuf> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let dir = agent.home.path().join("agent/snapshots").join(hex);
    let Ok(list) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    list.map(|e| e.unwrap().path()).collect()
}

/// The body of a streamed (chunked) answer, read to its end.
fn dechunk(body: &str) -> String {
    let mut out = Vec::new();
    let mut rest = body.as_bytes();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size");
        let size = std::str::from_utf8(&rest[..line_end]).unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or_else(|_| panic!("{body:?}"));
        if n == 0 {
            return String::from_utf8(out).unwrap();
        }
        let data = &rest[line_end + 2..];
        out.extend_from_slice(&data[..n]);
        rest = &data[n + 2..];
    }
}

/// The events the agent keeps.
fn events(agent: &Agent) -> Vec<Value> {
    let answer = agent.request("GET", "/v1/events", None, b"");
    (dechunk(&answer.body).lines())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn console(agent: &Agent, id: &str) -> String {
    let path = format!("/v1/instances/{id}/logs");
    dechunk(&agent.request("GET", &path, None, b"").body)
}

fn metric(agent: &Agent, sample: &str) -> f64 {
    let text = agent.request("GET", "/metrics", None, b"").body;
    let line = text.lines().find(|l| l.starts_with(sample));
    let value = line.and_then(|l| l.rsplit(' ').next());
    value
        .unwrap_or_else(|| panic!("{sample} in\n{text}"))
        .parse()
        .unwrap()
}

/// Prints how long each instance took from its herd-vmm's start to its first passed check,
/// by how it started (for the record; the benchmark measures it properly).
fn print_start_to_healthy(agent: &Agent) {
    let all = events(agent);
    for started in all.iter().filter(|e| e["type"] == "instance_started") {
        let healthy = all
            .iter()
            .find(|e| e["type"] == "instance_healthy" && e["instance"] == started["instance"]);
        if let Some(healthy) = healthy {
            let ms = healthy["time_ms"].as_u64().unwrap() - started["time_ms"].as_u64().unwrap();
            println!(
                "{} ({}): healthy {ms} ms after its start",
                started["instance"], started["start"]
            );
        }
    }
}

/// The identity file a restored instance was started with.
fn identity_file(agent: &Agent, id: &str) -> Value {
    let path = agent.instance_dirs().join(id).join("identity.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// The MAC address the herd-vmm with process id `pid` offers its guest (its `--net` value's
/// `mac=`).
fn booted_mac(pid: i32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let at = args.iter().position(|a| *a == b"--net").expect("a --net");
    let net = String::from_utf8_lossy(args[at + 1]).into_owned();
    let (_, mac) = net.split_once(",mac=").expect("a mac= in --net");
    mac.to_owned()
}

/// Waits for the service to have `n` healthy instances, `fresh` of them not in `before`,
/// and returns those. Both counts, because right after a kill the agent may not have noticed
/// yet and still count the killed instances as healthy.
fn new_healthy(agent: &Agent, name: &str, n: usize, before: &[String], fresh: usize) -> Vec<Value> {
    let new_ones = || -> Vec<Value> {
        (healthy(agent, name).into_iter())
            .filter(|i| !before.contains(&id_of(i)))
            .collect()
    };
    agent.wait_for(&format!("{n} healthy instances, {fresh} new"), || {
        healthy(agent, name).len() == n && new_ones().len() == fresh
    });
    new_ones()
}

/// A restored instance: its record says so, its console has the probe's restore line with
/// its own id and no boot report, and its guest answers with its own id and runs on.
fn assert_restored(agent: &Agent, instance: &Value) {
    let id = id_of(instance);
    assert_eq!(instance["start"], "snapshot", "{instance}");
    assert!(instance["boot_time_ms"].is_null(), "{instance}");
    // The probe reports the restore on its console while it already serves.
    let line = format!("probe: restored id={id} generation=");
    agent.wait_for("the probe's restore line", || {
        let log = console(agent, &id);
        log.lines().any(|l| l.starts_with(&line)) && log.ends_with('\n')
    });
    let log = console(agent, &id);
    assert!(!log.contains("probe: boot="), "{id} booted: {log}");
    assert_eq!(ask(agent, &id, "id"), format!("id={id}"));
    let first = count(agent, &id);
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(agent, &id) <= first {
        assert!(
            Instant::now() < deadline,
            "{id}: the guest's clock stands still"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn instances_start_from_a_snapshot_of_the_first_healthy_one_which_goes_with_its_image() {
    let Some(agent) = Agent::new("agent snapshot tests") else {
        return;
    };
    let image = agent.probe_image("1", SERVE);
    let (status, created) = agent.api(
        "POST",
        "/v1/services",
        Some(&snapshot_service("web", &image, 1)),
    );
    assert_eq!(status, 201, "{created}");
    let digest = created["digest"].as_str().unwrap().to_owned();
    agent.wait_for("the snapshot", || {
        service_info(&agent, "web")["snapshot"]["state"] == "ready"
    });
    let source = healthy(&agent, "web").remove(0);
    assert_eq!(source["start"], "boot");
    let info = service_info(&agent, "web");
    assert_eq!(info["snapshot"]["source_instance"], source["id"], "{info}");
    assert_eq!(snapshot_dirs(&agent, &digest).len(), 1);
    let taken: Vec<Value> = (events(&agent).into_iter())
        .filter(|e| e["type"] == "snapshot_taken")
        .collect();
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert_eq!(taken[0]["instance"], source["id"]);
    let (paused, total) = (
        taken[0]["paused_ms"].as_u64(),
        taken[0]["duration_ms"].as_u64(),
    );
    assert!(paused <= total, "{}", taken[0]);
    println!("snapshot: paused {paused:?} ms, installed after {total:?} ms");
    // The source was paused and resumed: it still serves, and says who it is.
    assert_eq!(
        ask(&agent, &id_of(&source), "id"),
        format!("id={}", id_of(&source))
    );

    // Scale-up: restored, each its own identity.
    let (status, scaled) = agent.api(
        "POST",
        "/v1/services/web/scale",
        Some(&json!({"replicas": 3})),
    );
    assert_eq!(status, 200, "{scaled}");
    let added = new_healthy(&agent, "web", 3, &[id_of(&source)], 2);
    assert_eq!(added.len(), 2);
    for instance in &added {
        assert_restored(&agent, instance);
    }
    let generations: Vec<String> = (added.iter())
        .map(|i| {
            let log = console(&agent, &id_of(i));
            let at = log.find("generation=").expect("a generation id");
            log[at..].split_whitespace().next().unwrap().to_owned()
        })
        .collect();
    assert_ne!(
        generations[0], generations[1],
        "each restore is a new generation"
    );
    let addresses: Vec<&str> = (added.iter())
        .map(|i| i["address"].as_str().unwrap())
        .chain([source["address"].as_str().unwrap()])
        .collect();
    let mut distinct = addresses.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{addresses:?}");
    // Each its own MAC address too: the booted one's device offers it, the clones (whose
    // devices keep the snapshot's) are told theirs in the identity file for herd-init.
    let mut macs: Vec<String> = (added.iter())
        .map(|i| {
            identity_file(&agent, &id_of(i))["mac"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .chain([booted_mac(pid_of(&source))])
        .collect();
    macs.sort();
    macs.dedup();
    assert_eq!(macs.len(), 3, "{macs:?}");

    // Replacements of a restored instance and of the booted one: restored too.
    let before: Vec<String> = healthy(&agent, "web").iter().map(id_of).collect();
    assert!(kill_pid(pid_of(&added[0])));
    assert!(kill_pid(pid_of(&source)));
    let replacements = new_healthy(&agent, "web", 3, &before, 2);
    assert_eq!(replacements.len(), 2, "{replacements:?}");
    for instance in &replacements {
        assert_restored(&agent, instance);
    }
    assert_eq!(
        snapshot_dirs(&agent, &digest).len(),
        1,
        "still the one snapshot"
    );
    print_start_to_healthy(&agent);
    assert!(metric(&agent, "herd_instance_starts_total{kind=\"snapshot\"}") >= 4.0);
    assert_eq!(
        metric(&agent, "herd_instance_starts_total{kind=\"boot\"}"),
        1.0
    );
    assert_eq!(metric(&agent, "herd_snapshots "), 1.0);

    // The image goes, and its snapshot with it.
    let (status, _) = agent.api("DELETE", "/v1/services/web", None);
    assert!(status < 300, "{status}");
    agent.wait_for("every instance to end", || agent.running("web").is_empty());
    let (status, removed) = agent.api("DELETE", &format!("/v1/images/{image}"), None);
    assert_eq!(status, 200, "{removed}");
    agent.wait_for("the snapshot to go", || {
        snapshot_dirs(&agent, &digest).is_empty()
    });
    // The gauge follows once the supervisor has published the removal.
    agent.wait_for("the snapshot gauge to drop", || {
        metric(&agent, "herd_snapshots ") == 0.0
    });
}

#[test]
fn a_snapshot_herd_vmm_refuses_is_dropped_the_replacement_boots_and_a_new_one_is_taken() {
    let Some(mut agent) = Agent::new("agent snapshot tests") else {
        return;
    };
    let image = agent.probe_image("1", SERVE);
    let (_, created) = agent.api(
        "POST",
        "/v1/services",
        Some(&snapshot_service("web", &image, 1)),
    );
    let digest = created["digest"].as_str().unwrap().to_owned();
    agent.wait_for("the snapshot", || {
        service_info(&agent, "web")["snapshot"]["state"] == "ready"
    });
    // A restart keeps it: the agent finds it in its state directory. An agent killed while
    // an instance was paused for a snapshot (here: paused by hand) resumes it on adoption.
    let source = id_of(&healthy(&agent, "web")[0]);
    assert_eq!(vmm_control(&agent, &source, "pause")["state"], "paused");
    agent.kill_agent();
    agent.start();
    assert_eq!(service_info(&agent, "web")["snapshot"]["state"], "ready");
    agent.wait_for("the paused instance to be resumed", || {
        vmm_control(&agent, &source, "status")["state"] == "running"
    });
    // Corrupt it: herd-vmm checks the state file's checksum and refuses to restore.
    let dir = snapshot_dirs(&agent, &digest).remove(0);
    let state = dir.join("state");
    let mut bytes = std::fs::read(&state).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::remove_file(&state).unwrap();
    std::fs::write(&state, bytes).unwrap();
    let running = agent.running("web");
    assert_eq!(
        ids_of(&running),
        std::slice::from_ref(&source),
        "{}",
        agent.log()
    );
    agent.api(
        "POST",
        "/v1/services/web/scale",
        Some(&json!({"replicas": 2})),
    );
    agent.wait_for("the snapshot to be dropped", || {
        events(&agent)
            .iter()
            .any(|e| e["type"] == "snapshot_removed")
    });
    // The replacement boots; the service neither backs off nor counts a crash loop.
    let added = new_healthy(&agent, "web", 2, std::slice::from_ref(&source), 1);
    assert_eq!(added.len(), 1);
    assert_eq!(added[0]["start"], "boot", "{}", added[0]);
    let info = service_info(&agent, "web");
    let all: Vec<String> = events(&agent).iter().map(|e| e.to_string()).collect();
    assert_eq!(
        info["crash_looping"],
        false,
        "{info}\n{}\n{}",
        all.join("\n"),
        agent.log()
    );
    assert!(info["backoff_until_ms"].is_null(), "{info}");
    assert_eq!(
        metric(&agent, "herd_snapshot_failures_total{stage=\"restore\"}"),
        1.0
    );
    // After the retry delay a new snapshot is taken of a healthy booted instance.
    agent.wait_for("a new snapshot", || {
        service_info(&agent, "web")["snapshot"]["state"] == "ready"
    });
    let info = service_info(&agent, "web");
    assert_eq!(info["snapshot"]["failures"], 1, "{info}");
    let before: Vec<String> = healthy(&agent, "web").iter().map(id_of).collect();
    agent.api(
        "POST",
        "/v1/services/web/scale",
        Some(&json!({"replicas": 3})),
    );
    let added = new_healthy(&agent, "web", 3, &before, 1);
    assert_restored(&agent, &added[0]);
}
