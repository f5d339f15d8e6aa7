//! One virtio-blk request (virtio 1.x §5.2.6) checked from its descriptor chain, apart from any
//! I/O: a device-readable 16-byte header first, data descriptors whose direction matches the
//! request type, and a device-writable status byte last.
//!
//! Everything the backend later touches is decided here: every buffer lies in guest memory,
//! the sectors lie inside the disk (with overflow-checked arithmetic), the request is no larger
//! than advertised, and writes to a read-only disk are refused. DISCARD and WRITE_ZEROES exist
//! only when negotiated (otherwise `UNSUPP`); their sector ranges are checked in `ranges`. A
//! chain with no usable status descriptor cannot be answered with a status and is completed
//! with 0 bytes.

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::ranges::{self, Range};

/// Bytes in a sector, the unit of `capacity` and of the header's `sector`.
pub const SECTOR_SIZE: u64 = 512;
/// Bytes in the request header (`type`, `reserved`, `sector`).
pub const HEADER_LEN: u32 = 16;
/// Bytes of the device id string a `GET_ID` request returns.
pub const ID_LEN: usize = 20;
/// Most data descriptors in one request (advertised as `seg_max`).
pub const MAX_SEGMENTS: usize = 128;
/// Largest data descriptor (advertised as `size_max`).
pub const MAX_SEGMENT_BYTES: u32 = 1 << 20;

/// Request types (the header's `type`).
pub mod kind {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
    pub const DISCARD: u32 = 11;
    pub const WRITE_ZEROES: u32 = 13;
}

/// Status byte values.
pub mod status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("descriptor chain loops, is longer than the queue or has a bad index")]
    BadChain,
    #[error("no device-writable status descriptor in guest memory at the end of the chain")]
    NoStatus,
    #[error("no device-readable 16-byte header in guest memory at the start of the chain")]
    BadHeader,
    #[error("unsupported request type {0}")]
    UnknownType(u32),
    #[error("descriptor at {0:#x} has the wrong direction for this request")]
    WrongDirection(u64),
    #[error("buffer at {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("{0} data descriptors, more than {MAX_SEGMENTS}")]
    TooManySegments(usize),
    #[error("data descriptor of {0} bytes, more than {MAX_SEGMENT_BYTES}")]
    SegmentTooLarge(u32),
    #[error("data length {0} is not a multiple of {SECTOR_SIZE}")]
    NotSectorMultiple(u64),
    #[error("sector {sector} + {len} bytes is outside the disk")]
    OutOfRange { sector: u64, len: u64 },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("range data of {0} bytes is not a whole number of 16-byte entries")]
    RangesLength(u64),
    #[error("{count} ranges, more than {max}")]
    TooManyRanges { count: u64, max: u32 },
    #[error("range of {sectors} sectors, more than {max}")]
    RangeTooLong { sectors: u32, max: u32 },
    #[error("range flags {0:#x} have bits the spec does not define")]
    UnknownRangeFlags(u32),
    #[error("UNMAP flag on a DISCARD range")]
    UnmapOnDiscard,
}

impl RequestError {
    /// The status the guest gets for this refusal.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::UnknownType(_)
            | RequestError::UnknownRangeFlags(_)
            | RequestError::UnmapOnDiscard => status::UNSUPP,
            _ => status::IOERR,
        }
    }
}

/// What a checked request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into the (device-writable) data buffers.
    In,
    /// Write the (device-readable) data buffers to sectors.
    Out,
    /// Make completed writes durable.
    Flush,
    /// Return the device id string.
    GetId,
    /// Deallocate the sector ranges (advisory).
    Discard,
    /// Make the sector ranges read as zeroes.
    WriteZeroes,
}

/// A request whose buffers and sectors have all been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestType,
    /// First sector (`In`/`Out`).
    pub sector: u64,
    /// Data buffers in order.
    pub data: Vec<(GuestAddress, u32)>,
    /// Total bytes of `data`.
    pub len: u64,
    /// The checked sector ranges (`Discard`/`WriteZeroes`).
    pub ranges: Vec<Range>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// A refused request: where its status goes (none if it has no usable status descriptor).
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected {
    pub status: Option<GuestAddress>,
    pub error: RequestError,
}

/// What the disk allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Size of the disk in sectors.
    pub sectors: u64,
    /// Whether writes are refused.
    pub read_only: bool,
    /// Whether DISCARD was negotiated.
    pub discard: bool,
    /// Whether WRITE_ZEROES was negotiated.
    pub write_zeroes: bool,
}

#[derive(Clone, Copy)]
struct Desc {
    addr: GuestAddress,
    len: u32,
    writable: bool,
}

