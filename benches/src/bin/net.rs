//! virtio-net benchmark, inside a network namespace it creates (the frames go no further):
//! throughput both ways with MTU-sized UDP frames against a host reference, and the host CPU
//! time herd-vmm spends per frame.
//!
//! The namespace has one TAP, `10.0.0.1/24`, with a static neighbour entry for the probe
//! (`10.0.0.2`, MAC 02:00:00:00:00:01). The benchmark re-runs itself inside it (`--inside`) so
//! its sockets and TAP opens are there too.
//! - guest -> host: the probe sends `--frames` identical UDP datagrams of `--len`-byte frames
//!   (`probe.net.udp`, `probe.net.tx`); a host UDP socket on 10.0.0.1 times the first to the
//!   last arrival.
//! - host -> guest: once the probe's driver is up, a host UDP socket sends `--frames` datagrams
//!   of the same size in one burst (the TAP's queue is made long enough to hold them all); the
//!   time runs from the first send to the probe's `probe: net rx=N` line (`probe.net.quiet`).
//! - host reference, same TAP and sockets, a host process in the VM's place: for guest ->
//!   host it writes the probe's very frames (built by the probe's own code) to the TAP with
//!   herd-vmm's TAP writer and the same socket reader times them; for host -> guest the same
//!   burst is sent and the process reads the frames off the TAP as herd-vmm's device would.
//!   What remains is the host network stack's cost of that frame stream, so guest / host says
//!   how much of it the VM path delivers. Should datagrams be dropped anyway, the rate counts
//!   those that arrived (and a line says how many).
//! - CPU: herd-vmm's CPU time from /proc per frame sent and per frame received, the main thread
//!   (the event loop: the device) and the whole process (plus the vCPU thread, which on PVM
//!   emulates the probe's driver), each minus a one-frame baseline.
//!
//! Output: a table of percentiles over `--runs` and one JSON line.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use herd_benches::proc_cpu::{Sample, report_costs, sample_until};
use herd_benches::stats::{Summary, summarize};
use herd_benches::sys::set_recv_buffer;
use herd_probe::udp::{self, Csum};
use herd_tests::netns::NetNs;
use herd_vmm::sys::tap::{Tap, VNET_HDR_LEN};
use serde::Serialize;

const TAP: &str = "tap0";
const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_TEXT: &str = "02:00:00:00:00:01";
const HOST_IP: &str = "10.0.0.1";
const GUEST_IP: &str = "10.0.0.2";
const PORT: u16 = 5000;
/// Ethernet, IPv4 and UDP header bytes in front of a datagram's payload.
const HEADERS: usize = 14 + 20 + 8;

/// Measure virtio-net throughput both ways against the host, and CPU time per frame.
#[derive(Debug, Parser)]
struct Args {
    /// Frames per measured run and direction.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(2..=20_000))]
    frames: u32,
    /// Bytes of each Ethernet frame (headers included, no FCS): 60 to 1514.
    #[arg(long, default_value_t = 1514, value_parser = clap::value_parser!(u16).range(60..=1514))]
    len: u16,
    /// Measured runs (each with its own baselines and host reference).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// herd-vmm binary [default: next to this benchmark's binary].
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// Internal: already running inside the benchmark's namespace.
    #[arg(long, hide = true)]
    inside: bool,
}

