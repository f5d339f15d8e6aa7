//! The virtio-vsock protocol, as small as it can be: the receive (0) and transmit (1) queues
//! (the event queue stays unused), the CID from configuration space, [`RX_SLOTS`] posted
//! receive buffers that each hold the largest packet, one packet sent at a time, polled.
//! `probe.vsock.listen=PORT[:N]` accepts N streams (default 1) on PORT and echoes each
//! payload back prefixed `echo:`, ending a stream with a reset once the peer shuts it down;
//! `probe.vsock.connect=PORT:MSG` connects to host port PORT, sends MSG and prints the reply;
//! `probe.vsock.sink=PORT[:discard]` and `probe.vsock.source=PORT:BYTES` move bulk data (see
//! [`bulk`]).
//! Lines: `probe: vsock cid=N`, `probe: vsock reply=<text>`, `probe: vsock conns=N`,
//! `probe: vsock error <why>`.

pub mod bulk;

use super::{Device, POLLS, Regs};
use crate::bytes::{u16_at, u32_at};
use crate::cmdline::parse_u32;
use crate::out::Sink;
use crate::virtq::{Desc, Virtq};

/// Device type id of a socket device.
pub const DEVICE_VSOCK: u32 = 19;
/// The packet header's size.
pub const HDR: usize = 44;
/// Payload bytes the echo and connect streams take at once (their `buf_alloc`).
pub const PAYLOAD: usize = 256;
/// The largest payload herd-vmm's device sends or takes in one packet (as Linux's driver).
pub const MAX_PACKET: usize = 64 * 1024;
/// Receive buffers kept posted, buffer i at descriptor i.
pub const RX_SLOTS: usize = 4;
/// One receive buffer: a header and the largest payload.
pub const RX_SLOT: usize = HDR + MAX_PACKET;
/// Memory for all receive buffers.
pub const RX_MEM: usize = RX_SLOTS * RX_SLOT;
/// Longest `MSG` of `probe.vsock.connect`.
pub const MAX_MSG: usize = 32;
/// Streams `listen` tracks at once.
pub const MAX_CONNS: usize = 8;
const PREFIX: &[u8] = b"echo:";
/// Our port for `connect`.
const LOCAL_PORT: u32 = 1024;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
/// `SHUTDOWN` flags: we will receive no more, send no more.
pub const SHUTDOWN_BOTH: u32 = 3;

/// What the command line asks of the vsock device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VsockOptions {
    /// (port, streams) to accept.
    pub listen: Option<(u32, u32)>,
    /// Host port to connect to, with `msg[..msg_len]`.
    pub connect: Option<u32>,
    pub msg: [u8; MAX_MSG],
    pub msg_len: usize,
    /// (port, whether every byte is checked) of a stream to read to its end ([`bulk::sink`]).
    pub sink: Option<(u32, bool)>,
    /// (port, bytes) of a stream to send bytes on ([`bulk::source`]).
    pub source: Option<(u32, u32)>,
}

impl VsockOptions {
    /// Whether anything is asked.
    pub fn any(&self) -> bool {
        self.listen.is_some() || self.connect.is_some() || self.bulk()
    }

    /// Whether a bulk stream is asked.
    pub fn bulk(&self) -> bool {
        self.sink.is_some() || self.source.is_some()
    }

    /// Takes a `probe.vsock.<key>=<value>` word.
    pub fn word(&mut self, key: &[u8], value: &[u8]) {
        let colon = value.iter().position(|&b| b == b':');
        let (first, rest) = match colon {
            Some(i) => (&value[..i], Some(&value[i + 1..])),
            None => (value, None),
        };
        let Some(port) = parse_u32(first) else {
            return;
        };
        match (key, rest) {
            (b"listen", None) => self.listen = Some((port, 1)),
            (b"listen", Some(n)) => {
                let n = parse_u32(n).unwrap_or(1);
                self.listen = Some((port, n.clamp(1, MAX_CONNS as u32)));
            }
            (b"connect", Some(msg)) if msg.len() <= MAX_MSG => {
                self.connect = Some(port);
                self.msg[..msg.len()].copy_from_slice(msg);
                self.msg_len = msg.len();
            }
            (b"sink", None) => self.sink = Some((port, true)),
            (b"sink", Some(b"discard")) => self.sink = Some((port, false)),
            (b"source", Some(bytes)) => {
                if let Some(bytes) = parse_u32(bytes) {
                    self.source = Some((port, bytes));
                }
            }
            _ => {}
        }
    }
}

/// The header fields the probe looks at (the CIDs and type are implied).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hdr {
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub op: u16,
    pub flags: u32,
    /// The sender's receive buffer and what it has consumed of it: its credit.
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