/// The chain's descriptors, after checking that it really ends.
fn collect(chain: DescriptorChain<&GuestMemoryMmap>) -> Result<Vec<Desc>, RequestError> {
    let mut descs = Vec::new();
    let mut ends = false;
    for d in chain {
        descs.push(Desc {
            addr: d.addr(),
            len: d.len(),
            writable: d.is_write_only(),
        });
        ends = !d.has_next();
    }
    // The iterator stops quietly after `queue size` descriptors, at a bad index or an
    // unreadable descriptor; only a last descriptor without NEXT means the chain really ended.
    if !ends {
        return Err(RequestError::BadChain);
    }
    Ok(descs)
}

fn in_memory(mem: &GuestMemoryMmap, d: &Desc) -> Result<(), RequestError> {
    if GuestMemoryBackend::check_range(mem, d.addr, d.len as usize) {
        Ok(())
    } else {
        Err(RequestError::OutsideMemory {
            addr: d.addr.0,
            len: d.len,
        })
    }
}

/// Checks the whole chain against guest memory and `limits`.
pub fn parse(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    limits: Limits,
) -> Result<Request, Rejected> {
    let none = |error| Rejected {
        status: None,
        error,
    };
    let descs = collect(chain).map_err(none)?;
    let status = match descs.last() {
        Some(d) if descs.len() >= 2 && d.writable && d.len >= 1 => d.addr,
        _ => return Err(none(RequestError::NoStatus)),
    };
    if !GuestMemoryBackend::check_range(mem, status, 1) {
        return Err(none(RequestError::NoStatus));
    }
    parse_body(mem, &descs[..descs.len() - 1], status, limits).map_err(|error| Rejected {
        status: Some(status),
        error,
    })
}

/// Checks header and data descriptors (`descs` without the status descriptor).
fn parse_body(
    mem: &GuestMemoryMmap,
    descs: &[Desc],
    status: GuestAddress,
    limits: Limits,
) -> Result<Request, RequestError> {
    let header = descs[0];
    if header.writable || header.len < HEADER_LEN || in_memory(mem, &header).is_err() {
        return Err(RequestError::BadHeader);
    }
    let mut raw = [0u8; HEADER_LEN as usize];
    mem.read_slice(&mut raw, header.addr)
        .map_err(|_| RequestError::BadHeader)?;
    let type_ = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let sector = u64::from_le_bytes(raw[8..16].try_into().unwrap_or_default());
    let (kind, writable) = decode_type(type_, limits)?;
    let data = &descs[1..];
    if data.len() > MAX_SEGMENTS {
        return Err(RequestError::TooManySegments(data.len()));
    }
    let mut len = 0u64;
    for d in data {
        if d.writable != writable {
            return Err(RequestError::WrongDirection(d.addr.0));
        }
        if d.len > MAX_SEGMENT_BYTES {
            return Err(RequestError::SegmentTooLarge(d.len));
        }
        in_memory(mem, d)?;
        len += u64::from(d.len);
    }
    if matches!(kind, RequestType::In | RequestType::Out) {
        check_sectors(sector, len, limits)?;
    }
    let writes = matches!(
        kind,
        RequestType::Out | RequestType::Discard | RequestType::WriteZeroes
    );
    if writes && limits.read_only {
        return Err(RequestError::ReadOnly);
    }
    let data: Vec<_> = data.iter().map(|d| (d.addr, d.len)).collect();
    let ranges = match kind {
        RequestType::Discard | RequestType::WriteZeroes => {
            let discard = kind == RequestType::Discard;
            ranges::parse(mem, &data, len, discard, limits.sectors)?
        }
        _ => Vec::new(),
    };
    Ok(Request {
        kind,
        sector,
        data,
        len,
        ranges,
        status,
    })
}

/// The request type of header `type_` and whether its data buffers are device-writable.
/// DISCARD and WRITE_ZEROES are unknown types unless negotiated.
fn decode_type(type_: u32, limits: Limits) -> Result<(RequestType, bool), RequestError> {
    Ok(match type_ {
        kind::IN => (RequestType::In, true),
        kind::OUT => (RequestType::Out, false),
        kind::FLUSH => (RequestType::Flush, false),
        kind::GET_ID => (RequestType::GetId, true),
        kind::DISCARD if limits.discard => (RequestType::Discard, false),
        kind::WRITE_ZEROES if limits.write_zeroes => (RequestType::WriteZeroes, false),
        other => return Err(RequestError::UnknownType(other)),
    })
}

/// Checks that `len` bytes from `sector` are whole sectors inside the disk.
fn check_sectors(sector: u64, len: u64, limits: Limits) -> Result<(), RequestError> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::NotSectorMultiple(len));
    }
    let end = sector
        .checked_add(len / SECTOR_SIZE)
        .filter(|&end| end <= limits.sectors);
    if end.is_none() {
        return Err(RequestError::OutOfRange { sector, len });
    }
    Ok(())
}
