//! Throughput workloads for benchmarks: `probe.blk.seqread=S:N:K` and `probe.blk.seqwrite=S:N:K`
//! move N sectors from sector S in requests of K sectors (at most [`MAX_SECTORS`]);
//! `probe.blk.randread=S:N:C:SEED` reads C blocks of 4 KiB at pseudo-random 4 KiB-aligned
//! places in sectors `[S, S+N)` ([`Lcg`] from SEED, which the host benchmark replays). One
//! request in flight at a time (queue depth 1), data not looked at.
//!
//! The host times the loop by the arrival of two short lines around it:
//! `probe: blk bench start` just before the first request and `probe: blk bench end` just after
//! the last, then `probe: blk bench requests=R errors=E`.

use super::{Blk, MAX_SECTORS, SECTOR, T_IN, T_OUT, line, parse_u64};
use crate::out::Sink;
use crate::virtio::Regs;

/// Sectors in one random read (4 KiB).
pub const RANDOM_SECTORS: u32 = 8;

/// What a benchmark workload does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Read `sectors` sectors from `start`, `per_request` at a time.
    SeqRead {
        start: u64,
        sectors: u64,
        per_request: u32,
    },
    /// Write them likewise.
    SeqWrite {
        start: u64,
        sectors: u64,
        per_request: u32,
    },
    /// `count` 4 KiB reads at random 4 KiB-aligned sectors of `[start, start + sectors)`.
    RandRead {
        start: u64,
        sectors: u64,
        count: u32,
        seed: u64,
    },
}

impl Workload {
    /// Parses the value of a `seqread`, `seqwrite` or `randread` word (`key`).
    pub fn parse(key: &[u8], value: &[u8]) -> Option<Workload> {
        let mut f = value.split(|&b| b == b':').map(parse_u64);
        let mut next = || f.next().flatten();
        let (start, sectors, third) = (next()?, next()?, next()?);
        let per_request = u32::try_from(third).ok().filter(|&k| k > 0)?;
        Some(match key {
            b"seqread" => Workload::SeqRead {
                start,
                sectors,
                per_request,
            },
            b"seqwrite" => Workload::SeqWrite {
                start,
                sectors,
                per_request,
            },
            b"randread" => Workload::RandRead {
                start,
                sectors,
                count: per_request,
                seed: next()?,
            },
            _ => return None,
        })
    }
}

/// The pseudo-random sequence of `randread` (Knuth's MMIX multiplier): a few instructions per
/// request, and the same on the host, which replays it.
#[derive(Debug, Clone, Copy)]
pub struct Lcg(u64);

impl Lcg {
    /// A sequence starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Lcg(seed)
    }

    /// The first sector of the next 4 KiB block among the `sectors` sectors from `start`
    /// (`start` itself if they hold no whole block).
    pub fn next_block(&mut self, start: u64, sectors: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let blocks = (sectors / u64::from(RANDOM_SECTORS)).max(1);
        start + (self.0 >> 33) % blocks * u64::from(RANDOM_SECTORS)
    }
}

/// Runs `w` with the data buffer at guest address `addr` (at least [`MAX_SECTORS`] sectors),
/// printing the marker lines and the count; returns nothing, errors are counted.
pub fn run<R: Regs>(s: &mut impl Sink, blk: &mut Blk<'_, R>, w: &Workload, addr: u64) {
    line(s, b"bench start\n");
    let (requests, errors) = match *w {
        Workload::SeqRead {
            start,
            sectors,
            per_request,
        } => sequential(blk, T_IN, start, sectors, per_request, addr),
        Workload::SeqWrite {
            start,
            sectors,
            per_request,
        } => sequential(blk, T_OUT, start, sectors, per_request, addr),
        Workload::RandRead {
            start,
            sectors,
            count,
            seed,
        } => {
            let mut lcg = Lcg::new(seed);
            let len = RANDOM_SECTORS * SECTOR as u32;
            let mut errors = 0;
            for _ in 0..count {
                let sector = lcg.next_block(start, sectors);
                errors += u32::from(blk.request(T_IN, sector, Some((addr, len))) != Ok(0));
            }
            (count, errors)
        }
    };
    line(s, b"bench end\n");
    line(s, b"bench requests=");
    s.put_dec(u64::from(requests));
    s.put_bytes(b" errors=");
    s.put_dec(u64::from(errors));
    s.put(b'\n');
}

/// Moves `sectors` sectors from `start` with `kind` requests of `per_request` sectors (the last
/// may be shorter); returns (requests, failed requests).
fn sequential<R: Regs>(
    blk: &mut Blk<'_, R>,
    kind: u32,
    start: u64,
    sectors: u64,
    per_request: u32,
    addr: u64,
) -> (u32, u32) {
    let step = u64::from(per_request.min(MAX_SECTORS as u32));
    let (mut requests, mut errors) = (0, 0);
    let (mut at, end) = (start, start.saturating_add(sectors));
    while at < end {
        let n = step.min(end - at);
        let len = (n * SECTOR as u64) as u32;
        errors += u32::from(blk.request(kind, at, Some((addr, len))) != Ok(0));
        requests += 1;
        at += n;
    }
    (requests, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_parse_into_workloads_and_bad_values_are_refused() {
        assert_eq!(
            Workload::parse(b"seqread", b"0:32768:256"),
            Some(Workload::SeqRead {
                start: 0,
                sectors: 32768,
                per_request: 256
            })
        );
        assert_eq!(
            Workload::parse(b"seqwrite", b"8:16:4"),
            Some(Workload::SeqWrite {
                start: 8,
                sectors: 16,
                per_request: 4
            })
        );
        assert_eq!(
            Workload::parse(b"randread", b"0:2048:100:7"),
            Some(Workload::RandRead {
                start: 0,
                sectors: 2048,
                count: 100,
                seed: 7
            })
        );
        for (key, value) in [
            (&b"seqread"[..], &b"0:16:0"[..]),
            (b"seqread", b"0:16"),
            (b"seqread", b"0:16:4294967296"),
            (b"randread", b"0:16:4"),
            (b"other", b"0:16:4"),
        ] {
            assert_eq!(Workload::parse(key, value), None, "{value:?}");
        }
    }

    #[test]
    fn random_blocks_are_aligned_inside_the_span_and_repeat_from_the_seed() {
        let (mut a, mut b) = (Lcg::new(42), Lcg::new(42));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let s = a.next_block(64, 1024);
            assert_eq!(s, b.next_block(64, 1024));
            assert!(s >= 64 && s + 8 <= 64 + 1024 && (s - 64) % 8 == 0, "{s}");
            seen.insert(s);
        }
        assert!(seen.len() > 100, "only {} distinct blocks", seen.len());
        assert_eq!(Lcg::new(1).next_block(5, 3), 5);
    }
}
