//! Snapshot-starts benchmark: how fast the agent replaces a killed instance when the service
//! starts instances from a snapshot, against the same service booting them. Runs the real
//! `herd agent` (release build next to this binary, jailed instances) in a network namespace
//! of its own with a probe-guest image serving vsock health checks, and for each kind:
//! SIGKILLs one instance's herd-vmm N times and measures, from the kill, the replacement's
//! start (`instance_started`) and its first passed health check (`instance_healthy`), both
//! from the agent's event stream (millisecond clock).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use herd_benches::agent::{Agent, api, build_probe_image, instances, unix_ms, wait};
use herd_benches::stats::{Summary, summarize};
use serde::Serialize;
use serde_json::{Value, json};

/// Measure replacement latency through the agent, snapshot starts against cold boots.
#[derive(Debug, Parser)]
struct Args {
    /// Kills to measure per kind.
    #[arg(long, default_value_t = 30)]
    kills: usize,
    /// Run the agent with `--no-jail` (to see what the jail costs).
    #[arg(long)]
    no_jail: bool,
}

/// The body of a chunked HTTP answer.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// The agent's kept events.
fn events(socket: &Path) -> anyhow::Result<Vec<Value>> {
    let mut s = UnixStream::connect(socket)?;
    s.write_all(b"GET /v1/events HTTP/1.1\r\nHost: herd\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").context("no HTTP answer")?;
    let body = if head.contains("chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(body
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

fn event_time(all: &[Value], instance: &str, kind: &str) -> Option<u64> {
    all.iter()
        .find(|e| e["instance"] == instance && e["type"] == kind)
        .and_then(|e| e["time_ms"].as_u64())
}

fn healthy(socket: &Path, service: &str) -> anyhow::Result<Vec<Value>> {
    let mut all = instances(socket, service)?;
    all.retain(|i| i["status"] == "healthy");
    Ok(all)
}

/// Kills an instance of `service` `kills` times; ms from each kill to the replacement's start
/// and to its first passed health check, and what each replacement started from.
fn replacements(
    socket: &Path,
    service: &str,
    replicas: usize,
    kills: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>, Vec<String>)> {
    let (mut started, mut ready, mut kinds) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..kills {
        let before = healthy(socket, service)?;
        let victim = before.first().context("no healthy instance")?;
        let known: Vec<Value> = before.iter().map(|i| i["id"].clone()).collect();
        let pid = victim["pid"].as_i64().context("no pid")? as i32;
        let killed_at = unix_ms();
        herd_benches::sys::kill9(pid)?;
        let mut fresh = None;
        wait(Duration::from_secs(30), || {
            let now = healthy(socket, service)?;
            fresh = now.iter().find(|i| !known.contains(&i["id"])).cloned();
            Ok(fresh.is_some() && now.len() == replicas)
        })?;
        let fresh = fresh.expect("found");
        let id = fresh["id"].as_str().context("no id")?;
        let all = events(socket)?;
        let start = event_time(&all, id, "instance_started").context("no start event")?;
        let ok = event_time(&all, id, "instance_healthy").context("no healthy event")?;
        started.push(start.saturating_sub(killed_at) as f64);
        ready.push(ok.saturating_sub(killed_at) as f64);
        kinds.push(fresh["start"].as_str().unwrap_or("?").to_owned());
    }
    Ok((started, ready, kinds))
}

#[derive(Debug, Serialize)]
struct KindResult {
    bench: &'static str,
    kind: &'static str,
    kills: usize,
    restored: usize,
    kill_to_started_ms: Summary,
    kill_to_healthy_ms: Summary,
}

fn measure(
    socket: &Path,
    image: &str,
    kind: &'static str,
    kills: usize,
) -> anyhow::Result<KindResult> {
    let snapshots = kind == "snapshot";
    let spec = json!({"name": kind, "image": image, "replicas": 2, "network": "none",
        "stop_timeout_ms": 200, "restart": {"initial_ms": 1, "max_ms": 1},
        "snapshot_starts": snapshots,
        "health_check": {"vsock": {"port": 5000}, "interval_ms": 200, "timeout_ms": 150,
            "failure_threshold": 2, "grace_ms": 10000}});
    api(socket, "POST", "/v1/services", Some(&spec))?;
    wait(Duration::from_secs(60), || {
        Ok(healthy(socket, kind)?.len() == 2)
    })
    .with_context(|| format!("2 healthy {kind} instances"))?;
    if snapshots {
        wait(Duration::from_secs(60), || {
            let s = api(socket, "GET", &format!("/v1/services/{kind}"), None)?;
            Ok(s["snapshot"]["state"] == "ready")
        })
        .context("a snapshot")?;
    }
    let (started, ready, kinds) = replacements(socket, kind, 2, kills)?;
    let restored = kinds.iter().filter(|k| *k == "snapshot").count();
    if snapshots && restored == 0 {
        bail!("no replacement started from the snapshot: {kinds:?}");
    }
    api(socket, "DELETE", &format!("/v1/services/{kind}"), None)?;
    Ok(KindResult {
        bench: "snapshot-starts",
        kind,
        kills,
        restored,
        kill_to_started_ms: summarize(&started).context("no samples")?,
        kill_to_healthy_ms: summarize(&ready).context("no samples")?,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin: PathBuf = std::env::current_exe()?
        .parent()
        .context("no directory")?
        .to_owned();
    let extra: &[&str] = if args.no_jail { &["--no-jail"] } else { &[] };
    let agent = Agent::start(&bin, &bin.join("herd-vmm"), extra)?;
    let socket = agent.socket();
    let image = build_probe_image(&bin, agent.home.path(), "1", "probe.end=serve")?;
    let mut results = Vec::new();
    for kind in ["boot", "snapshot"] {
        let r = measure(&socket, &image, kind, args.kills)?;
        eprintln!(
            "{kind:<8} ({} kills, {} restored)   p50      p90      p99      max",
            r.kills, r.restored
        );
        for (name, m) in [
            ("kill -> started", &r.kill_to_started_ms),
            ("kill -> healthy", &r.kill_to_healthy_ms),
        ] {
            eprintln!(
                "  {name:<22} {:>8.1} {:>8.1} {:>8.1} {:>8.1} ms",
                m.p50, m.p90, m.p99, m.max
            );
        }
        println!("{}", serde_json::to_string(&r)?);
        results.push(r);
    }
    let snap = &results[1].kill_to_healthy_ms;
    eprintln!(
        "  target replacement from a snapshot p50 < 20 ms (kill to healthy): {}",
        if snap.p50 < 20.0 { "met" } else { "MISSED" }
    );
    Ok(())
}
