//! The virtio-vsock packet header (virtio 1.x §5.10.6): 44 little-endian bytes in front of
//! every packet, parsed from and written to plain byte slices. Validation here is what a
//! hostile guest meets first: a short header, a length the chain cannot hold, a payload over
//! our cap, the wrong source or destination CID, an unknown type or operation.

/// Size of the header in front of every packet.
pub const HDR_LEN: usize = 44;
/// The host's CID (`VMADDR_CID_HOST`).
pub const HOST_CID: u64 = 2;
/// Largest payload we accept or send in one packet (what Linux sends at most, too).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The only socket type we carry.
pub const TYPE_STREAM: u16 = 1;
/// `SHUTDOWN` flag: the sender will receive no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// `SHUTDOWN` flag: the sender will send no more.
pub const SHUTDOWN_SEND: u32 = 2;

/// Packet operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Request = 1,
    Response = 2,
    Rst = 3,
    Shutdown = 4,
    Rw = 5,
    CreditUpdate = 6,
    CreditRequest = 7,
}

impl Op {
    fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// Why a packet from the guest was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("{0} bytes cannot hold a vsock header")]
    Short(usize),
    #[error("header says {len} payload bytes, the chain holds {room}")]
    BadLength { len: u32, room: usize },
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
    TooBig(u32),
    #[error("source CID {0} is not the guest's")]
    WrongSource(u64),
    #[error("destination CID {0} is not the host's")]
    WrongDestination(u64),
    #[error("unknown socket type {0}")]
    UnknownType(u16),
    #[error("unknown operation {0}")]
    UnknownOp(u16),
}

impl PacketError {
    /// Whether the guest should get a reset for it (the addresses were sound, the rest was
    /// not); otherwise the packet is dropped silently.
    pub fn wants_reset(&self) -> bool {
        matches!(
            self,
            PacketError::UnknownType(_) | PacketError::UnknownOp(_)
        )
    }
}

/// A parsed header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

impl Header {
    /// Reads the header at the front of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, PacketError> {
        if bytes.len() < HDR_LEN {
            return Err(PacketError::Short(bytes.len()));
        }
        Ok(Self {
            src_cid: u64_at(bytes, 0),
            dst_cid: u64_at(bytes, 8),
            src_port: u32_at(bytes, 16),
            dst_port: u32_at(bytes, 20),
            len: u32_at(bytes, 24),
            type_: u16_at(bytes, 28),
            op: u16_at(bytes, 30),
            flags: u32_at(bytes, 32),
            buf_alloc: u32_at(bytes, 36),
            fwd_cnt: u32_at(bytes, 40),
        })
    }

    /// The header as it goes in front of a packet.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Checks a header from the guest with CID `guest_cid` whose chain holds `room` payload
    /// bytes; returns its operation.
    pub fn validate(&self, guest_cid: u64, room: usize) -> Result<Op, PacketError> {
        if self.src_cid != guest_cid {
            return Err(PacketError::WrongSource(self.src_cid));
        }
        if self.dst_cid != HOST_CID {
            return Err(PacketError::WrongDestination(self.dst_cid));
        }
        if self.len as usize > MAX_PAYLOAD {
            return Err(PacketError::TooBig(self.len));
        }
        if self.len as usize > room {
            let len = self.len;
            return Err(PacketError::BadLength { len, room });
        }
        if self.type_ != TYPE_STREAM {
            return Err(PacketError::UnknownType(self.type_));
        }
        let op = Op::from_u16(self.op).ok_or(PacketError::UnknownOp(self.op))?;
        if op != Op::Rw && self.len != 0 {
            let len = self.len;
            return Err(PacketError::BadLength { len, room: 0 });
        }
        Ok(op)
    }
}

/// Parses and checks a whole packet (header then payload) as the guest sent it; what the
/// fuzz target drives.
pub fn parse_packet(bytes: &[u8], guest_cid: u64) -> Result<(Header, Op, &[u8]), PacketError> {
    let hdr = Header::parse(bytes)?;
    let payload = &bytes[HDR_LEN..];
    let op = hdr.validate(guest_cid, payload.len())?;
    Ok((hdr, op, &payload[..hdr.len as usize]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(op: u16, len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1024,
            dst_port: 5000,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn headers_round_trip_little_endian() {
        let h = hdr(5, 3);
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[24..28], &3u32.to_le_bytes());
        assert_eq!(Header::parse(&b).unwrap(), h);
        let mut pkt = b.to_vec();
        pkt.extend_from_slice(b"abcdef");
        let (_, op, payload) = parse_packet(&pkt, 3).unwrap();
        assert_eq!((op, payload), (Op::Rw, &b"abc"[..]));
    }

    #[test]
    fn hostile_headers_are_refused_with_the_right_reason() {
        assert_eq!(Header::parse(&[0; 43]), Err(PacketError::Short(43)));
        let room = |h: Header, room| h.validate(3, room);
        assert_eq!(
            room(hdr(5, 10), 9),
            Err(PacketError::BadLength { len: 10, room: 9 })
        );
        assert_eq!(
            room(hdr(5, u32::MAX), usize::MAX),
            Err(PacketError::TooBig(u32::MAX))
        );
        assert_eq!(hdr(1, 0).validate(4, 0), Err(PacketError::WrongSource(3)));
        let mut h = hdr(1, 0);
        h.dst_cid = 3;
        assert_eq!(room(h, 0), Err(PacketError::WrongDestination(3)));
        h = hdr(1, 0);
        h.type_ = 2;
        assert!(room(h, 0).unwrap_err().wants_reset());
        assert_eq!(room(hdr(0, 0), 0), Err(PacketError::UnknownOp(0)));
        assert_eq!(room(hdr(8, 0), 0), Err(PacketError::UnknownOp(8)));
        assert!(matches!(
            room(hdr(1, 4), 4),
            Err(PacketError::BadLength { .. })
        ));
        assert!(!PacketError::WrongSource(1).wants_reset());
        for op in 1..=7 {
            assert!(room(hdr(op, 0), 0).is_ok());
        }
    }
}
