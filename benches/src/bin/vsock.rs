//! virtio-vsock benchmark, in two modes. Both boot the probe guest through herd-vmm with a
//! vsock device; a host client connects to its Unix socket with Firecracker's
//! `CONNECT <port>\n`.
//!
//! `--mode round-trip` (default): the host CPU time herd-vmm spends per echo round trip. The
//! probe (`probe.vsock.listen=1234`) echoes one-byte messages; we read herd-vmm's CPU time
//! from /proc after the handshake and after `--round-trips` echoes: the main thread (the
//! event loop, where packets are parsed and sockets served) and the whole process (plus the
//! vCPU thread, which on PVM includes emulating the probe). A round trip is two packets
//! through the device (one each way). /proc counts in 10 ms ticks: use enough trips.
//!
//! `--mode throughput`: MB/s (10^6 bytes/s) each way. The host writes `--mib` MiB of the
//! probe's test pattern in `--chunk-kib` writes to `probe.vsock.sink`, which counts them
//! (and with `--guest-checks` checks every byte), grants credit as it consumes and answers
//! with the count; then `probe.vsock.source` sends as many bytes in 64 KiB packets within
//! herd-vmm's credit and the host reads and checks them. The reference is the same byte stream through a Unix stream socket pair on
//! the host with the same chunk size (a writer thread and a checking reader); each direction
//! is reported as a ratio to it, with the event-loop CPU time per MiB. Where guest kernel
//! code is emulated (PVM) the probe's driver is the bottleneck, not the device.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use clap::{Parser, ValueEnum};
use herd_benches::proc_cpu::{cpu_us, report_costs};
use herd_benches::stats::{Summary, summarize};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    RoundTrip,
    Throughput,
}

/// Measure virtio-vsock: host CPU per echo round trip, or throughput each way.
#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum, default_value_t = Mode::RoundTrip)]
    mode: Mode,
    /// Echo round trips per measured run (round-trip mode).
    #[arg(long, default_value_t = 2000)]
    round_trips: u32,
    /// MiB streamed each way per run (throughput mode; at most 4095).
    #[arg(long, default_value_t = 256)]
    mib: u32,
    /// KiB per host write and read (throughput mode, and its host reference).
    #[arg(long, default_value_t = 64)]
    chunk_kib: usize,
    /// Have the probe check every byte it receives (throughput mode). Where its code is
    /// emulated (PVM) that runs at about 1 MB/s: use a few MiB.
    #[arg(long)]
    guest_checks: bool,
    /// Measured runs (one VM each).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// herd-vmm binary [default: next to this benchmark's binary].
    #[arg(long)]
    vmm: Option<PathBuf>,
}

const ECHO_PORT: u32 = 1234;
const SINK_PORT: u32 = 6000;
const SOURCE_PORT: u32 = 6001;
/// The probe's bulk pattern: byte i of a stream is `i % PERIOD`.
const PERIOD: usize = 251;
const MIB: f64 = (1 << 20) as f64;

/// Boots the probe with `cmdline` (it must halt at the end, not exit) and a vsock device, waits
/// until the device is set up, runs `work(uds_path, herd-vmm pid)`, then kills the VM.
fn with_probe<T>(
    vmm: &Path,
    cmdline: &str,
    work: impl FnOnce(&Path, u32) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let dir = tempfile::tempdir()?;
    let uds = dir.path().join("v.sock");
    let mut child = Command::new(vmm)
        .arg("--kernel")
        .arg(herd_tests::probe::pvh_elf())
        .args(["--cmdline", cmdline])
        .arg("--vsock")
        .arg(format!("3,{}", uds.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().context("stdout")?);
    let ready = out
        .by_ref()
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("vsock cid="));
    // Keep reading: a closed pipe would end herd-vmm at the probe's next line.
    std::thread::spawn(move || io::copy(&mut out, &mut io::sink()));
    let result = if ready {
        work(&uds, child.id())
    } else {
        Err(anyhow::anyhow!("the probe never set up its vsock device"))
    };
    child.kill()?;
    child.wait()?;
    result
}

/// Connects to the guest's `port` and waits for `OK`; returns the stream and its reader.
fn handshake(uds: &Path, port: u32) -> anyhow::Result<(UnixStream, BufReader<UnixStream>)> {
    let mut s = UnixStream::connect(uds)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut ok = String::new();
    r.read_line(&mut ok)?;
    ensure!(ok.starts_with("OK "), "handshake answered {ok:?}");
    Ok((s, r))
}

