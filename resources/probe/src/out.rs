//! Byte sinks and hand-rolled number formatting (no `core::fmt`: it costs thousands of
//! instructions per call on an emulated CPU).

/// Something that takes output one byte at a time (the serial port, or a buffer in tests).
pub trait Sink {
    /// Emits one byte.
    fn put(&mut self, b: u8);

    /// Emits all bytes of `s`.
    fn put_bytes(&mut self, s: &[u8]) {
        for &b in s {
            self.put(b);
        }
    }

    /// Emits `v` as lowercase hex with a `0x` prefix and no padding.
    fn put_hex(&mut self, v: u64) {
        let mut buf = [0u8; 18];
        let n = hex(v, &mut buf);
        self.put_bytes(&buf[buf.len() - n..]);
    }

    /// Emits `v` in decimal.
    fn put_dec(&mut self, v: u64) {
        let mut buf = [0u8; 20];
        let n = dec(v, &mut buf);
        self.put_bytes(&buf[buf.len() - n..]);
    }
}

/// Writes `0x` and the hex digits of `v` right-aligned into `buf`; returns how many bytes.
pub fn hex(mut v: u64, buf: &mut [u8; 18]) -> usize {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = DIGITS[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    buf[i - 1] = b'x';
    buf[i - 2] = b'0';
    buf.len() - (i - 2)
}

/// Writes the decimal digits of `v` right-aligned into `buf`; returns how many bytes.
pub fn dec(mut v: u64, buf: &mut [u8; 20]) -> usize {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.len() - i
}

#[cfg(test)]
impl Sink for std::vec::Vec<u8> {
    fn put(&mut self, b: u8) {
        self.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> std::string::String {
        let mut v = Vec::new();
        f(&mut v);
        std::string::String::from_utf8(v).unwrap()
    }

    #[test]
    fn hex_is_lowercase_prefixed_unpadded() {
        assert_eq!(text(|s| s.put_hex(0)), "0x0");
        assert_eq!(text(|s| s.put_hex(0x9fc00)), "0x9fc00");
        assert_eq!(text(|s| s.put_hex(0xDEAD_BEEF)), "0xdeadbeef");
        assert_eq!(text(|s| s.put_hex(u64::MAX)), "0xffffffffffffffff");
        assert_eq!(text(|s| s.put_hex(1 << 63)), "0x8000000000000000");
    }

    #[test]
    fn decimal() {
        assert_eq!(text(|s| s.put_dec(0)), "0");
        assert_eq!(text(|s| s.put_dec(7)), "7");
        assert_eq!(text(|s| s.put_dec(1000)), "1000");
        assert_eq!(text(|s| s.put_dec(u64::MAX)), "18446744073709551615");
    }
}
