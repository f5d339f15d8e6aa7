//! The byte format of the binary fuzz inputs: little-endian fields one after the other. The
//! targets decode with [`Reader`], the seed writer encodes with [`Writer`], so the two cannot
//! disagree about the layout.

/// Reads fields from fuzz input. Every read succeeds: past the end, bytes read as zero, so any
/// input decodes (a short one just means small values and empty lists) and libFuzzer never
/// wastes runs on inputs a stricter decoder would refuse.
#[derive(Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over the whole input.
    pub fn new(data: &'a [u8]) -> Self {
        Self { rest: data }
    }

    /// The next `n` bytes, or fewer at the end of the input.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = rest;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let got = self.bytes(N);
        out[..got.len()].copy_from_slice(got);
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// A length-prefixed (`u16`) byte string.
    pub fn blob(&mut self) -> &'a [u8] {
        let n = self.u16();
        self.bytes(n.into())
    }

    /// Everything not read yet.
    pub fn rest(self) -> &'a [u8] {
        self.rest
    }
}

/// Writes fields in the format [`Reader`] reads (for seeds).
#[derive(Debug, Default)]
pub struct Writer {
    out: Vec<u8>,
}

impl Writer {
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.out.extend_from_slice(b);
        self
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes(&[v])
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    /// A length-prefixed byte string; `b` must be shorter than 64 KiB.
    pub fn blob(&mut self, b: &[u8]) -> &mut Self {
        let n = u16::try_from(b.len()).expect("seed blobs are under 64 KiB");
        self.u16(n).bytes(b)
    }

    /// The encoded input.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_reads_past_the_end_are_zero() {
        let bytes = Writer::default()
            .u8(1)
            .u16(0x0302)
            .u32(7)
            .u64(u64::MAX)
            .blob(b"ab")
            .finish();
        let mut r = Reader::new(&bytes);
        assert_eq!(
            (r.u8(), r.u16(), r.u32(), r.u64()),
            (1, 0x0302, 7, u64::MAX)
        );
        assert_eq!(r.blob(), b"ab");
        assert_eq!((r.u64(), r.blob()), (0, &b""[..]));
        let mut short = Reader::new(&[0xff]);
        assert_eq!(short.u32(), 0xff);
    }
}
