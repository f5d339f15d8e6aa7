//! The probe's virtio work on the real machine: find the entropy device among the announced
//! windows and run `probe.rng=N` (see `herd_probe::virtio`), and the network card's
//! `probe.net.tx=N` / `probe.net.rx=N` (see `herd_probe::virtio::net`), and the
//! `probe.blk.*` sequence on every block device (see `herd_probe::virtio::blk`), and the
//! `probe.vsock.*` streams (see `herd_probe::virtio::vsock`), reporting on COM1.

use herd_probe::cmdline::Options;
use herd_probe::hw::MmioRegs;
use herd_probe::report;
use herd_probe::serial::Com1;
use herd_probe::virtio::blk::{self, DEVICE_BLK, MAX_SECTORS, SECTOR};
use herd_probe::virtio::vsock::bulk;
use herd_probe::virtio::{self, DEVICE_RNG, Device, net, vsock};
use herd_probe::virtq::Virtq;

/// Largest `probe.rng=N` honoured (the buffer lives on the probe's 32 KiB stack).
const RNG_MAX: usize = 8192;

/// The block data buffer: 128 KiB does not fit on the 32 KiB stack. Its own NOLOAD section
/// (`link.ld`) keeps those zeroes out of the ELF file.
#[unsafe(link_section = ".dma_buffer")]
static mut BLK_BUF: [u8; MAX_SECTORS * SECTOR] = [0; MAX_SECTORS * SECTOR];

/// Runs what the command line asks of virtio devices.
pub fn run(con: &mut Com1, opts: &Options) {
    if opts.rng > 0 {
        report::rng(con, rng(opts));
    }
    if opts.net.any()
        && let Err(why) = net(con, opts)
    {
        net::report_error(con, why);
    }
    if opts.blk.any() {
        disks(con, opts);
    }
    if opts.vsock.any()
        && let Err(why) = vsock(con, opts)
    {
        vsock::report_error(con, why);
    }
}

/// Where the vsock buffers live: low RAM (every herd-vmm memory map has RAM up to
/// `0x9fc00`) that held only boot data the report has already read (the command line at
/// `0x20000`); outside the image, so they add nothing to the image files. `serving` reuses
/// them once `run` is done.
pub const VSOCK_BUFFERS: u64 = 0x1_0000;
const _: () = assert!(VSOCK_BUFFERS as usize + size_of::<vsock::Buffers>() <= 0x9_f000);

fn vsock(con: &mut Com1, opts: &Options) -> Result<(), &'static str> {
    let dev = opts.virtio[..opts.virtio_count]
        .iter()
        .filter_map(|&base| Device::probe(MmioRegs(base)).ok())
        .find(|d| d.id == vsock::DEVICE_VSOCK)
        .ok_or("no-vsock-device")?;
    // SAFETY: identity-mapped RAM (see VSOCK_BUFFERS) that no Rust object covers: the report
    // copied what it needed out of the boot data there, and this, the only reference to it,
    // is made once (`run` runs once). Any byte pattern is a valid `Buffers`.
    let bufs = unsafe { &mut *(VSOCK_BUFFERS as *mut vsock::Buffers) };
    let (mut rx, mut tx) = (Virtq::default(), Virtq::default());
    let cid = vsock::start(&dev, &rx, &tx)?;
    let mut link = vsock::Link::new(&dev, &mut rx, &mut tx, &mut bufs.rx, cid);
    link.post_all()?;
    vsock::report_num(con, "cid", cid);
    let v = &opts.vsock;
    let mut out = [0u8; vsock::PAYLOAD];
    if let Some(port) = v.connect {
        let n = vsock::connect(&mut link, port, &v.msg[..v.msg_len], &mut out)?;
        vsock::report_reply(con, &out[..n]);
    }
    if let Some((port, n)) = v.listen {
        let done = vsock::listen(&mut link, port, n)?;
        vsock::report_num(con, "conns", u64::from(done));
    }
    if v.bulk() {
        bulk::fill_pattern(&mut bufs.pattern);
    }
    if let Some((port, check)) = v.sink {
        let pattern = check.then_some(&bufs.pattern);
        let (bytes, bad) = bulk::sink(&mut link, port, pattern)?;
        bulk::report_sink(con, bytes, bad);
    }
    if let Some((port, bytes)) = v.source {
        let sent = bulk::source(&mut link, port, u64::from(bytes), &bufs.pattern)?;
        bulk::report_source(con, sent);
    }
    Ok(())
}