/// Writes the header of a packet from us (CID `cid`) to the host.
pub fn header(buf: &mut [u8], cid: u64, h: &Hdr) {
    buf[..HDR].fill(0);
    buf[0..8].copy_from_slice(&cid.to_le_bytes());
    buf[8..16].copy_from_slice(&2u64.to_le_bytes());
    buf[16..20].copy_from_slice(&h.src_port.to_le_bytes());
    buf[20..24].copy_from_slice(&h.dst_port.to_le_bytes());
    buf[24..28].copy_from_slice(&h.len.to_le_bytes());
    buf[28..30].copy_from_slice(&1u16.to_le_bytes());
    buf[30..32].copy_from_slice(&h.op.to_le_bytes());
    buf[32..36].copy_from_slice(&h.flags.to_le_bytes());
    buf[36..40].copy_from_slice(&h.buf_alloc.to_le_bytes());
    buf[40..44].copy_from_slice(&h.fwd_cnt.to_le_bytes());
}

/// Reads the header of a received packet of `buf.len()` bytes (`len` clamped to what it
/// holds); one too short for a header reads as all zeros (op 0, which nobody handles).
pub fn parse(buf: &[u8]) -> Hdr {
    let Some(room) = buf.len().checked_sub(HDR) else {
        return Hdr::default();
    };
    Hdr {
        src_port: u32_at(buf, 16),
        dst_port: u32_at(buf, 20),
        len: u32_at(buf, 24).min(room as u32),
        op: u16_at(buf, 30),
        flags: u32_at(buf, 32),
        buf_alloc: u32_at(buf, 36),
        fwd_cnt: u32_at(buf, 40),
    }
}

/// The vsock buffers too large for the probe's 32 KiB stack.
#[repr(C)]
pub struct Buffers {
    /// The receive buffers of a [`Link`].
    pub rx: [u8; RX_MEM],
    /// The bulk test pattern ([`bulk::fill_pattern`]).
    pub pattern: [u8; bulk::PATTERN_LEN],
}

/// The device with its queues and receive buffers (all fixed in memory while in use).
pub struct Link<'a, R> {
    dev: &'a Device<R>,
    rx: &'a mut Virtq,
    tx: &'a mut Virtq,
    rxmem: &'a mut [u8; RX_MEM],
    cid: u64,
    /// The `buf_alloc` our packets advertise (streams of the current mode).
    pub buf_alloc: u32,
    /// A connection request that came while a bulk stream was busy, for its next accept.
    pending: Option<Hdr>,
}

/// Negotiates, sets up the receive and transmit queues, sets DRIVER_OK; returns the CID.
pub fn start<R: Regs>(dev: &Device<R>, rx: &Virtq, tx: &Virtq) -> Result<u64, &'static str> {
    dev.negotiate()?;
    dev.setup_queue(0, rx)?;
    dev.setup_queue(1, tx)?;
    dev.driver_ok()?;
    Ok(u64::from(dev.config(0)) | (u64::from(dev.config(4)) << 32))
}

fn wait<R: Regs>(dev: &Device<R>, q: &mut Virtq) -> Result<(u32, u32), &'static str> {
    for _ in 0..POLLS {
        if let Some(u) = q.take_used() {
            return Ok(u);
        }
        dev.poll()?;
    }
    Err("timeout")
}

impl<'a, R: Regs> Link<'a, R> {
    /// A link over a started device (see [`start`]) with guest CID `cid`, receiving into
    /// `rxmem`; nothing posted yet.
    pub fn new(
        dev: &'a Device<R>,
        rx: &'a mut Virtq,
        tx: &'a mut Virtq,
        rxmem: &'a mut [u8; RX_MEM],
        cid: u64,
    ) -> Self {
        let buf_alloc = PAYLOAD as u32;
        Link {
            dev,
            rx,
            tx,
            rxmem,
            cid,
            buf_alloc,
            pending: None,
        }
    }

