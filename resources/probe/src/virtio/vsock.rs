//! The virtio-vsock protocol, as small as it can be: the receive (0) and transmit (1) queues
//! (the event queue stays unused), the CID from configuration space, one posted receive
//! buffer and one packet sent at a time, polled. `probe.vsock.listen=PORT[:N]` accepts N
//! streams (default 1) on PORT and echoes each payload back prefixed `echo:`, ending a stream
//! with a reset once the peer shuts it down; `probe.vsock.connect=PORT:MSG` connects to host
//! port PORT, sends MSG and prints the reply. Lines: `probe: vsock cid=N`,
//! `probe: vsock reply=<text>`, `probe: vsock conns=N`, `probe: vsock error <why>`.

use super::{Device, POLLS, Regs};
use crate::bytes::{u16_at, u32_at};
use crate::cmdline::parse_u32;
use crate::out::Sink;
use crate::virtq::{Desc, Virtq};

/// Device type id of a socket device.
pub const DEVICE_VSOCK: u32 = 19;
/// The packet header's size.
pub const HDR: usize = 44;
/// Payload bytes a receive buffer holds (our `buf_alloc` too).
pub const PAYLOAD: usize = 256;
/// A receive buffer.
pub const RX_BUF: usize = HDR + PAYLOAD;
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

/// What the command line asks of the vsock device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VsockOptions {
    /// (port, streams) to accept.
    pub listen: Option<(u32, u32)>,
    /// Host port to connect to, with `msg[..msg_len]`.
    pub connect: Option<u32>,
    pub msg: [u8; MAX_MSG],
    pub msg_len: usize,
}

impl VsockOptions {
    /// Whether anything is asked.
    pub fn any(&self) -> bool {
        self.listen.is_some() || self.connect.is_some()
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
            _ => {}
        }
    }
}

/// The header fields the probe looks at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hdr {
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub op: u16,
}

/// Writes a header from our `src` to the host's `dst` port.
pub fn header(buf: &mut [u8], cid: u64, h: Hdr, fwd_cnt: u32) {
    buf[..HDR].fill(0);
    buf[0..8].copy_from_slice(&cid.to_le_bytes());
    buf[8..16].copy_from_slice(&2u64.to_le_bytes());
    buf[16..20].copy_from_slice(&h.src_port.to_le_bytes());
    buf[20..24].copy_from_slice(&h.dst_port.to_le_bytes());
    buf[24..28].copy_from_slice(&h.len.to_le_bytes());
    buf[28..30].copy_from_slice(&1u16.to_le_bytes());
    buf[30..32].copy_from_slice(&h.op.to_le_bytes());
    buf[36..40].copy_from_slice(&(PAYLOAD as u32).to_le_bytes());
    buf[40..44].copy_from_slice(&fwd_cnt.to_le_bytes());
}

/// Reads a received header (`len` clamped to what the buffer holds).
pub fn parse(buf: &[u8; RX_BUF]) -> Hdr {
    Hdr {
        src_port: u32_at(buf, 16),
        dst_port: u32_at(buf, 20),
        len: u32_at(buf, 24).min(PAYLOAD as u32),
        op: u16_at(buf, 30),
    }
}

/// The device with its queues and receive buffer (all fixed in memory while in use).
pub struct Link<'a, R> {
    pub dev: &'a Device<R>,
    pub rx: &'a mut Virtq,
    pub tx: &'a mut Virtq,
    pub rxbuf: &'a mut [u8; RX_BUF],
    pub cid: u64,
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

impl<R: Regs> Link<'_, R> {
    /// Posts the receive buffer.
    pub fn post(&mut self) -> Result<(), &'static str> {
        let desc = Desc::writable(self.rxbuf.as_mut_ptr() as u64, RX_BUF as u32);
        if !self.rx.submit(&[desc]) {
            return Err("submit");
        }
        self.dev.notify(0);
        Ok(())
    }

    /// Sends one packet (header `h` with its `len` set from `payload`) and waits for it.
    pub fn send(&mut self, mut h: Hdr, payload: &[&[u8]], fwd: u32) -> Result<(), &'static str> {
        let mut buf = [0u8; HDR + PREFIX.len() + PAYLOAD];
        let mut at = HDR;
        for p in payload {
            buf[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        h.len = (at - HDR) as u32;
        header(&mut buf, self.cid, h, fwd);
        if !self
            .tx
            .submit(&[Desc::readable(buf.as_ptr() as u64, at as u32)])
        {
            return Err("submit");
        }
        self.dev.notify(1);
        wait(self.dev, self.tx).map(|_| ())
    }

    /// Waits for a packet, copies its payload into `out`, reposts the buffer.
    pub fn recv(&mut self, out: &mut [u8; PAYLOAD]) -> Result<Hdr, &'static str> {
        wait(self.dev, self.rx)?;
        // The device wrote the buffer behind the compiler's back (DMA).
        core::hint::black_box(&mut *self.rxbuf);
        let h = parse(self.rxbuf);
        out[..h.len as usize].copy_from_slice(&self.rxbuf[HDR..HDR + h.len as usize]);
        self.post()?;
        Ok(h)
    }
}

/// Reply header for a packet `h` received (ports swapped).
fn reply(h: &Hdr, op: u16) -> Hdr {
    Hdr {
        src_port: h.dst_port,
        dst_port: h.src_port,
        len: 0,
        op,
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
        len: 0,
        op: OP_REQUEST,
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
        let h = Hdr {
            src_port: 7,
            dst_port: 9,
            len: 3,
            op: OP_RW,
        };
        let mut buf = [0u8; RX_BUF];
        header(&mut buf, 3, h, 11);
        assert_eq!(parse(&buf), h);
        assert_eq!(&buf[8..16], &2u64.to_le_bytes());
        assert_eq!(&buf[40..44], &11u32.to_le_bytes());
        buf[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&buf).len, PAYLOAD as u32);
        let mut v = Vec::new();
        report_reply(&mut v, b"echo:x");
        report_num(&mut v, "cid", 3);
        report_error(&mut v, "refused");
        let want = "probe: vsock reply=echo:x\nprobe: vsock cid=3\nprobe: vsock error refused\n";
        assert_eq!(v, want.as_bytes());
    }
}
