//! Bulk vsock streams for throughput, each accepted from a host client (`CONNECT <port>`):
//! - `probe.vsock.sink=PORT` reads one stream to its end, checking every byte against the
//!   test pattern and granting credit as it consumes (a `CREDIT_UPDATE` for each half of its
//!   `buf_alloc` consumed); once the host shuts its side it answers `bytes=N bad=M\n` on the
//!   stream, shuts down and waits for the host's reset. Line: `probe: vsock sink bytes=N bad=M`.
//!   With `:discard` it only counts (answer and line without ` bad=M`): checking is most of
//!   the probe's work per byte, which matters where its code is emulated.
//! - `probe.vsock.source=PORT:BYTES` sends BYTES pattern bytes on one stream in packets of up
//!   to 64 KiB (the most the device takes) that the device reads straight from the pattern
//!   buffer, never past the credit the host advertises (it waits for the host's updates),
//!   then shuts down and waits for the reset. Line: `probe: vsock source bytes=N`.
//!
//! The pattern: byte i of a stream is `i % 251`. 251 is prime, so a lost, repeated or
//! reordered packet shifts everything after it unless its length is a multiple of 251 (and
//! then the byte count is off). Checking compares 8-byte words, sending costs nothing per
//! byte: the probe's code is slow where guest kernel code is emulated (PVM).

use super::{
    Hdr, Link, MAX_PACKET, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST,
    OP_RW, OP_SHUTDOWN, PAYLOAD, RX_SLOTS, SHUTDOWN_BOTH, reply,
};
use crate::out::Sink;
use crate::virtio::Regs;

/// The pattern repeats every `PERIOD` bytes.
pub const PERIOD: u64 = 251;
/// The pattern buffer: any packet's payload, wherever the stream is, is one slice of it.
pub const PATTERN_LEN: usize = MAX_PACKET + PERIOD as usize;
/// The sink's `buf_alloc`: what its posted receive buffers hold.
pub const SINK_BUF_ALLOC: u32 = (RX_SLOTS * MAX_PACKET) as u32;

/// Fills `buf` with the pattern from stream offset 0.
pub fn fill_pattern(buf: &mut [u8]) {
    let first = buf.len().min(PERIOD as usize);
    for (i, b) in buf[..first].iter_mut().enumerate() {
        *b = i as u8;
    }
    // Doubling copies keep the filled length a multiple of the period, so the copy lines up.
    let mut filled = first;
    while filled < buf.len() {
        let n = filled.min(buf.len() - filled);
        buf.copy_within(..n, filled);
        filled += n;
    }
}

/// How many bytes of `got` differ from `want` (the same length), comparing words first.
pub fn mismatches(got: &[u8], want: &[u8]) -> u64 {
    let count = |g: &[u8], w: &[u8]| g.iter().zip(w).filter(|(a, b)| a != b).count() as u64;
    let (got8, want8) = (got.chunks_exact(8), want.chunks_exact(8));
    let tail = count(got8.remainder(), want8.remainder());
    let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().expect("chunks of 8"));
    let words = got8.zip(want8).filter(|(g, w)| word(g) != word(w));
    words.map(|(g, w)| count(g, w)).sum::<u64>() + tail
}

/// What the host lets us send: its `buf_alloc` minus what we sent that it has not consumed
/// (`fwd_cnt`); the counters wrap at 32 bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Credit {
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Credit {
    /// Takes the host's view from any packet of the stream.
    pub fn update(&mut self, h: &Hdr) {
        (self.buf_alloc, self.fwd_cnt) = (h.buf_alloc, h.fwd_cnt);
    }

    /// Bytes we may send once we have sent `sent` in total.
    pub fn room(&self, sent: u64) -> u32 {
        let in_flight = (sent as u32).wrapping_sub(self.fwd_cnt);
        self.buf_alloc.saturating_sub(in_flight)
    }
}

/// Whether `h` belongs to `stream` (our side's header: our port, then the host's).
fn is_ours(h: &Hdr, stream: &Hdr) -> bool {
    h.src_port == stream.dst_port && h.dst_port == stream.src_port
}