    /// Posts every receive buffer.
    pub fn post_all(&mut self) -> Result<(), &'static str> {
        (0..RX_SLOTS).try_for_each(|slot| self.post(slot))
    }

    /// Posts receive buffer `slot` (at descriptor `slot`).
    fn post(&mut self, slot: usize) -> Result<(), &'static str> {
        let addr = self.rxmem[slot * RX_SLOT..].as_mut_ptr() as u64;
        if !self
            .rx
            .submit_at(slot as u16, Desc::writable(addr, RX_SLOT as u32))
        {
            return Err("submit");
        }
        self.dev.notify(0);
        Ok(())
    }

    /// Sends one packet whose payload is the concatenation of `parts` (at most
    /// `PREFIX.len() + PAYLOAD` bytes) and waits for it.
    pub fn send(&mut self, h: Hdr, parts: &[&[u8]], fwd: u32) -> Result<(), &'static str> {
        let mut buf = [0u8; PREFIX.len() + PAYLOAD];
        let mut at = 0;
        for p in parts {
            buf[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        self.send_in_place(h, &buf[..at], fwd)
    }

    /// Sends one packet with our `buf_alloc` and `fwd` consumed; the device reads `payload`
    /// where it is (no copy), and we wait until it has.
    pub fn send_in_place(
        &mut self,
        mut h: Hdr,
        payload: &[u8],
        fwd: u32,
    ) -> Result<(), &'static str> {
        (h.len, h.buf_alloc, h.fwd_cnt) = (payload.len() as u32, self.buf_alloc, fwd);
        let mut hdr = [0u8; HDR];
        header(&mut hdr, self.cid, &h);
        let chain = [
            Desc::readable(hdr.as_ptr() as u64, HDR as u32),
            Desc::readable(payload.as_ptr() as u64, h.len),
        ];
        let n = if payload.is_empty() { 1 } else { 2 };
        if !self.tx.submit(&chain[..n]) {
            return Err("submit");
        }
        self.dev.notify(1);
        wait(self.dev, self.tx).map(|_| ())
    }

    /// Takes a packet if one has arrived: `f` sees its header and payload where the device
    /// put them, then the buffer is posted again.
    pub fn try_recv_with<T>(
        &mut self,
        f: impl FnOnce(&Hdr, &[u8]) -> T,
    ) -> Result<Option<(Hdr, T)>, &'static str> {
        let Some((id, written)) = self.rx.take_used() else {
            return Ok(None);
        };
        let slot = id as usize;
        if slot >= RX_SLOTS {
            return Err("bad-used-entry");
        }
        // The device wrote the buffer behind the compiler's back (DMA).
        let buf = core::hint::black_box(&mut self.rxmem[slot * RX_SLOT..][..RX_SLOT]);
        let buf = &buf[..(written as usize).min(RX_SLOT)];
        let h = parse(buf);
        let payload = buf.get(HDR..HDR + h.len as usize).unwrap_or_default();
        let t = f(&h, payload);
        self.post(slot)?;
        Ok(Some((h, t)))
    }

    /// Waits for a packet and handles it as [`Link::try_recv_with`] does.
    pub fn recv_with<T>(
        &mut self,
        mut f: impl FnMut(&Hdr, &[u8]) -> T,
    ) -> Result<(Hdr, T), &'static str> {
        for _ in 0..POLLS {
            if let Some(got) = self.try_recv_with(&mut f)? {
                return Ok(got);
            }
            self.dev.poll()?;
        }
        Err("timeout")
    }

    /// Waits for a packet and copies its payload (up to [`PAYLOAD`] bytes: the credit
    /// echo and connect streams give) into `out`.
    pub fn recv(&mut self, out: &mut [u8; PAYLOAD]) -> Result<Hdr, &'static str> {
        let (mut h, n) = self.recv_with(|_, payload| {
            let n = payload.len().min(PAYLOAD);
            out[..n].copy_from_slice(&payload[..n]);
            n
        })?;
        h.len = n as u32;
        Ok(h)
    }
}

/// Reply header for a packet `h` received (ports swapped).
fn reply(h: &Hdr, op: u16) -> Hdr {
    Hdr {
        src_port: h.dst_port,
        dst_port: h.src_port,
        op,
        ..Hdr::default()
    }
}

/// Connects to host `port`, sends `msg`, returns the reply's length in `out`.
pub fn connect<R: Regs>(
    link: &mut Link<'_, R>,
    port: u32,
    msg: &[u8],
    out: &mut [u8; PAYLOAD],
) -> Result<usize, &'static str> {
    let ours = Hdr {
        src_port: LOCAL_PORT,
        dst_port: port,
        op: OP_REQUEST,
        ..Hdr::default()
    };
    link.send(ours, &[], 0)?;
    let mut fwd = 0;
    loop {
        let h = link.recv(out)?;
        if h.src_port != port || h.dst_port != LOCAL_PORT {
            continue;
        }
        match h.op {
            OP_RESPONSE => link.send(Hdr { op: OP_RW, ..ours }, &[msg], 0)?,
            OP_RW => {
                fwd += h.len;
                link.send(Hdr { op: OP_RST, ..ours }, &[], fwd)?;
                return Ok(h.len as usize);
            }
            OP_RST => return Err("refused"),
            OP_SHUTDOWN => return Err("shut-down"),
            _ => {}
        }
    }
}