/// Runs `trips` one-byte echoes; returns per-trip (main, total, wall) us.
fn echoes(uds: &Path, pid: u32, trips: u32) -> anyhow::Result<(f64, f64, f64)> {
    let (mut s, mut r) = handshake(uds, ECHO_PORT)?;
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

fn round_trips(vmm: &Path, args: &Args) -> anyhow::Result<()> {
    let cmdline = format!("probe.vsock.listen={ECHO_PORT} probe.end=halt");
    let (mut main, mut total, mut wall) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let trips = args.round_trips.max(1);
        let (m, t, w) = with_probe(vmm, &cmdline, |uds, pid| echoes(uds, pid, trips))?;
        main.push(m);
        total.push(t);
        wall.push(w);
    }
    report_costs("round trip", &main, &total, &wall)
}

/// The pattern from stream offset 0, long enough that `chunk` bytes from any offset are one
/// slice of it.
fn pattern(chunk: usize) -> Vec<u8> {
    (0..chunk + PERIOD).map(|i| (i % PERIOD) as u8).collect()
}

/// Writes `total` pattern bytes in writes of `chunk` bytes.
fn write_pattern(w: &mut impl Write, total: u64, chunk: usize, pat: &[u8]) -> io::Result<()> {
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(chunk as u64) as usize;
        let at = (sent % PERIOD as u64) as usize;
        w.write_all(&pat[at..at + n])?;
        sent += n as u64;
    }
    Ok(())
}

/// Reads to the end in reads of up to `chunk` bytes, checking the pattern; returns how many.
fn read_pattern(r: &mut impl Read, chunk: usize, pat: &[u8]) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; chunk];
    let mut got = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(got);
        }
        let at = (got % PERIOD as u64) as usize;
        ensure!(buf[..n] == pat[at..at + n], "bad bytes after offset {got}");
        got += n as u64;
    }
}

/// One direction's speed and the event loop's CPU time per MiB.
#[derive(Clone, Copy, Debug)]
struct Leg {
    mb_s: f64,
    cpu_us_per_mib: f64,
}

/// Times `run` and samples herd-vmm's event-loop CPU around it; `total` bytes moved.
fn leg(pid: u32, total: u64, run: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Leg> {
    let (main0, _) = cpu_us(pid)?;
    let start = Instant::now();
    run()?;
    let secs = start.elapsed().as_secs_f64();
    let (main1, _) = cpu_us(pid)?;
    Ok(Leg {
        mb_s: total as f64 / 1e6 / secs,
        cpu_us_per_mib: (main1 - main0) / (total as f64 / MIB),
    })
}

/// Host to guest, then guest to host, in one VM; the sink answers `want`.
fn guest_legs(
    uds: &Path,
    pid: u32,
    total: u64,
    chunk: usize,
    want: &str,
) -> anyhow::Result<(Leg, Leg)> {
    let pat = pattern(chunk);
    let (mut s, mut r) = handshake(uds, SINK_PORT)?;
    let to_guest = leg(pid, total, || {
        write_pattern(&mut s, total, chunk, &pat)?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut answer = String::new();
        r.read_line(&mut answer)?;
        ensure!(answer == want, "the sink said {answer:?}");
        Ok(())
    })?;
    // The guest starts sending as it accepts, just before we read `OK`.
    let (_s, mut r) = handshake(uds, SOURCE_PORT)?;
    let from_guest = leg(pid, total, || {
        let got = read_pattern(&mut r, chunk, &pat)?;
        ensure!(got == total, "the source sent {got} bytes");
        Ok(())
    })?;
    Ok((to_guest, from_guest))
}

/// MB/s of the same stream through a Unix stream socket pair on the host.
fn host_reference(total: u64, chunk: usize) -> anyhow::Result<f64> {
    let pat = pattern(chunk);
    let (mut a, mut b) = UnixStream::pair()?;
    let writer_pat = pat.clone();
    let start = Instant::now();
    let writer = std::thread::spawn(move || {
        write_pattern(&mut a, total, chunk, &writer_pat)?;
        a.shutdown(std::net::Shutdown::Write)
    });
    let got = read_pattern(&mut b, chunk, &pat)?;
    let secs = start.elapsed().as_secs_f64();
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    ensure!(got == total, "the host pair carried {got} bytes");
    Ok(total as f64 / 1e6 / secs)
}

/// The machine-readable result line.
#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    mib: u32,
    chunk_kib: usize,
    runs: usize,
    guest_checks: bool,
    host_mb_s: Summary,
    to_guest_mb_s: Summary,
    from_guest_mb_s: Summary,
    to_guest_ratio: f64,
    from_guest_ratio: f64,
    to_guest_event_loop_cpu_us_per_mib: Summary,
    from_guest_event_loop_cpu_us_per_mib: Summary,
}

