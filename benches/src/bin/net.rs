//! virtio-net benchmark: the host CPU time herd-vmm spends per frame the probe guest sends.
//! The probe sends `--frames` frames (`probe.net.tx`) to a TAP in a network namespace this
//! benchmark creates (the frames go no further) and halts; we read herd-vmm's CPU time from
//! /proc: the main thread (the event loop, where tx chains are gathered and written to the
//! TAP) and the whole process (plus the vCPU thread: on PVM, emulating the probe's driver).
//! A one-frame run is the baseline. Only the transmit path is measured; receive needs a host
//! sender and is covered by the end-to-end tests.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use herd_benches::proc_cpu::{report_costs, stat_cpu_us};

/// Measure host CPU time per virtio-net frame sent by the guest.
#[derive(Debug, Parser)]
struct Args {
    /// Frames per measured run.
    #[arg(long, default_value_t = 2000)]
    frames: u32,
    /// Measured runs (each with its own baseline).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// herd-vmm binary [default: next to this benchmark's binary].
    #[arg(long)]
    vmm: Option<PathBuf>,
}

/// CPU times in microseconds and the wall time to the last frame.
struct Sample {
    main_us: f64,
    total_us: f64,
    wall_us: f64,
}

fn run(vmm: &PathBuf, ns: &herd_tests::netns::NetNs, frames: u32) -> anyhow::Result<Sample> {
    let cmdline = format!("probe.net.tx={frames} probe.end=halt");
    let start = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(vmm)
        .arg("--kernel")
        .arg(herd_tests::probe::pvh_elf())
        .args(["--cmdline", &cmdline, "--net", "tap0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    // `ip netns exec` execs herd-vmm in place, so the pid is herd-vmm's.
    let pid = child.id();
    let out = BufReader::new(child.stdout.take().context("stdout")?);
    let mut done = false;
    for line in out.lines() {
        let line = line?;
        if line.starts_with("probe: net error") {
            bail!("the probe failed: {line}");
        }
        if line.starts_with("probe: net tx=") {
            done = true;
            break;
        }
    }
    let wall_us = start.elapsed().as_secs_f64() * 1e6;
    let main = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/stat"));
    let total = std::fs::read_to_string(format!("/proc/{pid}/stat"));
    child.kill()?;
    child.wait()?;
    if !done {
        bail!("the probe never finished sending");
    }
    Ok(Sample {
        main_us: stat_cpu_us(&main?)?,
        total_us: stat_cpu_us(&total?)?,
        wall_us,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let vmm = match args.vmm {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("herd-vmm"),
    };
    let mut ns = herd_tests::netns::NetNs::create().map_err(anyhow::Error::msg)?;
    ns.add_tap("tap0");
    let frames = f64::from(args.frames.max(2) - 1);
    let (mut main, mut total, mut wall) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let base = run(&vmm, &ns, 1)?;
        let load = run(&vmm, &ns, args.frames.max(2))?;
        main.push((load.main_us - base.main_us) / frames);
        total.push((load.total_us - base.total_us) / frames);
        wall.push((load.wall_us - base.wall_us) / frames);
    }
    report_costs("frame", &main, &total, &wall)
}
