//! `probe.end=serve` on the real machine: the probe stays up like a long-running app,
//! answering requests on the vsock device (the protocol and the environment's say are
//! `herd_probe::serve`) until herd-vmm asks it to stop on the control port (COM2) or it has
//! answered `PROBE_EXIT_AFTER` checks; a `restored` line on COM2 gives it a new identity
//! (`herd_probe::serve::control`). Between polls of the receive ring and COM2 it halts
//! until the next LAPIC timer tick ([`Ticker`], which also counts the ticks `count`
//! answers), so an idle probe costs the host a wake-up every [`TICK_MS`], not a busy CPU; a
//! request waits at most a tick or two for each packet. Without a usable vsock device it
//! says why and still serves the control port.

use herd_probe::cmdline::Options;
use herd_probe::hw::MmioRegs;
use herd_probe::serial::{COM2, Com1};
use herd_probe::serve::control::{self, ControlLine};
use herd_probe::serve::{self, Server};
use herd_probe::virtio::{Device, vsock};
use herd_probe::virtq::Virtq;

use crate::devices::VSOCK_BUFFERS;
use crate::ticker::Ticker;

/// The LAPIC timer period: how long a packet or control request can wait for the probe.
const TICK_MS: u32 = 10;

type Link<'a> = vsock::Link<'a, MmioRegs>;

/// Serves until stopped; prints `probe: serve port=P` once serving, a `probe: restored ...`
/// line for each restore, `probe: control=<line>` if asked to stop, and
/// `probe: serve checks=N`.
pub fn run(con: &mut Com1, opts: &Options) {
    let ticker = Ticker::start(TICK_MS);
    let want = &opts.serve;
    let mut server = Server::new(want.port, want.health);
    server.id = want.instance_id;
    let limit = want.exit_after.unwrap_or(u32::MAX);
    let found = (opts.virtio[..opts.virtio_count].iter())
        .zip(opts.virtio_irqs)
        .filter_map(|(&base, irq)| Some((Device::probe(MmioRegs(base)).ok()?, irq)))
        .find(|(d, _)| d.id == vsock::DEVICE_VSOCK)
        .map(|(dev, irq)| {
            // Packets then wake the loop at once instead of at the next tick.
            ticker.wake_on(irq);
            dev
        })
        .ok_or("no-vsock-device");
    let (mut rx, mut tx) = (Virtq::default(), Virtq::default());
    let mut link = match &found {
        Ok(dev) => open(dev, &mut rx, &mut tx),
        Err(why) => Err(*why),
    }
    .map_err(|why| vsock::report_error(con, why))
    .ok();
    serve::report_num(con, "port", u64::from(want.port));
    let mut control = ControlLine::default();
    let mut com2 = COM2;
    loop {
        server.ticks = ticker.count();
        if let Some(l) = link.as_mut()
            && let Err(why) = drain(l, &mut server, limit)
        {
            vsock::report_error(con, why);
            link = None;
        }
        if server.checks >= limit {
            break;
        }
        if let Some(request) = control.poll(|| com2.try_get())
            && control::handle(con, &mut server, request)
        {
            break;
        }
        ticker.wait();
    }
    serve::report_num(con, "checks", u64::from(server.checks));
}

/// Starts the device and posts the receive buffers.
fn open<'a>(
    dev: &'a Device<MmioRegs>,
    rx: &'a mut Virtq,
    tx: &'a mut Virtq,
) -> Result<Link<'a>, &'static str> {
    // SAFETY: identity-mapped RAM that no Rust object covers (see VSOCK_BUFFERS); `run` of
    // `devices`, the other user, is done with it, and this is the only reference now. Any
    // byte pattern is a valid buffer.
    let rxmem = unsafe { &mut *(VSOCK_BUFFERS as *mut [u8; vsock::RX_MEM]) };
    let cid = vsock::start(dev, rx, tx)?;
    let mut link = vsock::Link::new(dev, rx, tx, rxmem, cid);
    link.post_all()?;
    Ok(link)
}

/// Handles every packet that has arrived (each buffer is posted again as it is taken),
/// stopping early once `limit` checks are answered.
fn drain(link: &mut Link<'_>, server: &mut Server, limit: u32) -> Result<(), &'static str> {
    while server.checks < limit {
        let Some((_, replies)) = link.try_recv_with(|h, payload| server.packet(h, payload))? else {
            return Ok(());
        };
        for r in replies.iter() {
            link.send_in_place(r.hdr, r.payload.as_bytes(), r.fwd)?;
        }
    }
    Ok(())
}
