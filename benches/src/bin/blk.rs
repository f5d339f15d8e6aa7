//! virtio-blk benchmark: the host CPU time herd-vmm spends per block request from the probe
//! guest. The probe runs `--requests` sequential 4 KiB write + 4 KiB read pairs
//! (`probe.blk.repeat`) and halts; before killing herd-vmm we read its CPU time from /proc:
//! the main thread (the event loop, where requests are parsed and served) and the whole
//! process (plus the vCPU thread, which on PVM includes emulating the probe's driver). A run
//! with one pair is the baseline; the difference over the extra requests is the cost per
//! request. /proc counts in clock ticks (10 ms), so use enough requests.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use herd_benches::proc_cpu::{report_costs, stat_cpu_us};

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

/// CPU times in microseconds and the wall time to the last request.
struct Sample {
    main_us: f64,
    total_us: f64,
    wall_us: f64,
}

fn run(vmm: &PathBuf, disk: &std::path::Path, pairs: u32) -> anyhow::Result<Sample> {
    let cmdline =
        format!("probe.blk.write=0:1:8 probe.blk.read=0:8 probe.blk.repeat={pairs} probe.end=halt");
    let start = Instant::now();
    let mut child = Command::new(vmm)
        .arg("--kernel")
        .arg(herd_tests::probe::pvh_elf())
        .args(["--cmdline", &cmdline, "--disk"])
        .arg(disk)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let out = BufReader::new(child.stdout.take().context("stdout")?);
    let mut done = false;
    for line in out.lines() {
        let line = line?;
        if line.contains("blk repeat=") || (pairs <= 1 && line.contains("blk read sector=")) {
            done = true;
            if line.contains("errors=") && !line.ends_with("errors=0") {
                bail!("requests failed: {line}");
            }
            break;
        }
    }
    let wall_us = start.elapsed().as_secs_f64() * 1e6;
    let main = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/stat"));
    let total = std::fs::read_to_string(format!("/proc/{pid}/stat"));
    child.kill()?;
    child.wait()?;
    if !done {
        bail!("the probe never finished its requests");
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
