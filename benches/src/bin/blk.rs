//! virtio-blk benchmark, in two parts.
//!
//! Cost: the host CPU time herd-vmm spends per block request from the probe guest. The probe
//! runs `--requests` sequential 4 KiB write + 4 KiB read pairs (`probe.blk.repeat`) and halts;
//! before killing herd-vmm we read its CPU time from /proc: the main thread (the event loop,
//! where requests are parsed and served) and the whole process (plus the vCPU thread, which on
//! PVM includes emulating the probe's driver). A run with one pair is the baseline; the
//! difference over the extra requests is the cost per request. /proc counts in clock ticks
//! (10 ms), so use enough requests.
//!
//! Throughput as a ratio to the host: the probe reads the whole `--file-mib` test file
//! sequentially in `--request-kib` requests (`probe.blk.seqread`), then writes it likewise
//! (`seqwrite`), then makes `--random-reads` 4 KiB reads at random 4 KiB-aligned places
//! (`randread`), one request in flight (queue depth 1). The same patterns then run on the host
//! with `pread`/`pwrite` of the same sizes on the same file, the random places drawn from the
//! same generator (`herd_probe::virtio::blk::bench::Lcg`). Both sides go through a warm host
//! page cache: the file is read once before the first run, and neither uses `O_DIRECT`
//! (herd-vmm does not). The guest's time is the gap between the arrival of its
//! `blk bench start` and `blk bench end` lines on herd-vmm's stdout, minus the same gap for an
//! empty workload (printing the end line; measured every run).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use herd_benches::proc_cpu::{Sample, report_costs, sample_until};
use herd_benches::stats::{Summary, summarize};
use herd_probe::virtio::blk::bench::{Lcg, RANDOM_SECTORS};
use serde::Serialize;

/// Measure host CPU time per virtio-blk request, and guest throughput against the host's.
#[derive(Debug, Parser)]
struct Args {
    /// Write+read pairs per cost run.
    #[arg(long, default_value_t = 1000)]
    requests: u32,
    /// Measured runs (each with its own baselines).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Size of the throughput test file in MiB.
    #[arg(long, default_value_t = 64)]
    file_mib: u64,
    /// Bytes per sequential request, in KiB (at most 128: the probe's buffer).
    #[arg(long, default_value_t = 128)]
    request_kib: u32,
    /// 4 KiB random reads per run.
    #[arg(long, default_value_t = 2000)]
    random_reads: u32,
    /// Seed of the random places (the same on both sides).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// herd-vmm binary [default: next to this benchmark's binary].
    #[arg(long)]
    vmm: Option<PathBuf>,
}

fn run(vmm: &PathBuf, disk: &Path, pairs: u32) -> anyhow::Result<Sample> {
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

/// Per-request costs of each run, in microseconds: (event loop, whole process, wall).
type Costs = (Vec<f64>, Vec<f64>, Vec<f64>);

fn costs(vmm: &PathBuf, args: &Args) -> anyhow::Result<Costs> {
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("bench.img");
    std::fs::write(&disk, vec![0u8; 1 << 20])?;
    let requests = f64::from(2 * (args.requests.max(2) - 1));
    let (mut main, mut total, mut wall) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let base = run(vmm, &disk, 1)?;
        let load = run(vmm, &disk, args.requests.max(2))?;
        main.push((load.main_us - base.main_us) / requests);
        total.push((load.total_us - base.total_us) / requests);
        wall.push((load.wall_us - base.wall_us) / requests);
    }
    Ok((main, total, wall))
}

