//! Boot benchmark: boots the probe guest N times through the real herd-vmm and reports
//! spawn-to-boot-signal, spawn-to-exit, herd-vmm's own share (spawn to first KVM_RUN) and VMM
//! memory overhead (peak RSS minus guest memory touched), as percentiles, JSON lines and an
//! SVG of the boot-time distribution.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use herd_benches::stats::{Summary, summarize_by};
use herd_benches::svg::{Series, strip_chart};
use herd_benches::sys::monotonic_ns;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Image {
    Pvh,
    Bzimage,
    Both,
}

/// Boot the probe guest repeatedly and report boot-time percentiles.
#[derive(Debug, Parser)]
struct Args {
    /// Boots per image.
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// herd-vmm binary [default: next to this benchmark's binary].
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// Which probe image(s) to boot.
    #[arg(long, value_enum, default_value_t = Image::Both)]
    image: Image,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    memory: u64,
    /// Where to write boot-time.svg and boot.json.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

/// One boot's measurements, in milliseconds and KiB.
#[derive(Debug, Serialize)]
struct Run {
    bench: &'static str,
    image: &'static str,
    run: usize,
    spawn_to_boot_signal_ms: f64,
    spawn_to_exit_ms: f64,
    own_share_ms: f64,
    reported_boot_ms: f64,
    vmm_cpu_ms: f64,
    peak_rss_kib: u64,
    guest_touched_kib: u64,
    vmm_overhead_kib: u64,
}

fn field<T: std::str::FromStr>(line: &str, key: &str) -> Option<T> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split(|c: char| c.is_whitespace() || c == ',')
        .next()?
        .parse()
        .ok()
}

fn ms(ns: u128) -> f64 {
    ns as f64 / 1e6
}

fn boot_once(
    vmm: &Path,
    image: &Path,
    name: &'static str,
    run: usize,
    memory: u64,
) -> anyhow::Result<Run> {
    let start = monotonic_ns();
    let mut child = Command::new(vmm)
        .args(["--kernel"])
        .arg(image)
        .args([
            "--memory",
            &memory.to_string(),
            "--cmdline",
            "probe.end=exit exit=0",
        ])
        .env("HERD_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", vmm.display()))?;
    let stderr = BufReader::new(child.stderr.take().expect("stderr is piped"));
    let mut r = Run {
        bench: "boot",
        image: name,
        run,
        spawn_to_boot_signal_ms: f64::NAN,
        spawn_to_exit_ms: f64::NAN,
        own_share_ms: f64::NAN,
        reported_boot_ms: f64::NAN,
        vmm_cpu_ms: f64::NAN,
        peak_rss_kib: 0,
        guest_touched_kib: 0,
        vmm_overhead_kib: 0,
    };
    for line in stderr.lines() {
        let (line, now) = (line?, monotonic_ns());
        if line.contains("first KVM_RUN") {
            let at: u128 = field(&line, "monotonic_ns=").context("bad first KVM_RUN line")?;
            r.own_share_ms = ms(at.saturating_sub(start));
        } else if line.contains("Guest-boot-time = ") {
            r.spawn_to_boot_signal_ms = ms(now - start);
            r.reported_boot_ms =
                field::<f64>(&line, "Guest-boot-time = ").unwrap_or(f64::NAN) / 1000.0;
            r.vmm_cpu_ms = field::<f64>(&line, "ms, ").unwrap_or(f64::NAN) / 1000.0;
        } else if line.contains("peak_rss_kib=") {
            r.peak_rss_kib = field(&line, "peak_rss_kib=").unwrap_or(0);
            r.guest_touched_kib = field(&line, "guest_resident_kib=").unwrap_or(0);
        }
    }
    let status = child.wait()?;
    r.spawn_to_exit_ms = ms(monotonic_ns() - start);
    if !status.success() || r.spawn_to_boot_signal_ms.is_nan() {
        bail!(
            "boot {run} of {name} failed: {status}, boot signal seen: {}",
            !r.spawn_to_boot_signal_ms.is_nan()
        );
    }
    r.vmm_overhead_kib = r.peak_rss_kib.saturating_sub(r.guest_touched_kib);
    Ok(r)
}

