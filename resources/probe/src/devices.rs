//! The probe's virtio work on the real machine: find the entropy device among the announced
//! windows and run `probe.rng=N` (see `herd_probe::virtio`), reporting on COM1.

use herd_probe::cmdline::Options;
use herd_probe::hw::MmioRegs;
use herd_probe::report;
use herd_probe::serial::Com1;
use herd_probe::virtio::{self, DEVICE_RNG, Device};
use herd_probe::virtq::Virtq;

/// Largest `probe.rng=N` honoured (the buffer lives on the probe's 32 KiB stack).
const RNG_MAX: usize = 8192;

/// Runs what the command line asks of virtio devices.
pub fn run(con: &mut Com1, opts: &Options) {
    if opts.rng > 0 {
        report::rng(con, rng(opts));
    }
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
