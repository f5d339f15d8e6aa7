//! Fleet benchmark: how many microVMs a host holds and how fast it starts them.
//! - Launch rate: N guests started at once, through herd-vmm alone and through the agent,
//!   until every one has signalled boot complete; microVMs per second per core.
//! - Boot under load: each guest's boot time while the others of its launch boot too.
//! - Density: idle instances through the agent until the count asked for or the memory
//!   budget, with RSS and PSS per instance (VMM and guest apart) and the agent's cost.
//!
//! The guest is the probe guest (it halts once booted), on PVM hosts because nothing else
//! boots fast there, and everywhere so numbers compare. Writes `fleet.json`,
//! `fleet-boot.svg` and `fleet-memory.svg` into `--out`.

mod density;
mod launch;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use herd_benches::agent::{Agent, build_probe_image};
use herd_benches::stats::{Summary, summarize};
use herd_benches::svg::{Line, Series, line_chart, strip_chart};
use launch::{Launch, cores};
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Launch,
    Density,
    All,
}

/// Measure launch rate, boot time under load and density.
#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum, default_value_t = Mode::All)]
    mode: Mode,
    /// Guests started at once, one launch per count and run.
    #[arg(long, value_delimiter = ',', default_values_t = [10usize, 50, 200])]
    counts: Vec<usize>,
    /// Launches per count.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Guest memory of launched guests, MiB.
    #[arg(long, default_value_t = 128)]
    launch_memory: u64,
    /// Launch herd-vmm alone without `--cpuid-cache` (each VM asks KVM for its CPUID).
    #[arg(long)]
    no_cpuid_cache: bool,
    /// Run the agent with `--no-jail` (its instances unjailed), to measure what the jail costs.
    #[arg(long)]
    no_jail: bool,
    /// Skip launching through the agent (herd-vmm alone only).
    #[arg(long)]
    no_agent_launch: bool,
    /// Most idle instances in the density run.
    #[arg(long, default_value_t = 500)]
    max: usize,
    /// Instances added per density step.
    #[arg(long, default_value_t = 100)]
    step: usize,
    /// Guest memory of the idle instances, MiB.
    #[arg(long, default_value_t = 64)]
    memory: u64,
    /// Host memory to leave available, MiB: the budget is what is above it.
    #[arg(long, default_value_t = 2048)]
    reserve_mib: u64,
    /// Instance network: `none`, or `bridge` (a TAP each on the agent's bridge).
    #[arg(long, default_value = "none")]
    network: String,
    /// herd-vmm binary [default: the static (musl) release build if present, else the one
    /// next to this benchmark].
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// Where to write fleet.json and the charts.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

/// The guest's words: halt once booted, print nothing (see `probe.report=off`).
const QUIET_HALT: &str = "probe.end=halt probe.report=off";

fn bin_dir() -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .context("no directory")?
        .to_owned())
}

/// `target/x86_64-unknown-linux-musl/release/herd-vmm` when this runs from `target/release`.
fn default_vmm(bin: &Path) -> PathBuf {
    let musl = bin.join("../x86_64-unknown-linux-musl/release/herd-vmm");
    if musl.exists() {
        musl
    } else {
        bin.join("herd-vmm")
    }
}

fn pct(s: &Summary) -> String {
    format!(
        "p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        s.p50, s.p90, s.p99, s.max
    )
}

fn report_launch(l: &Launch) -> anyhow::Result<serde_json::Value> {
    let boot = summarize(&l.boot_ms).context("no boots")?;
    let reported = summarize(&l.reported_boot_ms).context("no boots")?;
    eprintln!(
        "launch {:>3} via {:<8}: all booted in {:>7.1} ms = {:>6.1} VMs/s ({:>5.1} per core); boot ms {}; herd-vmm's own {}",
        l.count,
        l.via,
        l.wall_ms,
        l.vms_per_s,
        l.vms_per_s_per_core,
        pct(&boot),
        pct(&reported)
    );
    Ok(
        json!({"via": l.via, "count": l.count, "wall_ms": l.wall_ms, "vms_per_s": l.vms_per_s,
        "vms_per_s_per_core": l.vms_per_s_per_core, "boot_ms": boot, "reported_boot_ms": reported}),
    )
}

/// A launch's name and every guest's boot time in it, ms.
type BootTimes = (String, Vec<f64>);

/// The agent's flags for `--no-jail`.
fn jail_flags(args: &Args) -> &'static [&'static str] {
    if args.no_jail { &["--no-jail"] } else { &[] }
}