#[derive(Debug, Serialize)]
struct ImageSummary {
    bench: &'static str,
    image: &'static str,
    runs: usize,
    spawn_to_boot_signal_ms: Summary,
    spawn_to_exit_ms: Summary,
    own_share_ms: Summary,
    vmm_cpu_ms: Summary,
    vmm_overhead_kib: Summary,
}

fn summarize_runs(image: &'static str, runs: &[Run]) -> ImageSummary {
    let pick = |f: fn(&Run) -> f64| summarize_by(runs, f);
    ImageSummary {
        bench: "boot-summary",
        image,
        runs: runs.len(),
        spawn_to_boot_signal_ms: pick(|r| r.spawn_to_boot_signal_ms),
        spawn_to_exit_ms: pick(|r| r.spawn_to_exit_ms),
        own_share_ms: pick(|r| r.own_share_ms),
        vmm_cpu_ms: pick(|r| r.vmm_cpu_ms),
        vmm_overhead_kib: pick(|r| r.vmm_overhead_kib as f64),
    }
}

fn print_human(s: &ImageSummary) {
    eprintln!(
        "{} ({} boots)            p50      p90      max",
        s.image, s.runs
    );
    for (name, m, unit) in [
        ("spawn -> boot signal", &s.spawn_to_boot_signal_ms, "ms"),
        ("spawn -> exit", &s.spawn_to_exit_ms, "ms"),
        ("own share (-> KVM_RUN)", &s.own_share_ms, "ms"),
        ("VMM CPU to boot signal", &s.vmm_cpu_ms, "ms"),
        ("VMM memory overhead", &s.vmm_overhead_kib, "KiB"),
    ] {
        eprintln!(
            "  {name:<24} {:>8.2} {:>8.2} {:>8.2} {unit}",
            m.p50, m.p90, m.max
        );
    }
    let targets = [
        ("own share p50 < 5 ms", s.own_share_ms.p50 < 5.0),
        ("VMM overhead p50 < 3 MiB", s.vmm_overhead_kib.p50 < 3072.0),
        (
            "spawn -> boot signal p50 <= Firecracker's ~10 ms here",
            s.spawn_to_boot_signal_ms.p50 <= 10.0,
        ),
    ];
    for (t, ok) in targets {
        eprintln!("  target {t}: {}", if ok { "met" } else { "MISSED" });
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
    let images: Vec<(&'static str, &Path)> = match args.image {
        Image::Pvh => vec![("pvh", herd_tests::probe::pvh_elf())],
        Image::Bzimage => vec![("bzimage", herd_tests::probe::bzimage())],
        Image::Both => vec![
            ("pvh", herd_tests::probe::pvh_elf()),
            ("bzimage", herd_tests::probe::bzimage()),
        ],
    };
    std::fs::create_dir_all(&args.out)?;
    let mut all = Vec::new();
    let mut json = String::new();
    for (name, path) in images {
        let mut runs = Vec::with_capacity(args.runs);
        for i in 0..args.runs {
            let r = boot_once(&vmm, path, name, i, args.memory)?;
            let line = serde_json::to_string(&r)?;
            println!("{line}");
            json.push_str(&line);
            json.push('\n');
            runs.push(r);
        }
        let summary = summarize_runs(name, &runs);
        let line = serde_json::to_string(&summary)?;
        println!("{line}");
        json.push_str(&line);
        json.push('\n');
        print_human(&summary);
        all.push((
            name,
            runs.iter()
                .map(|r| r.spawn_to_boot_signal_ms)
                .collect::<Vec<_>>(),
        ));
    }
    let series: Vec<Series<'_>> = all
        .iter()
        .map(|(n, v)| Series { name: n, values: v })
        .collect();
    let svg = strip_chart(
        "herd-vmm: spawn to guest boot signal (probe guest)",
        "ms",
        &series,
    );
    std::fs::write(args.out.join("boot-time.svg"), svg)?;
    std::fs::write(args.out.join("boot.json"), json)?;
    eprintln!("wrote {}/boot-time.svg and boot.json", args.out.display());
    Ok(())
}
