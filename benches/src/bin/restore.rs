//! Restore benchmark: how fast a snapshot of a serving probe guest comes back, against a
//! cold boot of the same guest. Boots the probe once (`probe.end=serve`, vsock, control
//! socket), lets it answer a health check, pauses it and snapshots it; then alternates N cold
//! boots and N restores of that snapshot and measures, from spawning herd-vmm:
//! - to running: vCPU 0's first `KVM_RUN` (herd-vmm's debug log);
//! - to the first answered health check (the agent's vsock protocol).
//!
//! Prints percentiles, one JSON line per run and per summary, and writes an SVG of both
//! distributions.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use herd_benches::stats::{Summary, summarize_by};
use herd_benches::svg::{Series, strip_chart};
use herd_benches::sys::monotonic_ns;
use serde::Serialize;

/// Restore a snapshot of the probe guest repeatedly, and cold-boot it, and compare.
#[derive(Debug, Parser)]
struct Args {
    /// Restores (and cold boots) to measure.
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// herd-vmm binary [default: next to this benchmark's binary].
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    memory: u64,
    /// Where to write restore.svg and restore.json.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

/// One start's measurements, in milliseconds from spawn.
#[derive(Debug, Serialize)]
struct Run {
    bench: &'static str,
    kind: &'static str,
    run: usize,
    to_running_ms: f64,
    to_first_health_ms: f64,
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(3);

fn ms(ns: u128) -> f64 {
    ns as f64 / 1e6
}

/// The monotonic time vCPU 0 first ran, from herd-vmm's debug log on `stderr`.
fn first_run_ns(stderr: impl Read) -> Option<u128> {
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if let Some(at) = line.split("monotonic_ns=").nth(1)
            && line.contains("first KVM_RUN")
        {
            return at.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

/// One health check; false while nothing listens yet (no socket, or the guest resets the
/// stream because it does not serve yet).
fn health(uds: &Path) -> bool {
    check(uds).unwrap_or(false)
}

fn check(uds: &Path) -> std::io::Result<bool> {
    let mut s = UnixStream::connect(uds)?;
    // A request made before the guest's driver is up can wait unanswered: give up on it soon
    // and ask again, so the first answer is seen within a few milliseconds of being possible.
    s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    // The host side may only send once the guest accepted (`OK <port>`).
    s.write_all(b"CONNECT 5000\n")?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    if !line.starts_with("OK ") {
        return Ok(false);
    }
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"health\n")?;
    line.clear();
    r.read_line(&mut line)?;
    Ok(line == "ok\n")
}

/// Polls until a health check passes; the monotonic time it did.
fn first_health(uds: &Path) -> anyhow::Result<u128> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if health(uds) {
            return Ok(monotonic_ns());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    bail!("no health answer on {}", uds.display())
}

fn spawn(vmm: &Path, args: &[String]) -> anyhow::Result<Child> {
    Command::new(vmm)
        .args(args)
        .env("HERD_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", vmm.display()))
}

fn boot_args(memory: u64, uds: &Path) -> Vec<String> {
    let kernel = herd_tests::probe::pvh_elf();
    vec![
        "--kernel".into(),
        kernel.display().to_string(),
        "--memory".into(),
        memory.to_string(),
        "--cmdline".into(),
        "probe.end=serve probe.report=off".into(),
        "--vsock".into(),
        format!("3,{}", uds.display()),
    ]
}

/// Starts herd-vmm with `args` and measures it; kills it afterwards.
fn measure(
    vmm: &Path,
    args: &[String],
    uds: &Path,
    kind: &'static str,
    run: usize,
) -> anyhow::Result<Run> {
    let start = monotonic_ns();
    let mut child = spawn(vmm, args)?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || first_run_ns(stderr));
    let healthy = first_health(uds);
    let _ = child.kill();
    let _ = child.wait();
    let ran = reader
        .join()
        .expect("log reader")
        .context("no first KVM_RUN logged")?;
    let _ = std::fs::remove_file(uds);
    Ok(Run {
        bench: "restore",
        kind,
        run,
        to_running_ms: ms(ran.saturating_sub(start)),
        to_first_health_ms: ms(healthy?.saturating_sub(start)),
    })
}

/// Boots the probe, checks it once, and snapshots it into `dir/snap`.
fn take_snapshot(vmm: &Path, memory: u64, dir: &Path) -> anyhow::Result<PathBuf> {
    let uds = dir.join("template.sock");
    let api = dir.join("api.sock");
    let mut args = boot_args(memory, &uds);
    args.extend(["--api-socket".into(), api.display().to_string()]);
    let mut child = spawn(vmm, &args)?;
    first_health(&uds)?;
    let snap = dir.join("snap");
    let mut s = UnixStream::connect(&api)?;
    let request = format!(
        "{{\"action\":\"pause\"}}\n{{\"action\":\"snapshot\",\"dir\":\"{}\"}}\n",
        snap.display()
    );
    s.write_all(request.as_bytes())?;
    let mut replies = BufReader::new(s).lines();
    for _ in 0..2 {
        let reply = replies.next().context("no reply")??;
        if !reply.contains("\"ok\":true") {
            bail!("snapshot failed: {reply}");
        }
    }
    child.kill()?;
    child.wait()?;
    Ok(snap)
}

#[derive(Debug, Serialize)]
struct KindSummary {
    bench: &'static str,
    kind: &'static str,
    runs: usize,
    to_running_ms: Summary,
    to_first_health_ms: Summary,
}

fn summarize_kind(kind: &'static str, runs: &[Run]) -> KindSummary {
    KindSummary {
        bench: "restore-summary",
        kind,
        runs: runs.len(),
        to_running_ms: summarize_by(runs, |r| r.to_running_ms),
        to_first_health_ms: summarize_by(runs, |r| r.to_first_health_ms),
    }
}

fn print_human(s: &KindSummary) {
    eprintln!(
        "{} ({} starts)         p50      p90      p99      max",
        s.kind, s.runs
    );
    for (name, m) in [
        ("spawn -> running", &s.to_running_ms),
        ("spawn -> first health", &s.to_first_health_ms),
    ] {
        eprintln!(
            "  {name:<22} {:>8.2} {:>8.2} {:>8.2} {:>8.2} ms",
            m.p50, m.p90, m.p99, m.max
        );
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let vmm = match args.vmm {
        Some(p) => p,
        None => herd_benches::sys::sibling("herd-vmm")?,
    };
    if !vmm.exists() {
        bail!(
            "{} not found: build it first (cargo build --release --workspace)",
            vmm.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let snap = take_snapshot(&vmm, args.memory, dir.path())?;
    let uds = dir.path().join("v.sock");
    let restore_args = vec![
        "--restore".to_string(),
        snap.display().to_string(),
        "--vsock".into(),
        format!("3,{}", uds.display()),
    ];
    let (mut cold, mut restored) = (Vec::new(), Vec::new());
    let mut json = String::new();
    for i in 0..args.runs {
        // Interleaved, so both see the same host conditions.
        for (kind, list, start_args) in [
            ("cold-boot", &mut cold, boot_args(args.memory, &uds)),
            ("restore", &mut restored, restore_args.clone()),
        ] {
            let r =
                measure(&vmm, &start_args, &uds, kind, i).with_context(|| format!("{kind} {i}"))?;
            let line = serde_json::to_string(&r)?;
            println!("{line}");
            json.push_str(&line);
            json.push('\n');
            list.push(r);
        }
    }
    let summaries = [
        summarize_kind("cold-boot", &cold),
        summarize_kind("restore", &restored),
    ];
    for s in &summaries {
        let line = serde_json::to_string(s)?;
        println!("{line}");
        json.push_str(&line);
        json.push('\n');
        print_human(s);
    }
    let r = &summaries[1];
    eprintln!(
        "  target restore to running p50 < 10 ms: {}",
        if r.to_running_ms.p50 < 10.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    let values = |runs: &[Run]| {
        runs.iter()
            .map(|r| r.to_first_health_ms)
            .collect::<Vec<_>>()
    };
    let (c, rs) = (values(&cold), values(&restored));
    let series = [
        Series {
            name: "cold boot",
            values: &c,
        },
        Series {
            name: "restore",
            values: &rs,
        },
    ];
    let svg = strip_chart(
        "herd-vmm: spawn to first answered health check (probe guest)",
        "ms",
        &series,
    );
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("restore.svg"), svg)?;
    std::fs::write(args.out.join("restore.json"), json)?;
    eprintln!("wrote {}/restore.svg and restore.json", args.out.display());
    Ok(())
}