/// Accepts `n` streams on `port` and echoes until each is shut down; returns how many.
pub fn listen<R: Regs>(link: &mut Link<'_, R>, port: u32, n: u32) -> Result<u32, &'static str> {
    // (peer port, bytes consumed), peer port 0 for a free slot.
    let mut conns = [(0u32, 0u32); MAX_CONNS];
    let (mut accepted, mut closed) = (0, 0);
    let mut data = [0u8; PAYLOAD];
    while closed < n {
        let h = link.recv(&mut data)?;
        let slot = conns.iter().position(|c| c.0 == h.src_port && c.0 != 0);
        match (h.op, slot) {
            (OP_REQUEST, None) if h.dst_port == port && accepted < n && h.src_port != 0 => {
                let free = conns.iter().position(|c| c.0 == 0).ok_or("no-slot")?;
                conns[free] = (h.src_port, 0);
                accepted += 1;
                link.send(reply(&h, OP_RESPONSE), &[], 0)?;
            }
            (OP_RW, Some(i)) => {
                conns[i].1 += h.len;
                let payload = &data[..h.len as usize];
                link.send(reply(&h, OP_RW), &[PREFIX, payload], conns[i].1)?;
            }
            (OP_SHUTDOWN | OP_RST, Some(i)) => {
                if h.op == OP_SHUTDOWN {
                    link.send(reply(&h, OP_RST), &[], conns[i].1)?;
                }
                conns[i] = (0, 0);
                closed += 1;
            }
            (OP_CREDIT_REQUEST, Some(i)) => {
                link.send(reply(&h, OP_CREDIT_UPDATE), &[], conns[i].1)?;
            }
            (OP_REQUEST | OP_RW, _) => link.send(reply(&h, OP_RST), &[], 0)?,
            _ => {}
        }
    }
    Ok(closed)
}

/// `probe: vsock <what>=<n>`.
pub fn report_num(s: &mut impl Sink, what: &str, n: u64) {
    s.put_bytes(b"probe: vsock ");
    s.put_bytes(what.as_bytes());
    s.put(b'=');
    s.put_dec(n);
    s.put(b'\n');
}

/// `probe: vsock reply=<text>`.
pub fn report_reply(s: &mut impl Sink, text: &[u8]) {
    s.put_bytes(b"probe: vsock reply=");
    s.put_bytes(text);
    s.put(b'\n');
}

/// `probe: vsock error <why>`.
pub fn report_error(s: &mut impl Sink, why: &str) {
    s.put_bytes(b"probe: vsock error ");
    s.put_bytes(why.as_bytes());
    s.put(b'\n');
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use super::*;

    #[test]
    fn options_headers_and_lines() {
        let mut o = VsockOptions::default();
        o.word(b"listen", b"1234");
        assert_eq!(o.listen, Some((1234, 1)));
        o.word(b"listen", b"1234:3");
        assert_eq!(o.listen, Some((1234, 3)));
        o.word(b"connect", b"5000:hi");
        assert_eq!((o.connect, &o.msg[..o.msg_len]), (Some(5000), &b"hi"[..]));
        o.word(b"connect", b"x:hi");
        o.word(b"connect", b"6000");
        assert_eq!(o.connect, Some(5000));
        assert!(!o.bulk());
        o.word(b"sink", b"6000");
        o.word(b"source", b"6001:1048576");
        assert_eq!(
            (o.sink, o.source),
            (Some((6000, true)), Some((6001, 1 << 20)))
        );
        o.word(b"sink", b"6002:1");
        o.word(b"source", b"6003");
        o.word(b"source", b"6003:-1");
        assert_eq!(
            (o.sink, o.source),
            (Some((6000, true)), Some((6001, 1 << 20)))
        );
        o.word(b"sink", b"6004:discard");
        assert_eq!(o.sink, Some((6004, false)));
        assert!(o.bulk());
        let h = Hdr {
            src_port: 7,
            dst_port: 9,
            len: 3,
            op: OP_RW,
            flags: SHUTDOWN_BOTH,
            buf_alloc: 4096,
            fwd_cnt: 11,
        };
        let mut buf = [0u8; HDR + 8];
        header(&mut buf, 3, &h);
        assert_eq!(parse(&buf), h);
        assert_eq!(&buf[8..16], &2u64.to_le_bytes());
        assert_eq!(&buf[40..44], &11u32.to_le_bytes());
        buf[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&buf).len, 8, "clamped to what arrived");
        assert_eq!(parse(&buf[..HDR - 1]), Hdr::default());
        let mut v = Vec::new();
        report_reply(&mut v, b"echo:x");
        report_num(&mut v, "cid", 3);
        report_error(&mut v, "refused");
        let want = "probe: vsock reply=echo:x\nprobe: vsock cid=3\nprobe: vsock error refused\n";
        assert_eq!(v, want.as_bytes());
    }
}