/// Runs every launch; returns their JSON and, per way in and count, every guest's boot time.
fn launches(
    args: &Args,
    bin: &Path,
    vmm: &Path,
) -> anyhow::Result<(Vec<serde_json::Value>, Vec<BootTimes>)> {
    let kernel = herd_tests::probe::pvh_elf();
    let (mut out, mut under_load) = (Vec::new(), Vec::new());
    let cache = tempfile::tempdir()?;
    let cache = (!args.no_cpuid_cache).then_some(cache.path());
    for &count in &args.counts {
        let mut all = Vec::new();
        for _ in 0..args.runs {
            let l = launch::direct(vmm, kernel, QUIET_HALT, count, args.launch_memory, cache)?;
            out.push(report_launch(&l)?);
            all.extend(l.boot_ms);
        }
        under_load.push((format!("herd-vmm, {count} at once"), all));
    }
    if args.no_agent_launch {
        return Ok((out, under_load));
    }
    let agent = Agent::start(bin, vmm, jail_flags(args))?;
    let image = build_probe_image(bin, agent.home.path(), "1", QUIET_HALT)?;
    for &count in &args.counts {
        let mut all = Vec::new();
        for run in 0..args.runs {
            let name = format!("launch-{count}-{run}");
            let l = launch::agent(
                &agent.socket(),
                &image,
                &name,
                count,
                &args.network,
                args.launch_memory,
            )?;
            out.push(report_launch(&l)?);
            all.extend(l.boot_ms);
        }
        under_load.push((format!("agent, {count} at once"), all));
    }
    Ok((out, under_load))
}

fn density(args: &Args, bin: &Path, vmm: &Path) -> anyhow::Result<Vec<density::Step>> {
    let mut flags = vec!["--subnet", "172.31.0.0/22"];
    flags.extend(jail_flags(args));
    let agent = Agent::start(bin, vmm, &flags)?;
    let image = build_probe_image(bin, agent.home.path(), "1", QUIET_HALT)?;
    let plan = density::Plan {
        max: args.max,
        step: args.step,
        memory_mib: args.memory,
        network: args.network.clone(),
        reserve_kib: args.reserve_mib * 1024,
        idle_window: Duration::from_secs(3),
    };
    density::run(&agent.socket(), agent.pid(), &image, &plan)
}

fn memory_chart(steps: &[density::Step]) -> String {
    let line = |f: fn(&density::Step) -> f64| -> Vec<(f64, f64)> {
        steps.iter().map(|s| (s.instances as f64, f(s))).collect()
    };
    let (host, marginal, vmm_pss, vmm_rss, guest_pss) = (
        line(|s| s.host_kib),
        line(|s| s.host_marginal_kib),
        line(|s| s.vmm_pss_kib),
        line(|s| s.vmm_rss_kib),
        line(|s| s.guest_pss_kib),
    );
    line_chart(
        "memory per idle instance against their count (probe guest, 64 MiB)",
        "instances",
        "KiB per instance",
        &[
            Line {
                name: "host memory used",
                points: &host,
            },
            Line {
                name: "host memory, step's",
                points: &marginal,
            },
            Line {
                name: "VMM RSS",
                points: &vmm_rss,
            },
            Line {
                name: "VMM PSS",
                points: &vmm_pss,
            },
            Line {
                name: "guest PSS",
                points: &guest_pss,
            },
        ],
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = bin_dir()?;
    let vmm = args.vmm.clone().unwrap_or_else(|| default_vmm(&bin));
    if !vmm.exists() {
        bail!(
            "{} not found: build it first (cargo build --release --workspace)",
            vmm.display()
        );
    }
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    eprintln!(
        "fleet: herd-vmm {}, {} cores, guest: the probe guest{}",
        vmm.display(),
        cores(),
        if pvm {
            " (PVM host: Linux guests cannot start user space here)"
        } else {
            ""
        }
    );
    std::fs::create_dir_all(&args.out)?;
    let mut report =
        json!({"bench": "fleet", "vmm": vmm, "cores": cores(), "pvm": pvm, "guest": "probe"});
    if args.mode != Mode::Density {
        let (runs, under_load) = launches(&args, &bin, &vmm)?;
        report["launches"] = json!(runs);
        let series: Vec<Series<'_>> = under_load
            .iter()
            .map(|(n, v)| Series { name: n, values: v })
            .collect();
        let svg = strip_chart(
            "boot time under load: spawn to boot signal, N at once (probe guest)",
            "ms",
            &series,
        );
        std::fs::write(args.out.join("fleet-boot.svg"), svg)?;
        let loaded: serde_json::Map<_, _> = under_load
            .iter()
            .filter_map(|(n, v)| Some((n.clone(), json!(summarize(v)?))))
            .collect();
        report["boot_under_load_ms"] = json!(loaded);
    }
    if args.mode != Mode::Launch {
        let steps = density(&args, &bin, &vmm)?;
        std::fs::write(args.out.join("fleet-memory.svg"), memory_chart(&steps))?;
        report["density"] = json!(steps);
    }
    let line = report.to_string();
    println!("{line}");
    std::fs::write(args.out.join("fleet.json"), format!("{line}\n"))?;
    eprintln!("wrote {}/fleet.json and its charts", args.out.display());
    Ok(())
}
