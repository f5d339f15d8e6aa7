//! virtio-vsock benchmark: the host CPU time herd-vmm spends per echo round trip with the
//! probe guest. Throughput is meaningless with the emulated probe (PVM runs its driver at
//! ~1.6 M instructions/s), so this measures what herd controls: a host client connects with
//! `CONNECT 1234\n`, the probe (`probe.vsock.listen=1234`) echoes, and we read herd-vmm's CPU
//! time from /proc after the handshake and after `--round-trips` one-byte echoes: the main
//! thread (the event loop, where packets are parsed and sockets served) and the whole process
//! (plus the vCPU thread, which on PVM includes emulating the probe). A round trip is two
//! packets through the device (one each way). /proc counts in 10 ms ticks: use enough trips.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use herd_benches::proc_cpu::{cpu_us, report_costs};

/// Measure host CPU time per vsock echo round trip.
#[derive(Debug, Parser)]
struct Args {
    /// Echo round trips per measured run.
    #[arg(long, default_value_t = 2000)]
    round_trips: u32,
    /// Measured runs (one VM each).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// herd-vmm binary [default: next to this benchmark's binary].
    #[arg(long)]
    vmm: Option<PathBuf>,
}

/// Connects, waits for `OK`, runs `trips` echoes; returns per-trip (main, total, wall) us.
fn echoes(uds: &Path, pid: u32, trips: u32) -> anyhow::Result<(f64, f64, f64)> {
    let mut s = UnixStream::connect(uds)?;
    s.write_all(b"CONNECT 1234\n")?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut ok = String::new();
    r.read_line(&mut ok)?;
    if !ok.starts_with("OK ") {
        bail!("handshake answered {ok:?}");
    }
    let (main0, total0) = cpu_us(pid)?;
    let start = Instant::now();
    let mut echo = [0u8; 6];
    for _ in 0..trips {
        s.write_all(b"x")?;
        r.read_exact(&mut echo)?;
        if &echo != b"echo:x" {
            bail!("bad echo {echo:?}");
        }
    }
    let wall = start.elapsed().as_secs_f64() * 1e6;
    let (main1, total1) = cpu_us(pid)?;
    let n = f64::from(trips);
    Ok(((main1 - main0) / n, (total1 - total0) / n, wall / n))
}

fn run(vmm: &Path, trips: u32) -> anyhow::Result<(f64, f64, f64)> {
    let dir = tempfile::tempdir()?;
    let uds = dir.path().join("v.sock");
    let mut child = Command::new(vmm)
        .arg("--kernel")
        .arg(herd_tests::probe::pvh_elf())
        .args(["--cmdline", "probe.vsock.listen=1234 probe.end=halt"])
        .arg("--vsock")
        .arg(format!("3,{}", uds.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let out = BufReader::new(child.stdout.take().context("stdout")?);
    let ready = out
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("vsock cid="));
    let result = if ready {
        echoes(&uds, child.id(), trips)
    } else {
        Err(anyhow::anyhow!("the probe never set up its vsock device"))
    };
    child.kill()?;
    child.wait()?;
    result
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
    let (mut main, mut total, mut wall) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let (m, t, w) = run(&vmm, args.round_trips.max(1))?;
        main.push(m);
        total.push(t);
        wall.push(w);
    }
    report_costs("round trip", &main, &total, &wall)
}
