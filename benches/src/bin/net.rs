//! virtio-net benchmark: the host CPU time herd-vmm spends per frame the probe guest sends.
//! The probe sends `--frames` frames (`probe.net.tx`) to a TAP in a network namespace this
//! benchmark creates (the frames go no further) and halts; we read herd-vmm's CPU time from
//! /proc: the main thread (the event loop, where tx chains are gathered and written to the
//! TAP) and the whole process (plus the vCPU thread: on PVM, emulating the probe's driver).
//! A one-frame run is the baseline. Only the transmit path is measured; receive needs a host
//! sender and is covered by the end-to-end tests.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use clap::Parser;
use herd_benches::proc_cpu::{Sample, report_costs, sample_until};

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

fn run(vmm: &PathBuf, ns: &herd_tests::netns::NetNs, frames: u32) -> anyhow::Result<Sample> {
    let cmdline = format!("probe.net.tx={frames} probe.end=halt");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns.name()]).arg(vmm);
    cmd.arg("--kernel").arg(herd_tests::probe::pvh_elf());
    cmd.args(["--cmdline", &cmdline, "--net", "tap0"]);
    sample_until(cmd, |line| {
        if line.starts_with("probe: net error") {
            bail!("the probe failed: {line}");
        }
        Ok(line.starts_with("probe: net tx="))
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