fn disks(con: &mut Com1, opts: &Options) {
    let ptr = &raw mut BLK_BUF;
    // SAFETY: the probe runs on one CPU without interrupts and this is the only place that
    // takes the buffer, once, so the reference is unique.
    let buf = unsafe { &mut *ptr };
    let found = opts.virtio[..opts.virtio_count]
        .iter()
        .filter_map(|&base| Device::probe(MmioRegs(base)).ok())
        .filter(|d| d.id == DEVICE_BLK);
    for (i, dev) in found.enumerate() {
        blk::run(con, &dev, i as u8, &opts.blk, buf);
    }
}

fn net(con: &mut Com1, opts: &Options) -> Result<(), &'static str> {
    let dev = opts.virtio[..opts.virtio_count]
        .iter()
        .filter_map(|&base| Device::probe(MmioRegs(base)).ok())
        .find(|d| d.id == net::DEVICE_NET)
        .ok_or("no-net-device")?;
    let n = &opts.net;
    let (mut rx, mut tx) = (Virtq::default(), Virtq::default());
    let (mac, features) = net::start(&dev, &rx, &tx, n.offload)?;
    net::report_mac(con, &mac);
    net::report_features(con, features);
    let mut frame = [0u8; net::TX_BUF];
    for i in 0..n.tx {
        let len = net::frame(n, &mac, i, &mut frame);
        net::send(&dev, &mut tx, frame.as_ptr() as u64, len as u32)?;
    }
    net::report_tx(con, n.tx);
    if n.rx > 0 {
        let got = net_receive(con, &dev, &mut rx, n)?;
        net::report_rx_count(con, got);
    }
    Ok(())
}

/// Receives until `n.rx` frames of ours came, reporting each (see `net::take`).
fn net_receive(
    con: &mut Com1,
    dev: &Device<MmioRegs>,
    rx: &mut Virtq,
    n: &net::NetOptions,
) -> Result<u32, &'static str> {
    let mut buf = [0u8; net::RX_BUF];
    let (mut got, mut other) = (0, 0);
    while got < n.rx {
        let len = net::receive(dev, rx, buf.as_mut_ptr() as u64, buf.len() as u32)?;
        // The device wrote `buf` behind the compiler's back (DMA).
        core::hint::black_box(&mut buf);
        if net::take(con, n, &mut buf[..len as usize]) {
            got += 1;
        } else if other == net::MAX_OTHER {
            return Err("too-many-other-frames");
        } else {
            other += 1;
        }
    }
    Ok(got)
}

fn rng(opts: &Options) -> Result<(u32, u32), &'static str> {
    let dev = opts.virtio[..opts.virtio_count]
        .iter()
        .filter_map(|&base| Device::probe(MmioRegs(base)).ok())
        .find(|d| d.id == DEVICE_RNG)
        .ok_or("no-rng-device")?;
    let len = (opts.rng as usize).min(RNG_MAX);
    let mut buf = [0u8; RNG_MAX];
    let mut q = Virtq::default();
    let addr = buf.as_mut_ptr() as u64;
    let n = virtio::read_entropy(&dev, &mut q, addr, len as u32, opts.rng_hostile)?;
    // The device wrote `buf` behind the compiler's back (DMA): make it forget what it knew.
    core::hint::black_box(&mut buf);
    Ok((n, virtio::distinct(&buf[..n as usize])))
}
