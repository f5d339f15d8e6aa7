//! The virtio-blk protocol on top of [`Device`]: capacity from configuration space, then one
//! request at a time (header, at most one data buffer, status byte), as the command line asks:
//! `probe.blk.write=<sector>:<pattern>:<count>` (fill `count` sectors with the byte
//! `pattern + n` on the n-th disk), `probe.blk.discard=<sector>:<count>`,
//! `probe.blk.zeroes=<sector>:<count>[:unmap]` (one range each), `probe.blk.flush`,
//! `probe.blk.read=<sector>:<count>`. Every disk found gets the same sequence: capacity, id,
//! write, discard, write zeroes, flush, read; with `probe.blk.repeat=N` the write and read then
//! run N-1 more times without a line each (for benchmarks), ending with
//! `probe: blk repeat=N errors=E`; then the throughput workload of `bench`, if any. Lines:
//! `probe: blk capacity=N`, `probe: blk id=<id>`, `probe: blk read sector=S sum=0x..` and
//! `probe: blk status=ok|ioerr|unsupp|bad` after each request. DISCARD and WRITE_ZEROES are
//! negotiated when offered and sent either way (a device without them answers `unsupp`).

pub mod bench;

use core::ptr::{addr_of, read_volatile};

use super::{Device, Regs};
use crate::bytes::byte_sum;
use crate::out::Sink;
use crate::virtq::{Desc, Virtq};

/// Device type id of a block device.
pub const DEVICE_BLK: u32 = 2;
/// Bytes in a sector.
pub const SECTOR: usize = 512;
/// Most sectors one probe request moves (128 KiB: the buffer is a static of the guest binary).
pub const MAX_SECTORS: usize = 256;
/// Offset of configuration space (capacity is its first 8 bytes).
const CONFIG: u32 = 0x100;
/// Feature bit: the device honours FLUSH requests.
const F_FLUSH: u32 = 1 << 9;
/// Feature bits: the device takes DISCARD and WRITE_ZEROES requests.
const F_DISCARD: u32 = 1 << 13;
const F_WRITE_ZEROES: u32 = 1 << 14;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
/// Range flag: WRITE_ZEROES may deallocate.
const RANGE_UNMAP: u32 = 1;

/// What the command line asks of the block devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlkOptions {
    /// (sector, pattern byte, sectors) to write.
    pub write: Option<(u64, u8, u32)>,
    /// (sector, sectors) to discard after the write.
    pub discard: Option<(u64, u32)>,
    /// (sector, sectors, unmap) to write zeroes to after the discard.
    pub zeroes: Option<(u64, u32, bool)>,
    /// Whether to flush after those.
    pub flush: bool,
    /// (sector, sectors) to read and sum.
    pub read: Option<(u64, u32)>,
    /// How many times to run the write and the read (0 and 1: once).
    pub repeat: u32,
    /// A throughput workload to run last.
    pub bench: Option<bench::Workload>,
}

impl BlkOptions {
    /// Whether anything is asked.
    pub fn any(&self) -> bool {
        self.write.is_some()
            || self.discard.is_some()
            || self.zeroes.is_some()
            || self.flush
            || self.read.is_some()
            || self.bench.is_some()
    }

    /// Takes a `probe.blk.<key>=<value>` word (`value` empty for a bare `probe.blk.flush`).
    pub fn word(&mut self, key: &[u8], value: &[u8]) {
        let mut f = value.split(|&b| b == b':').map(parse_u64);
        match key {
            b"write" => {
                if let (Some(Some(s)), Some(Some(p)), Some(Some(n))) =
                    (f.next(), f.next(), f.next())
                {
                    self.write = Some((s, p as u8, n as u32));
                }
            }
            b"read" => {
                if let (Some(Some(s)), Some(Some(n))) = (f.next(), f.next()) {
                    self.read = Some((s, n as u32));
                }
            }
            b"discard" => {
                if let (Some(Some(s)), Some(Some(n))) = (f.next(), f.next()) {
                    self.discard = Some((s, n as u32));
                }
            }
            b"zeroes" => {
                let unmap = value.ends_with(b":unmap");
                if let (Some(Some(s)), Some(Some(n))) = (f.next(), f.next()) {
                    self.zeroes = Some((s, n as u32, unmap));
                }
            }
            b"seqread" | b"seqwrite" | b"randread" => {
                self.bench = bench::Workload::parse(key, value).or(self.bench);
            }
            b"flush" => self.flush = true,
            b"repeat" => self.repeat = f.next().flatten().map_or(0, |n| n as u32),
            _ => {}
        }
    }
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |n, &c| {
        Some(n * 10 + u64::from((c as char).to_digit(10)?))
    })
}