/// Resets what opens a stream or sends data where we are not listening.
fn refuse<R: Regs>(link: &mut Link<'_, R>, h: &Hdr) -> Result<(), &'static str> {
    match h.op {
        OP_REQUEST | OP_RW => link.send(reply(h, OP_RST), &[], 0),
        _ => Ok(()),
    }
}

/// Handles a packet for no stream we serve: a connection request waits (one at most) for
/// the next [`accept`], as a listening socket's backlog would; anything else is refused.
fn other<R: Regs>(link: &mut Link<'_, R>, h: &Hdr) -> Result<(), &'static str> {
    if h.op == OP_REQUEST && link.pending.is_none() {
        link.pending = Some(*h);
        return Ok(());
    }
    refuse(link, h)
}

/// Waits for a host client's `REQUEST` on `port` (or takes the one that waited) and accepts
/// it; returns our side's header for the stream and the request (the host's first credit).
/// A request for another port meanwhile waits too, if the one place is free.
fn accept<R: Regs>(link: &mut Link<'_, R>, port: u32) -> Result<(Hdr, Hdr), &'static str> {
    loop {
        let h = match link.pending.filter(|p| p.dst_port == port) {
            Some(h) => link.pending.take().unwrap_or(h),
            None => link.recv_with(|_, _| ())?.0,
        };
        if h.op == OP_REQUEST && h.dst_port == port && h.src_port != 0 {
            link.send(reply(&h, OP_RESPONSE), &[], 0)?;
            return Ok((reply(&h, OP_RW), h));
        }
        other(link, &h)?;
    }
}

/// Shuts our side of `stream` down (both directions) and waits for the host's `RST`.
fn close<R: Regs>(link: &mut Link<'_, R>, stream: &Hdr, fwd: u32) -> Result<(), &'static str> {
    let bye = Hdr {
        op: OP_SHUTDOWN,
        flags: SHUTDOWN_BOTH,
        ..*stream
    };
    link.send(bye, &[], fwd)?;
    loop {
        let (h, ()) = link.recv_with(|_, _| ())?;
        match is_ours(&h, stream) {
            true if h.op == OP_RST => return Ok(()),
            true => {}
            false => other(link, &h)?,
        }
    }
}

/// `probe.vsock.sink=PORT`: reads one stream to its end; returns (bytes, bytes that were not
/// the pattern if `check` has it).
pub fn sink<R: Regs>(
    link: &mut Link<'_, R>,
    port: u32,
    check: Option<&[u8; PATTERN_LEN]>,
) -> Result<(u64, Option<u64>), &'static str> {
    link.buf_alloc = SINK_BUF_ALLOC;
    let (stream, _) = accept(link, port)?;
    let update = Hdr {
        op: OP_CREDIT_UPDATE,
        ..stream
    };
    let (mut got, mut bad, mut told) = (0u64, 0u64, 0u32);
    loop {
        let at = (got % PERIOD) as usize;
        let (h, wrong) = link.recv_with(|h, data| match check {
            Some(pattern) if h.op == OP_RW && is_ours(h, &stream) => pattern
                .get(at..at + data.len())
                .map_or(data.len() as u64, |want| mismatches(data, want)),
            _ => 0,
        })?;
        if !is_ours(&h, &stream) {
            other(link, &h)?;
            continue;
        }
        match h.op {
            OP_RW => {
                (got, bad) = (got + u64::from(h.len), bad + wrong);
                if (got as u32).wrapping_sub(told) >= SINK_BUF_ALLOC / 2 {
                    told = got as u32;
                    link.send(update, &[], told)?;
                }
            }
            OP_CREDIT_REQUEST => link.send(update, &[], got as u32)?,
            OP_SHUTDOWN => break,
            OP_RST => return Err("reset"),
            _ => {}
        }
    }
    let bad = check.map(|_| bad);
    let mut line = Line::new();
    summary(&mut line, got, bad);
    line.put(b'\n');
    link.send(stream, &[line.text()], got as u32)?;
    close(link, &stream, got as u32)?;
    Ok((got, bad))
}

/// `probe.vsock.source=PORT:BYTES`: sends `bytes` pattern bytes on one stream; returns how
/// many went out.
pub fn source<R: Regs>(
    link: &mut Link<'_, R>,
    port: u32,
    bytes: u64,
    pattern: &[u8; PATTERN_LEN],
) -> Result<u64, &'static str> {
    link.buf_alloc = PAYLOAD as u32;
    let (stream, request) = accept(link, port)?;
    let update = Hdr {
        op: OP_CREDIT_UPDATE,
        ..stream
    };
    let mut credit = Credit::default();
    credit.update(&request);
    // Bytes the host sent us (we drop them), for the `fwd_cnt` of our packets.
    let (mut sent, mut fwd) = (0u64, 0u32);
    while sent < bytes {
        let room = credit.room(sent);
        // Packets from the host only matter for credit: wait for one only without any.
        let got = match room {
            0 => Some(link.recv_with(|_, _| ())?),
            _ => link.try_recv_with(|_, _| ())?,
        };
        if let Some((h, ())) = got {
            if !is_ours(&h, &stream) {
                other(link, &h)?;
                continue;
            }
            credit.update(&h);
            match h.op {
                OP_RW => fwd = fwd.wrapping_add(h.len),
                OP_CREDIT_REQUEST => link.send(update, &[], fwd)?,
                OP_RST => return Err("reset"),
                OP_SHUTDOWN => return Err("shut-down"),
                _ => {}
            }
            continue;
        }
        let n = (bytes - sent).min(u64::from(room)).min(MAX_PACKET as u64) as usize;
        let at = (sent % PERIOD) as usize;
        link.send_in_place(stream, &pattern[at..at + n], fwd)?;
        sent += n as u64;
    }
    close(link, &stream, fwd)?;
    Ok(sent)
}

/// A short line built in place (the sink's answer on its stream).
#[derive(Debug)]
struct Line {
    buf: [u8; 48],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Line {
            buf: [0; 48],
            len: 0,
        }
    }

    fn text(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Sink for Line {
    fn put(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }
}

/// `bytes=N bad=M`, or `bytes=N` when nothing was checked.
fn summary(s: &mut impl Sink, bytes: u64, bad: Option<u64>) {
    s.put_bytes(b"bytes=");
    s.put_dec(bytes);
    if let Some(bad) = bad {
        s.put_bytes(b" bad=");
        s.put_dec(bad);
    }
}

/// `probe: vsock sink bytes=N bad=M` (or without ` bad=M`).
pub fn report_sink(s: &mut impl Sink, bytes: u64, bad: Option<u64>) {
    s.put_bytes(b"probe: vsock sink ");
    summary(s, bytes, bad);
    s.put(b'\n');
}

/// `probe: vsock source bytes=N`.
pub fn report_source(s: &mut impl Sink, bytes: u64) {
    s.put_bytes(b"probe: vsock source bytes=");
    s.put_dec(bytes);
    s.put(b'\n');
}

#[cfg(test)]
mod tests {
    use std::vec;
    use std::vec::Vec;

    use super::*;

    #[test]
    fn the_pattern_is_the_offset_modulo_251_for_any_length() {
        for len in [0, 1, 250, 251, 252, 1000, PATTERN_LEN] {
            let mut buf = vec![0xaa; len];
            fill_pattern(&mut buf);
            assert!(buf.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        }
    }

    #[test]
    fn mismatches_count_every_differing_byte_in_words_and_tail() {
        let mut want = vec![0u8; 29];
        fill_pattern(&mut want);
        let mut got = want.clone();
        assert_eq!(mismatches(&got, &want), 0);
        got[3] ^= 1;
        got[5] ^= 1;
        got[27] = 0;
        assert_eq!(mismatches(&got, &want), 3);
        assert_eq!(mismatches(&[], &[]), 0);
    }

    #[test]
    fn credit_is_what_the_host_has_room_for_across_counter_wraps() {
        let mut c = Credit::default();
        assert_eq!(c.room(0), 0, "nothing before the host says");
        let h = |buf_alloc, fwd_cnt| Hdr {
            buf_alloc,
            fwd_cnt,
            ..Hdr::default()
        };
        c.update(&h(256 * 1024, 0));
        assert_eq!(c.room(0), 256 * 1024);
        assert_eq!(c.room(200 * 1024), 56 * 1024);
        assert_eq!(c.room(300 * 1024), 0, "overrun reads as none");
        c.update(&h(256 * 1024, 100 * 1024));
        assert_eq!(c.room(300 * 1024), 56 * 1024);
        let sent = (1u64 << 32) + 10;
        c.update(&h(4096, u32::MAX - 5));
        assert_eq!(c.room(sent), 4096 - 16);
    }

    #[test]
    fn lines_for_the_console_and_the_stream() {
        let mut v = Vec::new();
        report_sink(&mut v, 1 << 20, Some(0));
        report_sink(&mut v, 7, None);
        report_source(&mut v, 5);
        let want = "probe: vsock sink bytes=1048576 bad=0\nprobe: vsock sink bytes=7\n\
            probe: vsock source bytes=5\n";
        assert_eq!(v, want.as_bytes());
        let mut line = Line::new();
        summary(&mut line, 12, Some(3));
        assert_eq!(line.text(), b"bytes=12 bad=3");
        line.put_bytes(&[b'x'; 100]);
        assert_eq!(line.len, 48, "bounded");
    }
}
