//! The sector ranges of DISCARD and WRITE_ZEROES requests (virtio 1.2 §5.2.6): their data is
//! a list of 16-byte `virtio_blk_discard_write_zeroes` entries (`sector`, `num_sectors`,
//! `flags`), which may be split across data descriptors anywhere. Every entry is checked before
//! any is served, so a refused request touches nothing: flags the spec does not define, or
//! UNMAP on a DISCARD, get `UNSUPP` (as the spec requires); a data length that is not whole
//! entries, more entries or sectors than we advertise, and sectors past the end of the disk
//! get `IOERR`.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::request::{RequestError, SECTOR_SIZE};

/// Bytes in one range entry.
pub const RANGE_LEN: u64 = 16;
/// `flags` bit: WRITE_ZEROES may deallocate the range (not allowed on DISCARD).
pub const FLAG_UNMAP: u32 = 1;
/// Most sectors in one DISCARD range (1 GiB: a hole punch that size is still quick).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 21;
/// Most ranges in one DISCARD request.
pub const MAX_DISCARD_RANGES: u32 = 16;
/// The discard granularity we suggest, in sectors: 4 KiB, the host file system's block, so a
/// guest's discards free whole blocks instead of zeroing parts of them.
pub const DISCARD_ALIGNMENT_SECTORS: u32 = 8;
/// Most sectors in one WRITE_ZEROES range (32 MiB). Kept well below the discard limit because
/// a file system without fallocate support makes us write the zeroes on the event loop.
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 16;
/// Most ranges in one WRITE_ZEROES request (Linux sends one).
pub const MAX_WRITE_ZEROES_RANGES: u32 = 1;

/// One checked range: inside the disk, within the limits, flags understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First sector.
    pub sector: u64,
    /// Sectors in the range (0 is allowed and does nothing).
    pub sectors: u32,
    /// WRITE_ZEROES only: the guest allows deallocating the range.
    pub unmap: bool,
}

impl Range {
    /// (byte offset, byte length) in the backing file.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.sector * SECTOR_SIZE,
            u64::from(self.sectors) * SECTOR_SIZE,
        )
    }
}

/// Reads and checks the ranges of a DISCARD (`discard`) or WRITE_ZEROES request whose data
/// buffers (`len` bytes in all, already known to lie in guest memory) are `data`, on a disk
/// of `disk_sectors` sectors.
pub fn parse(
    mem: &GuestMemoryMmap,
    data: &[(GuestAddress, u32)],
    len: u64,
    discard: bool,
    disk_sectors: u64,
) -> Result<Vec<Range>, RequestError> {
    let (max_ranges, max_sectors) = if discard {
        (MAX_DISCARD_RANGES, MAX_DISCARD_SECTORS)
    } else {
        (MAX_WRITE_ZEROES_RANGES, MAX_WRITE_ZEROES_SECTORS)
    };
    if len == 0 || !len.is_multiple_of(RANGE_LEN) {
        return Err(RequestError::RangesLength(len));
    }
    let count = len / RANGE_LEN;
    if count > u64::from(max_ranges) {
        return Err(RequestError::TooManyRanges {
            count,
            max: max_ranges,
        });
    }
    // At most 16 ranges of 16 bytes: small enough to gather in one buffer.
    let mut raw = Vec::with_capacity(len as usize);
    for &(addr, n) in data {
        let at = raw.len();
        raw.resize(at + n as usize, 0);
        mem.read_slice(&mut raw[at..], addr)
            .map_err(|_| RequestError::OutsideMemory {
                addr: addr.0,
                len: n,
            })?;
    }
    raw.chunks_exact(RANGE_LEN as usize)
        .map(|entry| check(entry, discard, max_sectors, disk_sectors))
        .collect()
}

/// Checks one 16-byte entry.
fn check(
    entry: &[u8],
    discard: bool,
    max_sectors: u32,
    disk_sectors: u64,
) -> Result<Range, RequestError> {
    let sector = u64::from_le_bytes(entry[0..8].try_into().unwrap_or_default());
    let sectors = u32::from_le_bytes(entry[8..12].try_into().unwrap_or_default());
    let flags = u32::from_le_bytes(entry[12..16].try_into().unwrap_or_default());
    if flags & !FLAG_UNMAP != 0 {
        return Err(RequestError::UnknownRangeFlags(flags));
    }
    let unmap = flags & FLAG_UNMAP != 0;
    if discard && unmap {
        return Err(RequestError::UnmapOnDiscard);
    }
    if sectors > max_sectors {
        return Err(RequestError::RangeTooLong {
            sectors,
            max: max_sectors,
        });
    }
    let inside = sector
        .checked_add(u64::from(sectors))
        .is_some_and(|end| end <= disk_sectors);
    if !inside {
        return Err(RequestError::OutOfRange {
            sector,
            len: u64::from(sectors) * SECTOR_SIZE,
        });
    }
    Ok(Range {
        sector,
        sectors,
        unmap,
    })
}