/// The word for a status byte.
pub fn status_word(status: u8) -> &'static [u8] {
    match status {
        0 => b"ok",
        1 => b"ioerr",
        2 => b"unsupp",
        _ => b"bad",
    }
}

/// A started block device and its queue.
pub struct Blk<'a, R> {
    dev: &'a Device<R>,
    q: &'a mut Virtq,
}

impl<'a, R: Regs> Blk<'a, R> {
    /// Negotiates (FLUSH if offered, so writes are not synced one by one; DISCARD and
    /// WRITE_ZEROES if offered), sets up queue 0 on `q`, and reads the capacity in sectors.
    pub fn start(dev: &'a Device<R>, q: &'a mut Virtq) -> Result<(Self, u64), &'static str> {
        dev.negotiate_features(F_FLUSH | F_DISCARD | F_WRITE_ZEROES)?;
        dev.setup_queue(0, q)?;
        dev.driver_ok()?;
        let cap = u64::from(dev.regs.read(CONFIG)) | (u64::from(dev.regs.read(CONFIG + 4)) << 32);
        Ok((Blk { dev, q }, cap))
    }

    /// Sends one request with `data` (guest address, length) as its data buffer, which the
    /// device writes for IN and GET_ID; returns the status byte.
    pub fn request(
        &mut self,
        kind: u32,
        sector: u64,
        data: Option<(u64, u32)>,
    ) -> Result<u8, &'static str> {
        let mut hdr = [0u8; 16];
        hdr[..4].copy_from_slice(&kind.to_le_bytes());
        hdr[8..].copy_from_slice(&sector.to_le_bytes());
        let mut status = 0xffu8;
        // The device reads the header and writes the status behind the compiler's back.
        core::hint::black_box(&mut hdr);
        core::hint::black_box(&mut status);
        let head = Desc::readable(hdr.as_ptr() as u64, 16);
        let tail = Desc::writable(addr_of!(status) as u64, 1);
        let ok = match data {
            Some((addr, len)) if kind == T_IN || kind == T_GET_ID => {
                self.q.submit(&[head, Desc::writable(addr, len), tail])
            }
            Some((addr, len)) => self.q.submit(&[head, Desc::readable(addr, len), tail]),
            None => self.q.submit(&[head, tail]),
        };
        if !ok {
            return Err("submit");
        }
        self.dev.kick_and_wait(0)?;
        self.q.take_used().ok_or("no-used-entry")?;
        // SAFETY: a local the device wrote through DMA; volatile so the write is seen.
        Ok(unsafe { read_volatile(addr_of!(status)) })
    }

    /// Sends a DISCARD or WRITE_ZEROES (`kind`) of one range; returns the status byte.
    pub fn range(
        &mut self,
        kind: u32,
        sector: u64,
        sectors: u32,
        flags: u32,
    ) -> Result<u8, &'static str> {
        let mut entry = [0u8; 16];
        entry[..8].copy_from_slice(&sector.to_le_bytes());
        entry[8..12].copy_from_slice(&sectors.to_le_bytes());
        entry[12..].copy_from_slice(&flags.to_le_bytes());
        // The device reads it behind the compiler's back.
        core::hint::black_box(&mut entry);
        self.request(kind, 0, Some((entry.as_ptr() as u64, 16)))
    }
}

fn line(s: &mut impl Sink, what: &[u8]) {
    s.put_bytes(b"probe: blk ");
    s.put_bytes(what);
}

fn status_line(s: &mut impl Sink, r: Result<u8, &'static str>) {
    match r {
        Ok(st) => {
            line(s, b"status=");
            s.put_bytes(status_word(st));
        }
        Err(why) => {
            line(s, b"error ");
            s.put_bytes(why.as_bytes());
        }
    }
    s.put(b'\n');
}