fn print_row(what: &str, mb_s: &Summary, host: &Summary, cpu: Option<&Summary>) {
    print!(
        "{what}: p50 {:.1} MB/s (min {:.1}, p90 {:.1}, max {:.1})",
        mb_s.p50, mb_s.min, mb_s.p90, mb_s.max
    );
    match cpu {
        Some(c) => println!(
            " = {:.2}% of host; event-loop CPU p50 {:.0} us/MiB (min {:.0}, max {:.0})",
            100.0 * mb_s.p50 / host.p50,
            c.p50,
            c.min,
            c.max
        ),
        None => println!(),
    }
}

/// Every run's figures.
#[derive(Debug, Default)]
struct Samples {
    host: Vec<f64>,
    to: Vec<f64>,
    from: Vec<f64>,
    to_cpu: Vec<f64>,
    from_cpu: Vec<f64>,
}

fn throughput(vmm: &Path, args: &Args) -> anyhow::Result<()> {
    ensure!((1..=4095).contains(&args.mib), "--mib must be 1 to 4095");
    ensure!(args.chunk_kib > 0, "--chunk-kib must be positive");
    let (total, chunk) = (u64::from(args.mib) << 20, args.chunk_kib << 10);
    let (sink, want) = match args.guest_checks {
        true => (format!("{SINK_PORT}"), format!("bytes={total} bad=0\n")),
        false => (format!("{SINK_PORT}:discard"), format!("bytes={total}\n")),
    };
    let cmdline =
        format!("probe.vsock.sink={sink} probe.vsock.source={SOURCE_PORT}:{total} probe.end=halt");
    let mut s = Samples::default();
    for _ in 0..args.runs {
        s.host.push(host_reference(total, chunk)?);
        let legs = |uds: &Path, pid| guest_legs(uds, pid, total, chunk, &want);
        let (to, from) = with_probe(vmm, &cmdline, legs)?;
        s.to.push(to.mb_s);
        s.from.push(from.mb_s);
        s.to_cpu.push(to.cpu_us_per_mib);
        s.from_cpu.push(from.cpu_us_per_mib);
    }
    print_throughput(args, &s)
}

fn print_throughput(args: &Args, s: &Samples) -> anyhow::Result<()> {
    let sum = |xs: &[f64]| summarize(xs).context("no runs (--runs 0)");
    let (host, to, from) = (sum(&s.host)?, sum(&s.to)?, sum(&s.from)?);
    let (to_cpu, from_cpu) = (sum(&s.to_cpu)?, sum(&s.from_cpu)?);
    println!(
        "vsock throughput: {} MiB each way per run, {} KiB host writes/reads, {} runs, \
         guest checks every byte: {}",
        args.mib, args.chunk_kib, args.runs, args.guest_checks
    );
    print_row("host reference (Unix socket pair)", &host, &host, None);
    print_row("host -> guest", &to, &host, Some(&to_cpu));
    print_row("guest -> host", &from, &host, Some(&from_cpu));
    let report = Report {
        bench: "vsock-throughput",
        mib: args.mib,
        chunk_kib: args.chunk_kib,
        runs: args.runs,
        guest_checks: args.guest_checks,
        host_mb_s: host,
        to_guest_mb_s: to,
        from_guest_mb_s: from,
        to_guest_ratio: to.p50 / host.p50,
        from_guest_ratio: from.p50 / host.p50,
        to_guest_event_loop_cpu_us_per_mib: to_cpu,
        from_guest_event_loop_cpu_us_per_mib: from_cpu,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let vmm = match &args.vmm {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("herd-vmm"),
    };
    match args.mode {
        Mode::RoundTrip => round_trips(&vmm, &args),
        Mode::Throughput => throughput(&vmm, &args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_streams_in_chunks_and_a_wrong_byte_is_caught() {
        let pat = pattern(16);
        let mut stream = Vec::new();
        write_pattern(&mut stream, 1000, 16, &pat).unwrap();
        assert!(
            stream
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (i % 251) as u8)
        );
        assert_eq!(read_pattern(&mut &stream[..], 16, &pat).unwrap(), 1000);
        stream[700] ^= 1;
        assert!(read_pattern(&mut &stream[..], 16, &pat).is_err());
    }
}
