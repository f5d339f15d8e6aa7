//! virtio-blk benchmark: the host CPU time herd-vmm spends per block request from the probe
//! guest. The probe runs `--requests` sequential 4 KiB write + 4 KiB read pairs
//! (`probe.blk.repeat`) and halts; before killing herd-vmm we read its CPU time from /proc:
//! the main thread (the event loop, where requests are parsed and served) and the whole
//! process (plus the vCPU thread, which on PVM includes emulating the probe's driver). A run
//! with one pair is the baseline; the difference over the extra requests is the cost per
//! request. /proc counts in clock ticks (10 ms), so use enough requests.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use clap::Parser;
use herd_benches::proc_cpu::{Sample, report_costs, sample_until};

/// Measure host CPU time per virtio-blk request.
#[derive(Debug, Parser)]
struct Args {
    /// Write+read pairs per measured run.
    #[arg(long, default_value_t = 1000)]
    requests: u32,
    /// Measured runs (each with its own baseline).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// herd-vmm binary [default: next to this benchmark's binary].
    #[arg(long)]
    vmm: Option<PathBuf>,
}

fn run(vmm: &PathBuf, disk: &std::path::Path, pairs: u32) -> anyhow::Result<Sample> {
    let cmdline =
        format!("probe.blk.write=0:1:8 probe.blk.read=0:8 probe.blk.repeat={pairs} probe.end=halt");
    let mut cmd = Command::new(vmm);
    cmd.arg("--kernel").arg(herd_tests::probe::pvh_elf());
    cmd.args(["--cmdline", &cmdline, "--disk"]).arg(disk);
    sample_until(cmd, |line| {
        if line.contains("blk repeat=") || (pairs <= 1 && line.contains("blk read sector=")) {
            if line.contains("errors=") && !line.ends_with("errors=0") {
                bail!("requests failed: {line}");
            }
            return Ok(true);
        }
        Ok(false)
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
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("bench.img");
    std::fs::write(&disk, vec![0u8; 1 << 20])?;
    let requests = f64::from(2 * (args.requests.max(2) - 1));
    let (mut main, mut total, mut wall) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let base = run(&vmm, &disk, 1)?;
        let load = run(&vmm, &disk, args.requests.max(2))?;
        main.push((load.main_us - base.main_us) / requests);
        total.push((load.total_us - base.total_us) / requests);
        wall.push((load.wall_us - base.wall_us) / requests);
    }
    report_costs("request", &main, &total, &wall)
}
