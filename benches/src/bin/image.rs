//! Image benchmark: `herd build` time and image size for the `hello` example and for a 50 MB
//! directory, and `herd run` to the app's first line over N runs. On PVM hosts, where Linux
//! cannot start user space, the run half boots an image whose kernel is the probe guest and
//! measures to the probe's `probe: done` line instead, and says so.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use herd_benches::stats::summarize;
use serde_json::json;

/// Measure herd build and herd run.
#[derive(Debug, Parser)]
struct Args {
    /// Runs of `herd run`.
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Builds per input.
    #[arg(long, default_value_t = 5)]
    builds: usize,
    /// Guest kernel for the hello image [default: the cached build from guest-kernel/build.sh].
    #[arg(long)]
    kernel: Option<PathBuf>,
}

fn bin_dir() -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .context("no parent")?
        .to_owned())
}

fn herd(home: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin_dir()?.join("herd"))
        .arg("--home")
        .arg(home)
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("herd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path).map_or(0, |rd| {
        rd.flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => dir_size(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

/// Builds `build_args` `n` times into fresh stores: (times in ms, image bytes).
fn measure_build(n: usize, build_args: &[&str]) -> anyhow::Result<(Vec<f64>, u64)> {
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..n {
        let home = tempfile::tempdir()?;
        let t = Instant::now();
        herd(home.path(), build_args)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        size = dir_size(&home.path().join("images/blobs"));
    }
    Ok((times, size))
}

/// A directory of `mib` MiB of incompressible files plus an entrypoint.
fn big_dir(root: &Path, mib: usize, entrypoint: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::copy(entrypoint, root.join("bin/app"))?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..mib {
        let data: Vec<u8> = (0..1 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        std::fs::create_dir_all(root.join(format!("data/{}", i % 8)))?;
        std::fs::write(root.join(format!("data/{}/blob{i}", i % 8)), data)?;
    }
    Ok(())
}

fn report(name: &str, unit: &str, xs: &[f64], extra: serde_json::Value) {
    let s = summarize(xs).expect("samples");
    eprintln!(
        "  {name:<34} p50 {:>8.2}  p90 {:>8.2}  max {:>8.2} {unit}",
        s.p50, s.p90, s.max
    );
    println!(
        "{}",
        json!({"bench": "image", "metric": name, "unit": unit, "summary": s, "extra": extra})
    );
}

/// Spawns `herd run` and times spawn to its first stdout line and to the first line
/// containing `marker`.
fn time_to_line(home: &Path, image: &str, marker: &str) -> anyhow::Result<(f64, f64)> {
    let t = Instant::now();
    let mut child = Command::new(bin_dir()?.join("herd"))
        .arg("--home")
        .arg(home)
        .args(["run", image])
        .env("HERD_VMM", bin_dir()?.join("herd-vmm"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let (mut first, mut at) = (None, None);
    for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
        let now = t.elapsed().as_secs_f64() * 1e3;
        first.get_or_insert(now);
        if at.is_none() && line?.contains(marker) {
            at = Some(now);
        }
    }
    child.wait()?;
    Ok((
        first.context("no output")?,
        at.with_context(|| format!("no line with {marker:?}"))?,
    ))
}

fn cached_kernel() -> Option<PathBuf> {
    let out = Command::new("guest-kernel/build.sh")
        .arg("--print-dir")
        .output()
        .ok()?;
    let dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()?
        .trim()
        .to_owned();
    out.status
        .success()
        .then(|| PathBuf::from(dir).join("vmlinux"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bins = bin_dir()?;
    let hello = bins.join("hello");
    let kernel = args
        .kernel
        .or_else(cached_kernel)
        .context("no guest kernel: run guest-kernel/build.sh or pass --kernel")?;
    let (k, h) = (
        kernel.to_str().context("path")?,
        hello.to_str().context("path")?,
    );
    eprintln!(
        "herd build ({} builds each, fresh store each time)",
        args.builds
    );
    let (times, size) = measure_build(
        args.builds,
        &[
            "build",
            "--binary",
            h,
            "--name",
            "hello",
            "--version",
            "1",
            "--kernel",
            k,
        ],
    )?;
    report("build hello", "ms", &times, json!({"image_bytes": size}));
    eprintln!(
        "  {:<34} {:.1} MiB (kernel included)",
        "hello image size",
        size as f64 / 1048576.0
    );
    let tree = tempfile::tempdir()?;
    // A static entrypoint, so the tree needs no loader or libraries of its own.
    let static_app = bins
        .parent()
        .context("target dir")?
        .join("herd-init/herd-init");
    big_dir(tree.path(), 50, &static_app)?;
    let d = tree.path().to_str().context("path")?;
    let (times, size) = measure_build(
        args.builds,
        &[
            "build",
            "--dir",
            d,
            "--entrypoint",
            "/bin/app",
            "--name",
            "big",
            "--version",
            "1",
            "--kernel",
            k,
        ],
    )?;
    report(
        "build 50 MB directory",
        "ms",
        &times,
        json!({"image_bytes": size}),
    );
    eprintln!(
        "  {:<34} {:.1} MiB (kernel included)",
        "50 MB directory image size",
        size as f64 / 1048576.0
    );

    let home = tempfile::tempdir()?;
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    let (image, marker) = if pvm {
        eprintln!(
            "herd run ({} runs): PVM host, so the image's kernel is the probe guest (time to its report)",
            args.runs
        );
        let app = home.path().join("app");
        std::fs::copy(herd_tests::probe::pvh_elf(), &app)?;
        std::fs::set_permissions(&app, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let (a, p) = (
            app.to_str().context("path")?,
            herd_tests::probe::pvh_elf().to_str().context("path")?,
        );
        herd(
            home.path(),
            &[
                "build",
                "--binary",
                a,
                "--name",
                "probe",
                "--version",
                "1",
                "--kernel",
                p,
                "--init",
                a,
                "--cmdline",
                "console=ttyS0",
            ],
        )?;
        ("probe:1", "probe: done")
    } else {
        eprintln!("herd run ({} runs): time to hello's first line", args.runs);
        herd(
            home.path(),
            &[
                "build",
                "--binary",
                h,
                "--name",
                "hello",
                "--version",
                "1",
                "--kernel",
                k,
            ],
        )?;
        ("hello:1", "hello from herd")
    };
    let times = (0..args.runs)
        .map(|_| time_to_line(home.path(), image, marker))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let first: Vec<f64> = times.iter().map(|t| t.0).collect();
    let marked: Vec<f64> = times.iter().map(|t| t.1).collect();
    report(
        "herd run to first console line",
        "ms",
        &first,
        json!({"image": image, "pvm": pvm}),
    );
    report(
        &format!("herd run to {marker:?}"),
        "ms",
        &marked,
        json!({"image": image, "pvm": pvm}),
    );
    Ok(())
}
