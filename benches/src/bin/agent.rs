//! Agent benchmark: how fast the fleet heals and answers. Runs the real `herd agent` (release
//! build, next to this binary) in a network namespace of its own with probe-guest instances
//! (they halt and stay up, so this works on PVM too) and measures:
//! - replacement latency: SIGKILL of an instance's herd-vmm to the replacement's guest
//!   signalling boot-complete (its start time plus the boot time herd-vmm logged);
//! - API latency: `GET /v1/instances` from many concurrent clients;
//! - a rolling update of N instances to a new image, to the last old instance gone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use herd_benches::agent::{Agent, api, build_probe_image, instances, unix_ms, wait};
use herd_benches::stats::summarize;
use serde_json::{Value, json};

/// Measure the agent's replacement latency, API latency and rolling update time.
#[derive(Debug, Parser)]
struct Args {
    /// Kills to measure.
    #[arg(long, default_value_t = 50)]
    kills: usize,
    /// Concurrent API clients.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Requests per client.
    #[arg(long, default_value_t = 20)]
    requests: usize,
    /// Instances in the rolling update.
    #[arg(long, default_value_t = 10)]
    rollout: u32,
}

fn running(socket: &Path) -> anyhow::Result<Vec<Value>> {
    let mut all = instances(socket, "web")?;
    all.retain(|i| i["status"] == "healthy");
    Ok(all)
}

/// Kills one instance `kills` times; returns ms from kill to the replacement's boot signal,
/// and from kill to herd-vmm of the replacement started.
fn replacements(socket: &Path, kills: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut latencies, mut starts) = (Vec::new(), Vec::new());
    for _ in 0..kills {
        let before = running(socket)?;
        let victim = before.first().context("no instance")?;
        let known: Vec<Value> = before.iter().map(|i| i["id"].clone()).collect();
        let killed_at = unix_ms();
        let pid = victim["pid"].as_i64().context("no pid")? as i32;
        herd_benches::sys::kill9(pid)?;
        let mut fresh = None;
        wait(Duration::from_secs(30), || {
            fresh = running(socket)?
                .into_iter()
                .find(|i| !known.contains(&i["id"]) && i["boot_time_ms"].is_u64());
            Ok(fresh.is_some())
        })?;
        let fresh = fresh.expect("found");
        let started = fresh["started_at_ms"].as_u64().context("no start time")?;
        let boot = fresh["boot_time_ms"].as_u64().context("no boot time")?;
        latencies.push((started + boot).saturating_sub(killed_at) as f64);
        starts.push(started.saturating_sub(killed_at) as f64);
    }
    Ok((latencies, starts))
}

fn api_latency(socket: &Path, clients: usize, requests: usize) -> anyhow::Result<Vec<f64>> {
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let socket = socket.to_owned();
            std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
                let mut out = Vec::new();
                for _ in 0..requests {
                    let t = Instant::now();
                    api(&socket, "GET", "/v1/instances", None)?;
                    out.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                Ok(out)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().map_err(|_| anyhow::anyhow!("client panicked"))??);
    }
    Ok(all)
}

fn rolling_update(socket: &Path, image: &str, n: u32) -> anyhow::Result<f64> {
    let spec = json!({"name": "web", "image": image, "replicas": n, "network": "none",
        "stop_timeout_ms": 200, "rollout": {"max_surge": 2, "max_unavailable": 0}});
    let t = Instant::now();
    api(socket, "PUT", "/v1/services/web", Some(&spec))?;
    wait(Duration::from_secs(120), || {
        let s = api(socket, "GET", "/v1/services/web", None)?;
        let all = api(socket, "GET", "/v1/instances?service=web", None)?;
        let old_running = all
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["generation"] != s["generation"] && i["status"] != "exited");
        Ok(s["rolling_out_from"].is_null() && s["healthy"] == n && !old_running)
    })?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin: PathBuf = std::env::current_exe()?
        .parent()
        .context("no directory")?
        .to_owned();
    let agent = Agent::start(&bin, &bin.join("herd-vmm"), &[])?;
    let home = agent.home.path();
    let socket = agent.socket();
    let v1 = build_probe_image(&bin, home, "1", "probe.end=halt")?;
    // Back-off would (rightly) slow down 50 kills in a row: measure the replacement path itself.
    let spec = json!({"name": "web", "image": v1, "replicas": 3, "network": "none",
        "stop_timeout_ms": 200, "restart": {"initial_ms": 1, "max_ms": 1}});
    api(&socket, "POST", "/v1/services", Some(&spec))?;
    wait(Duration::from_secs(60), || Ok(running(&socket)?.len() == 3))
        .context("3 healthy instances")?;

    let (booted, started) = replacements(&socket, args.kills)?;
    let replace = summarize(&booted).context("no samples")?;
    let start = summarize(&started).context("no samples")?;
    println!(
        "replacement started (kill to new herd-vmm): p50 {:.1} ms  p99 {:.1} ms",
        start.p50, start.p99
    );
    println!(
        "replacement (kill to boot-complete): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  (n={})",
        replace.p50, replace.p99, replace.max, replace.n
    );
    let latency =
        summarize(&api_latency(&socket, args.clients, args.requests)?).context("no samples")?;
    println!(
        "API GET /v1/instances, {} clients: p50 {:.2} ms  p99 {:.2} ms  (n={})",
        args.clients, latency.p50, latency.p99, latency.n
    );
    api(
        &socket,
        "POST",
        "/v1/services/web/scale",
        Some(&json!({"replicas": args.rollout})),
    )?;
    wait(Duration::from_secs(60), || {
        Ok(running(&socket)?.len() == args.rollout as usize)
    })?;
    let v2 = build_probe_image(&bin, home, "2", "probe.end=halt")?;
    let rollout_ms = rolling_update(&socket, &v2, args.rollout)?;
    println!(
        "rolling update of {} instances (max surge 2): {:.0} ms",
        args.rollout, rollout_ms
    );
    let json = json!({"bench": "agent", "replacement_ms": replace, "replacement_start_ms": start, "api_ms": latency,
        "api_clients": args.clients, "rollout_instances": args.rollout, "rollout_ms": rollout_ms});
    println!("{json}");
    Ok(())
}