/// Boots the probe with the workload `word` on `disk`; returns the time between its start and
/// end lines and the request count it reported (failing if any request failed).
fn guest_workload(vmm: &Path, disk: &Path, word: &str) -> anyhow::Result<(Duration, u64)> {
    let mut child = Command::new(vmm)
        .arg("--kernel")
        .arg(herd_tests::probe::pvh_elf())
        .args(["--cmdline", word, "--disk"])
        .arg(disk)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let out = BufReader::new(child.stdout.take().context("stdout")?);
    let (mut start, mut end, mut requests) = (None, None, None);
    for line in out.lines() {
        let (line, at) = (line?, Instant::now());
        match line.strip_prefix("probe: blk ") {
            Some("bench start") => start = Some(at),
            Some("bench end") => end = Some(at),
            Some(rest) if rest.starts_with("bench requests=") => {
                let (n, errors) = rest["bench requests=".len()..]
                    .split_once(" errors=")
                    .context("bench line")?;
                if errors != "0" {
                    bail!("{errors} requests failed in {word}");
                }
                requests = Some(n.parse::<u64>()?);
            }
            Some(rest) if rest.starts_with("error") => bail!("probe: {rest} in {word}"),
            _ => {}
        }
    }
    let status = child.wait()?;
    match (start, end, requests) {
        (Some(s), Some(e), Some(n)) if status.success() => Ok((e - s, n)),
        _ => bail!("the probe did not finish {word} ({status})"),
    }
}

/// The test file: `mib` MiB of non-zero bytes (so every block is allocated), then read once
/// so that both sides start from a warm page cache.
fn test_file(path: &Path, mib: u64) -> anyhow::Result<File> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..mib {
        f.write_all(&chunk)?;
    }
    f.sync_all()?;
    host_sequential(&f, mib << 20, 1 << 20, false)?;
    Ok(f)
}

/// Reads (or writes) `len` bytes of `f` from the start in requests of `request` bytes.
fn host_sequential(f: &File, len: u64, request: usize, write: bool) -> anyhow::Result<Duration> {
    let mut buf = vec![0xa5u8; request];
    let start = Instant::now();
    let mut at = 0;
    while at < len {
        let n = (len - at).min(request as u64) as usize;
        if write {
            f.write_all_at(&buf[..n], at)?;
        } else {
            f.read_exact_at(&mut buf[..n], at)?;
        }
        at += n as u64;
    }
    Ok(start.elapsed())
}

/// `count` 4 KiB reads at the places the probe's `randread` picks among `sectors` sectors.
fn host_random(f: &File, sectors: u64, count: u32, seed: u64) -> anyhow::Result<Duration> {
    let mut buf = vec![0u8; RANDOM_SECTORS as usize * 512];
    let mut lcg = Lcg::new(seed);
    let start = Instant::now();
    for _ in 0..count {
        f.read_exact_at(&mut buf, lcg.next_block(0, sectors) * 512)?;
    }
    Ok(start.elapsed())
}

/// One throughput metric over the runs: guest and host figures and their ratio.
#[derive(Debug, Default)]
struct Metric {
    guest: Vec<f64>,
    host: Vec<f64>,
}

impl Metric {
    fn push(&mut self, guest: f64, host: f64) {
        self.guest.push(guest);
        self.host.push(host);
    }

    fn summary(&self) -> anyhow::Result<MetricSummary> {
        let ratio: Vec<f64> = self
            .guest
            .iter()
            .zip(&self.host)
            .map(|(g, h)| g / h)
            .collect();
        Ok(MetricSummary {
            guest: summarize(&self.guest).context("no runs")?,
            host: summarize(&self.host).context("no runs")?,
            ratio: summarize(&ratio).context("no runs")?,
        })
    }
}

#[derive(Debug, Serialize)]
struct MetricSummary {
    guest: Summary,
    host: Summary,
    ratio: Summary,
}

/// Throughput of every run.
#[derive(Debug, Default)]
struct Throughput {
    seq_read_mib_s: Metric,
    seq_write_mib_s: Metric,
    rand_read_iops: Metric,
    marker_ms: Vec<f64>,
}

