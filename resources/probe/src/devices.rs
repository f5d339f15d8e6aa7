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
use herd_probe::virtio::{self, DEVICE_RNG, Device, net, vsock};
use herd_probe::virtq::Virtq;

/// Largest `probe.rng=N` honoured (the buffer lives on the probe's 32 KiB stack).
const RNG_MAX: usize = 8192;

/// Runs what the command line asks of virtio devices.
pub fn run(con: &mut Com1, opts: &Options) {
    if opts.rng > 0 {
        report::rng(con, rng(opts));
    }
    if (opts.net_tx > 0 || opts.net_rx > 0)
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

fn vsock(con: &mut Com1, opts: &Options) -> Result<(), &'static str> {
    let dev = opts.virtio[..opts.virtio_count]
        .iter()
        .filter_map(|&base| Device::probe(MmioRegs(base)).ok())
        .find(|d| d.id == vsock::DEVICE_VSOCK)
        .ok_or("no-vsock-device")?;
    let (mut rx, mut tx) = (Virtq::default(), Virtq::default());
    let mut rxbuf = [0u8; vsock::RX_BUF];
    let cid = vsock::start(&dev, &rx, &tx)?;
    let mut link = vsock::Link {
        dev: &dev,
        rx: &mut rx,
        tx: &mut tx,
        rxbuf: &mut rxbuf,
        cid,
    };
    link.post()?;
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
    Ok(())
}

fn disks(con: &mut Com1, opts: &Options) {
    let mut buf = [0u8; MAX_SECTORS * SECTOR];
    let found = opts.virtio[..opts.virtio_count]
        .iter()
        .filter_map(|&base| Device::probe(MmioRegs(base)).ok())
        .filter(|d| d.id == DEVICE_BLK);
    for (i, dev) in found.enumerate() {
        blk::run(con, &dev, i as u8, &opts.blk, &mut buf);
    }
}

fn net(con: &mut Com1, opts: &Options) -> Result<(), &'static str> {
    let dev = opts.virtio[..opts.virtio_count]
        .iter()
        .filter_map(|&base| Device::probe(MmioRegs(base)).ok())
        .find(|d| d.id == net::DEVICE_NET)
        .ok_or("no-net-device")?;
    let (mut rx, mut tx) = (Virtq::default(), Virtq::default());
    let mac = net::start(&dev, &rx, &tx)?;
    net::report_mac(con, &mac);
    let mut frame = [0u8; net::HDR + net::FRAME_LEN];
    for n in 0..opts.net_tx {
        net::test_frame(&mac, n, &mut frame);
        net::send(&dev, &mut tx, frame.as_ptr() as u64, frame.len() as u32)?;
    }
    net::report_tx(con, opts.net_tx);
    let mut buf = [0u8; net::RX_BUF];
    let (mut got, mut other) = (0, 0);
    while got < opts.net_rx {
        let len = net::receive(&dev, &mut rx, buf.as_mut_ptr() as u64, buf.len() as u32)?;
        // The device wrote `buf` behind the compiler's back (DMA).
        core::hint::black_box(&mut buf);
        let frame = &buf[..len as usize];
        if net::is_test_frame(frame) {
            net::report_rx(con, &frame[net::HDR..]);
            got += 1;
        } else if other == net::MAX_OTHER {
            return Err("too-many-other-frames");
        } else {
            other += 1;
        }
    }
    Ok(())
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