/// A stream of datagrams as the receiving socket saw it.
#[derive(Debug, Default)]
struct Stream {
    frames: u32,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Stream {
    /// Frame bytes per second from the first to the last arrival, in MB/s.
    fn mb_s(&self, len: usize) -> anyhow::Result<f64> {
        let (Some(first), Some(last)) = (self.first, self.last) else {
            bail!("no datagram arrived");
        };
        ensure!(self.frames >= 2, "only {} datagram arrived", self.frames);
        let secs = (last - first).as_secs_f64();
        Ok(f64::from(self.frames - 1) * len as f64 / secs / 1e6)
    }
}

/// A UDP socket on the host address counting datagrams on a thread until told to stop (and
/// then until nothing more is queued). Its receive buffer holds the whole stream, so
/// datagrams are only lost if the host cannot take them at all, not because the reader thread
/// was not scheduled for a while.
struct UdpSink {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<std::io::Result<Stream>>,
}

impl UdpSink {
    fn start(frames: u32) -> anyhow::Result<Self> {
        let sock = UdpSocket::bind((HOST_IP, PORT)).context("bind the UDP sink")?;
        // An MTU-sized datagram takes up to ~4.5 KiB of buffer (its skb's truesize).
        let bytes = (frames as usize * 4608).max(1 << 20);
        set_recv_buffer(&sock, bytes).context("set the sink's receive buffer")?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut s, mut buf) = (Stream::default(), vec![0u8; 65536]);
            loop {
                match sock.recv(&mut buf) {
                    Ok(_) => {
                        let now = Instant::now();
                        s.first.get_or_insert(now);
                        s.last = Some(now);
                        s.frames += 1;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if stopping.load(Ordering::SeqCst) {
                            return Ok(s);
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        });
        Ok(Self { stop, thread })
    }

    /// Stops once the queue is drained; what arrived.
    fn finish(self) -> anyhow::Result<Stream> {
        self.stop.store(true, Ordering::SeqCst);
        let joined = self.thread.join();
        Ok(joined.map_err(|_| anyhow::anyhow!("the sink thread panicked"))??)
    }
}

/// herd-vmm with the probe and our TAP, running `cmdline`.
fn vm(vmm: &Path, cmdline: &str) -> Command {
    let mut cmd = Command::new(vmm);
    cmd.arg("--kernel").arg(herd_tests::probe::pvh_elf());
    cmd.args([
        "--cmdline",
        cmdline,
        "--net",
        &format!("{TAP},mac={MAC_TEXT}"),
    ]);
    cmd
}

fn check_probe(line: &str) -> anyhow::Result<()> {
    if line.starts_with("probe: net error") || line.starts_with("probe: panic") {
        bail!("the probe failed: {line}");
    }
    Ok(())
}

/// The probe sends `frames` datagrams; herd-vmm's CPU and the host socket's view.
fn guest_to_host(vmm: &Path, frames: u32, len: u16) -> anyhow::Result<(Sample, Stream)> {
    let sink = UdpSink::start(frames)?;
    let cmdline =
        format!("probe.net.udp={PORT} probe.net.len={len} probe.net.tx={frames} probe.end=halt");
    let sample = sample_until(vm(vmm, &cmdline), |line| {
        check_probe(line)?;
        Ok(line.starts_with("probe: net tx="))
    })?;
    Ok((sample, sink.finish()?))
}

/// Waits until the TAP is operationally up: the kernel applies a carrier change up to a second
/// late when interfaces changed recently (every run attaches and detaches the TAP), and until
/// then it drops what the host sends there. We run inside the namespace, so /sys shows it.
fn wait_until_up() -> anyhow::Result<()> {
    let path = format!("/sys/class/net/{TAP}/operstate");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&path)?.trim() != "up" {
        ensure!(Instant::now() < deadline, "{TAP} never came up");
        std::thread::sleep(Duration::from_millis(1));
    }
    // The queueing discipline is switched on right after the state changes.
    std::thread::sleep(Duration::from_millis(10));
    Ok(())
}

/// Sends `frames` datagrams of `len`-byte frames to the guest address in one burst.
fn send_burst(sock: &UdpSocket, frames: u32, len: u16) -> anyhow::Result<()> {
    let payload = vec![0x5a; usize::from(len) - HEADERS];
    for _ in 0..frames {
        sock.send_to(&payload, (GUEST_IP, PORT))
            .context("send to the guest")?;
    }
    Ok(())
}

/// The probe waits for `frames` datagrams, sent once its driver is up; herd-vmm's CPU and
/// the seconds from the first send to the probe's count line.
fn host_to_guest(vmm: &Path, frames: u32, len: u16) -> anyhow::Result<(Sample, f64)> {
    let sock = UdpSocket::bind((HOST_IP, 0))?;
    let cmdline =
        format!("probe.net.udp={PORT} probe.net.rx={frames} probe.net.quiet probe.end=halt");
    let (mut start, mut secs) = (None, 0.0);
    let sample = sample_until(vm(vmm, &cmdline), |line| {
        check_probe(line)?;
        if line.starts_with("probe: net features=") {
            wait_until_up()?;
            start = Some(Instant::now());
            send_burst(&sock, frames, len)?;
        }
        if line.starts_with("probe: net rx=") {
            secs = start
                .context("count before the driver was up")?
                .elapsed()
                .as_secs_f64();
            return Ok(true);
        }
        Ok(false)
    })?;
    Ok((sample, secs))
}

/// Host reference, guest -> host: the probe's frames written to the TAP by this process.
fn reference_to_host(frames: u32, len: u16) -> anyhow::Result<Stream> {
    let tap = Tap::open(TAP).context("open the TAP for the host reference")?;
    let mut frame = [0u8; VNET_HDR_LEN + udp::MAX_LEN];
    let n = udp::build(&mut frame, &MAC, PORT, len.into(), Csum::Full);
    let sink = UdpSink::start(frames)?;
    for _ in 0..frames {
        tap.write_frame(&frame[..n]).context("write to the TAP")?;
    }
    sink.finish()
}

/// Host reference, host -> guest: the same burst, read off the TAP by this process; seconds
/// from the first send to the last frame read.
fn reference_to_guest(frames: u32, len: u16) -> anyhow::Result<f64> {
    let tap = Tap::open(TAP).context("open the TAP for the host reference")?;
    let sock = UdpSocket::bind((HOST_IP, 0))?;
    let reader = std::thread::spawn(move || -> anyhow::Result<Instant> {
        let (mut buf, mut got) = (vec![0u8; 65536], 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        while got < frames {
            match tap.read_frame(&mut buf) {
                Ok(n) if udp::receive(&mut buf[..n], PORT, false).is_some() => got += 1,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ensure!(Instant::now() < deadline, "only {got} frames arrived");
                    std::hint::spin_loop();
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Instant::now())
    });
    wait_until_up()?;
    let start = Instant::now();
    send_burst(&sock, frames, len)?;
    let end = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader panicked"))??;
    Ok((end - start).as_secs_f64())
}

/// One direction's figures over the runs.
#[derive(Debug, Serialize)]
struct Direction {
    guest_mb_s: Summary,
    host_mb_s: Summary,
    /// Per-run guest / host.
    ratio: Summary,
    event_loop_cpu_us_per_frame: Summary,
    process_cpu_us_per_frame: Summary,
}

/// Per-run samples of one direction.
#[derive(Debug, Default)]
struct Samples {
    guest: Vec<f64>,
    host: Vec<f64>,
    main: Vec<f64>,
    total: Vec<f64>,
    wall: Vec<f64>,
}

impl Samples {
    fn push(&mut self, guest: f64, host: f64, base: &Sample, load: &Sample, frames: u32) {
        let extra = f64::from(frames - 1);
        self.guest.push(guest);
        self.host.push(host);
        self.main.push((load.main_us - base.main_us) / extra);
        self.total.push((load.total_us - base.total_us) / extra);
        self.wall.push((load.wall_us - base.wall_us) / extra);
    }

    fn summary(&self, name: &str, unit: &str) -> anyhow::Result<Direction> {
        let sum = |xs: &[f64]| summarize(xs).context("no runs (--runs 0)");
        let ratios: Vec<f64> = self
            .guest
            .iter()
            .zip(&self.host)
            .map(|(g, h)| g / h)
            .collect();
        let d = Direction {
            guest_mb_s: sum(&self.guest)?,
            host_mb_s: sum(&self.host)?,
            ratio: sum(&ratios)?,
            event_loop_cpu_us_per_frame: sum(&self.main)?,
            process_cpu_us_per_frame: sum(&self.total)?,
        };
        for (what, s) in [("guest", &d.guest_mb_s), ("host reference", &d.host_mb_s)] {
            println!(
                "{name} {what}: p50 {:.2} MB/s (min {:.2}, p90 {:.2}, max {:.2})",
                s.p50, s.min, s.p90, s.max
            );
        }
        let r = &d.ratio;
        println!(
            "{name} guest/host: p50 {:.2}% (min {:.2}%, max {:.2}%)",
            100.0 * r.p50,
            100.0 * r.min,
            100.0 * r.max
        );
        report_costs(unit, &self.main, &self.total, &self.wall)?;
        Ok(d)
    }
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    frames: u32,
    frame_len: u16,
    runs: usize,
    guest_to_host: Direction,
    host_to_guest: Direction,
}

/// One run of everything, adding to both directions' samples.
fn run_once(vmm: &Path, args: &Args, tx: &mut Samples, rx: &mut Samples) -> anyhow::Result<()> {
    let (frames, len, bytes) = (args.frames, args.len, usize::from(args.len));
    let (tx_base, _) = guest_to_host(vmm, 1, len)?;
    let (tx_load, stream) = guest_to_host(vmm, frames, len)?;
    let reference = reference_to_host(frames, len)?;
    for (who, got) in [("guest", &stream), ("host reference", &reference)] {
        if got.frames < frames {
            eprintln!(
                "guest -> host, {who}: {} of {frames} datagrams delivered",
                got.frames
            );
        }
    }
    tx.push(
        stream.mb_s(bytes)?,
        reference.mb_s(bytes)?,
        &tx_base,
        &tx_load,
        frames,
    );
    let (rx_base, _) = host_to_guest(vmm, 1, len)?;
    let (rx_load, secs) = host_to_guest(vmm, frames, len)?;
    let host_secs = reference_to_guest(frames, len)?;
    let mb = f64::from(frames) * bytes as f64 / 1e6;
    rx.push(mb / secs, mb / host_secs, &rx_base, &rx_load, frames);
    Ok(())
}

/// The measurements, run inside the namespace.
fn inside(vmm: &Path, args: &Args) -> anyhow::Result<()> {
    let (mut tx, mut rx) = (Samples::default(), Samples::default());
    for _ in 0..args.runs {
        run_once(vmm, args, &mut tx, &mut rx)?;
    }
    println!(
        "virtio-net: {} frames of {} bytes each way per run, {} runs (PVM: the probe's driver \
         is emulated)",
        args.frames, args.len, args.runs
    );
    let report = Report {
        bench: "net",
        frames: args.frames,
        frame_len: args.len,
        runs: args.runs,
        guest_to_host: tx.summary("guest -> host", "frame sent")?,
        host_to_guest: rx.summary("host -> guest", "frame received")?,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Creates the namespace and runs this benchmark again inside it.
fn outside(args: &Args) -> anyhow::Result<()> {
    let mut ns = NetNs::create().map_err(anyhow::Error::msg)?;
    ns.add_tap(TAP);
    ns.add_ipv4(TAP, &format!("{HOST_IP}/24"), (GUEST_IP, MAC_TEXT));
    // A burst to the guest waits in the TAP's queue (sized when a reader attaches).
    let qlen = (args.frames + 64).max(1000).to_string();
    let out = ns.run(&["ip", "link", "set", TAP, "txqueuelen", &qlen]);
    ensure!(out.status.success(), "set txqueuelen: {out:?}");
    let status = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .arg("--inside")
        .status()?;
    ensure!(
        status.success(),
        "the benchmark failed inside the namespace: {status}"
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.inside {
        return outside(&args);
    }
    let vmm = match &args.vmm {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("herd-vmm"),
    };
    inside(&vmm, &args)
}