/// Runs the asked sequence on one disk, the `index`-th found; `buf` is the data buffer.
pub fn run<R: Regs>(
    s: &mut impl Sink,
    dev: &Device<R>,
    index: u8,
    opts: &BlkOptions,
    buf: &mut [u8; MAX_SECTORS * SECTOR],
) {
    let mut q = Virtq::default();
    let (mut blk, cap) = match Blk::start(dev, &mut q) {
        Ok(started) => started,
        Err(why) => return status_line(s, Err(why)),
    };
    line(s, b"capacity=");
    s.put_dec(cap);
    s.put(b'\n');
    let addr = buf.as_mut_ptr() as u64;
    let r = blk.request(T_GET_ID, 0, Some((addr, 20)));
    core::hint::black_box(&mut *buf);
    if r == Ok(0) {
        let id = &buf[..20];
        line(s, b"id=");
        s.put_bytes(&id[..id.iter().position(|&b| b == 0).unwrap_or(20)]);
        s.put(b'\n');
    }
    status_line(s, r);
    if let Some((sector, pattern, n)) = opts.write {
        let len = (n as usize).min(MAX_SECTORS) * SECTOR;
        buf[..len].fill(pattern.wrapping_add(index));
        core::hint::black_box(&mut *buf);
        status_line(s, blk.request(T_OUT, sector, Some((addr, len as u32))));
    }
    discard_and_zeroes(s, &mut blk, opts);
    if opts.flush {
        status_line(s, blk.request(T_FLUSH, 0, None));
    }
    if let Some((sector, n)) = opts.read {
        let len = (n as usize).min(MAX_SECTORS) * SECTOR;
        buf[..len].fill(0);
        let r = blk.request(T_IN, sector, Some((addr, len as u32)));
        core::hint::black_box(&mut *buf);
        line(s, b"read sector=");
        s.put_dec(sector);
        s.put_bytes(b" sum=");
        s.put_hex(u64::from(byte_sum(&buf[..len])));
        s.put(b'\n');
        status_line(s, r);
    }
    if opts.repeat > 1 {
        let errors = repeat(&mut blk, opts, addr);
        line(s, b"repeat=");
        s.put_dec(u64::from(opts.repeat));
        s.put_bytes(b" errors=");
        s.put_dec(u64::from(errors));
        s.put(b'\n');
    }
    if let Some(w) = &opts.bench {
        bench::run(s, &mut blk, w, addr);
    }
}

/// Sends the DISCARD and WRITE_ZEROES asked for, a status line each.
fn discard_and_zeroes<R: Regs>(s: &mut impl Sink, blk: &mut Blk<'_, R>, opts: &BlkOptions) {
    if let Some((sector, n)) = opts.discard {
        status_line(s, blk.range(T_DISCARD, sector, n, 0));
    }
    if let Some((sector, n, unmap)) = opts.zeroes {
        let flags = if unmap { RANGE_UNMAP } else { 0 };
        status_line(s, blk.range(T_WRITE_ZEROES, sector, n, flags));
    }
}

/// Runs the write and the read `repeat - 1` more times; returns how many requests failed.
fn repeat<R: Regs>(blk: &mut Blk<'_, R>, opts: &BlkOptions, addr: u64) -> u32 {
    let mut errors = 0;
    for _ in 1..opts.repeat {
        if let Some((sector, _, n)) = opts.write {
            let len = (n as usize).min(MAX_SECTORS) * SECTOR;
            errors += u32::from(blk.request(T_OUT, sector, Some((addr, len as u32))) != Ok(0));
        }
        if let Some((sector, n)) = opts.read {
            let len = (n as usize).min(MAX_SECTORS) * SECTOR;
            errors += u32::from(blk.request(T_IN, sector, Some((addr, len as u32))) != Ok(0));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_parse_and_bad_values_are_ignored() {
        let mut o = BlkOptions::default();
        assert!(!o.any());
        o.word(b"write", b"8:171:2");
        o.word(b"read", b"8:2");
        o.word(b"flush", b"");
        o.word(b"repeat", b"100");
        o.word(b"discard", b"16:8");
        o.word(b"zeroes", b"24:4:unmap");
        assert_eq!(o.repeat, 100);
        assert_eq!((o.discard, o.zeroes), (Some((16, 8)), Some((24, 4, true))));
        o.word(b"zeroes", b"32:2");
        assert_eq!(o.zeroes, Some((32, 2, false)));
        o.word(b"seqwrite", b"0:64:16");
        assert!(o.bench.is_some());
        assert_eq!(o.write, Some((8, 171, 2)));
        assert_eq!(o.read, Some((8, 2)));
        assert!(o.flush && o.any());
        let mut o = BlkOptions::default();
        o.word(b"write", b"8:x:2");
        o.word(b"read", b"8");
        o.word(b"discard", b"8");
        o.word(b"zeroes", b"x:1");
        o.word(b"seqread", b"0:8");
        o.word(b"bogus", b"1");
        assert_eq!(o, BlkOptions::default());
        assert_eq!(status_word(0), b"ok");
        assert_eq!(status_word(2), b"unsupp");
        assert_eq!(status_word(7), b"bad");
    }
}