fn throughput(vmm: &Path, args: &Args) -> anyhow::Result<Throughput> {
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("throughput.img");
    let file = test_file(&disk, args.file_mib)?;
    let (len, sectors) = (args.file_mib << 20, args.file_mib << 11);
    let request = args.request_kib as usize * 1024;
    let per = request as u64 / 512;
    let mib = len as f64 / f64::from(1 << 20);
    let random = format!(
        "probe.blk.randread=0:{sectors}:{}:{}",
        args.random_reads, args.seed
    );
    let mut t = Throughput::default();
    for _ in 0..args.runs {
        let (empty, _) = guest_workload(vmm, &disk, "probe.blk.seqread=0:0:1")?;
        let marker = empty.as_secs_f64();
        // Seconds the guest took for `word`, checking it made `requests` requests.
        let guest_secs = |word: &str, requests: u64| -> anyhow::Result<f64> {
            let (gap, n) = guest_workload(vmm, &disk, word)?;
            if n != requests {
                bail!("{word}: the probe made {n} requests, not {requests}");
            }
            Ok((gap.as_secs_f64() - marker).max(1e-6))
        };
        let seq_requests = sectors.div_ceil(per);
        let g = guest_secs(
            &format!("probe.blk.seqread=0:{sectors}:{per}"),
            seq_requests,
        )?;
        let h = host_sequential(&file, len, request, false)?.as_secs_f64();
        t.seq_read_mib_s.push(mib / g, mib / h);
        let g = guest_secs(
            &format!("probe.blk.seqwrite=0:{sectors}:{per}"),
            seq_requests,
        )?;
        let h = host_sequential(&file, len, request, true)?.as_secs_f64();
        t.seq_write_mib_s.push(mib / g, mib / h);
        let g = guest_secs(&random, u64::from(args.random_reads))?;
        let h = host_random(&file, sectors, args.random_reads, args.seed)?.as_secs_f64();
        let n = f64::from(args.random_reads);
        t.rand_read_iops.push(n / g, n / h);
        t.marker_ms.push(marker * 1e3);
    }
    Ok(t)
}

fn print_metric(name: &str, unit: &str, m: &MetricSummary) {
    println!(
        "{name}: guest median {:.1} {unit} (min {:.1}, max {:.1}); host median {:.1} {unit} \
         (min {:.1}, max {:.1}); guest/host median {:.1}% (min {:.1}%, max {:.1}%)",
        m.guest.p50,
        m.guest.min,
        m.guest.max,
        m.host.p50,
        m.host.min,
        m.host.max,
        m.ratio.p50 * 100.0,
        m.ratio.min * 100.0,
        m.ratio.max * 100.0
    );
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    runs: usize,
    cost_pairs: u32,
    file_mib: u64,
    request_kib: u32,
    random_reads: u32,
    page_cache: &'static str,
    device_cpu_us_per_request: Summary,
    process_cpu_us_per_request: Summary,
    wall_us_per_request: Summary,
    seq_read_mib_s: MetricSummary,
    seq_write_mib_s: MetricSummary,
    rand_read_4k_iops: MetricSummary,
    end_marker_ms: Summary,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(1..=128).contains(&args.request_kib) {
        bail!(
            "--request-kib {} is not 1 to 128 (the probe's buffer)",
            args.request_kib
        );
    }
    if args.file_mib == 0 || args.random_reads == 0 || args.runs == 0 {
        bail!("--file-mib, --random-reads and --runs must be at least 1");
    }
    let vmm = match &args.vmm {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("herd-vmm"),
    };
    let (main, total, wall) = costs(&vmm, &args)?;
    report_costs("request", &main, &total, &wall)?;
    let t = throughput(&vmm, &args)?;
    let report = Report {
        bench: "blk",
        runs: args.runs,
        cost_pairs: args.requests,
        file_mib: args.file_mib,
        request_kib: args.request_kib,
        random_reads: args.random_reads,
        page_cache: "warm, no O_DIRECT on either side",
        device_cpu_us_per_request: summarize(&main).context("no runs")?,
        process_cpu_us_per_request: summarize(&total).context("no runs")?,
        wall_us_per_request: summarize(&wall).context("no runs")?,
        seq_read_mib_s: t.seq_read_mib_s.summary()?,
        seq_write_mib_s: t.seq_write_mib_s.summary()?,
        rand_read_4k_iops: t.rand_read_iops.summary()?,
        end_marker_ms: summarize(&t.marker_ms).context("no runs")?,
    };
    print_metric("sequential read", "MiB/s", &report.seq_read_mib_s);
    print_metric("sequential write", "MiB/s", &report.seq_write_mib_s);
    print_metric("4 KiB random read (QD1)", "IOPS", &report.rand_read_4k_iops);
    println!(
        "(guest times exclude {:.2} ms, the median time to print the end marker; \
         both sides use the warm host page cache)",
        report.end_marker_ms.p50
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
