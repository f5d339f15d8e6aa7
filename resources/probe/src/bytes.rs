//! Little-endian field access on byte slices and the byte sum used for checksums.
//!
//! Readers return 0 for fields that lie outside the slice, so parsers never panic on short
//! input; callers check lengths where that matters.

/// The `N` bytes at `off`, if they are all inside `b`.
fn field<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

/// Reads a `u8` at `off`, or 0 past the end.
pub fn u8_at(b: &[u8], off: usize) -> u8 {
    b.get(off).copied().unwrap_or(0)
}

/// Reads a little-endian `u16` at `off`, or 0 if it does not fit.
pub fn u16_at(b: &[u8], off: usize) -> u16 {
    field(b, off).map_or(0, u16::from_le_bytes)
}

/// Reads a little-endian `u32` at `off`, or 0 if it does not fit.
pub fn u32_at(b: &[u8], off: usize) -> u32 {
    field(b, off).map_or(0, u32::from_le_bytes)
}

/// Reads a little-endian `u64` at `off`, or 0 if it does not fit.
pub fn u64_at(b: &[u8], off: usize) -> u64 {
    field(b, off).map_or(0, u64::from_le_bytes)
}

/// Wrapping 32-bit sum of all bytes.
///
/// Works on 8-byte words with the bytes spread over four 16-bit lanes (about one
/// instruction per byte instead of four), folding the lanes every 128 words before they
/// can overflow.
pub fn byte_sum(data: &[u8]) -> u32 {
    // 128 words add at most 128 * 2 * 255 = 65280 to a 16-bit lane.
    const BLOCK: usize = 8 * 128;
    let mut blocks = data.chunks(BLOCK);
    let mut total: u32 = 0;
    for block in blocks.by_ref() {
        let mut words = block.chunks_exact(8);
        let mut acc: u64 = 0;
        for w in words.by_ref() {
            let w = u64::from_le_bytes(w.try_into().expect("chunks of 8"));
            acc += (w & LANES) + ((w >> 8) & LANES);
        }
        total = total.wrapping_add(fold_lanes(acc));
        for &b in words.remainder() {
            total = total.wrapping_add(u32::from(b));
        }
    }
    total
}

const LANES: u64 = 0x00ff_00ff_00ff_00ff;

/// Adds up the four 16-bit lanes of `acc`.
fn fold_lanes(acc: u64) -> u32 {
    const PAIRS: u64 = 0x0000_ffff_0000_ffff;
    let pairs = (acc & PAIRS) + ((acc >> 16) & PAIRS);
    (pairs as u32).wrapping_add((pairs >> 32) as u32)
}

/// True if the bytes add up to 0 modulo 256 (the MP table checksum rule).
pub fn checksum_ok(data: &[u8]) -> bool {
    byte_sum(data) & 0xff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn naive(data: &[u8]) -> u32 {
        data.iter().fold(0u32, |s, &b| s.wrapping_add(u32::from(b)))
    }

    #[test]
    fn sum_matches_naive_for_all_shapes() {
        for len in [
            0usize,
            1,
            7,
            8,
            9,
            1023,
            1024,
            1025,
            8 * 128,
            8 * 129 + 3,
            70_001,
        ] {
            let ones: Vec<u8> = std::vec![0xff; len];
            assert_eq!(byte_sum(&ones), naive(&ones), "len {len} all 0xff");
            let ramp: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            assert_eq!(byte_sum(&ramp), naive(&ramp), "len {len} ramp");
        }
    }

    #[test]
    fn sum_wraps_at_32_bits() {
        // 0xff * 16_843_010 > u32::MAX, so this exercises the wrap.
        let big = std::vec![0xffu8; 16_843_010 + 5];
        assert_eq!(byte_sum(&big), naive(&big));
    }

    #[test]
    fn field_readers_are_little_endian_and_total() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(u8_at(&b, 8), 9);
        assert_eq!(u16_at(&b, 1), 0x0302);
        assert_eq!(u32_at(&b, 0), 0x0403_0201);
        assert_eq!(u64_at(&b, 1), 0x0908_0706_0504_0302);
        assert_eq!(u64_at(&b, 2), 0);
        assert_eq!(u8_at(&b, 9), 0);
        assert_eq!(u16_at(&b, usize::MAX), 0);
    }

    #[test]
    fn checksum_rule() {
        assert!(checksum_ok(&[0x10, 0xf0]));
        assert!(!checksum_ok(&[0x10, 0xef]));
    }
}
