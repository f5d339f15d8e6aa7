//! Counting enabled processors in the Intel MultiProcessor Specification 1.4 tables: find the
//! `_MP_` floating pointer, follow it to the `PCMP` configuration table, validate both
//! checksums and walk the entries.

use crate::bytes::{checksum_ok, u8_at, u16_at, u32_at};
use crate::mem::PhysMem;

/// Where to look for the floating pointer, in order: the top KiB of base memory (where
/// herd-vmm puts it), then the BIOS ROM area.
pub const SEARCH_AREAS: [(u64, usize); 2] = [(0x9fc00, 0x400), (0xf0000, 0x10000)];

const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const PROCESSOR_ENTRY_LEN: usize = 20;
const OTHER_ENTRY_LEN: usize = 8;
const CPU_ENABLED: u8 = 1;

/// Why the processors could not be counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MpError {
    /// No `_MP_` signature in any search area.
    NoFloatingPointer,
    /// The floating pointer's bytes do not sum to 0.
    FloatingChecksum,
    /// The floating pointer has no table (a "default configuration" we do not decode).
    NoConfigTable,
    /// The configuration table is outside readable memory.
    TableUnreadable,
    /// The configuration table does not start with `PCMP`.
    TableSignature,
    /// The base table length is shorter than its header.
    TableLength,
    /// The configuration table's bytes do not sum to 0.
    TableChecksum,
    /// An entry of unknown type, or one running past the table.
    BadEntry,
}

impl MpError {
    /// Short reason for `probe: cpus=error <why>`.
    pub fn as_str(self) -> &'static str {
        match self {
            MpError::NoFloatingPointer => "no-floating-pointer",
            MpError::FloatingChecksum => "floating-pointer-checksum",
            MpError::NoConfigTable => "no-config-table",
            MpError::TableUnreadable => "config-table-unreadable",
            MpError::TableSignature => "config-table-signature",
            MpError::TableLength => "config-table-length",
            MpError::TableChecksum => "config-table-checksum",
            MpError::BadEntry => "bad-entry",
        }
    }
}

/// Offset of the first `_MP_` signature on a 16-byte boundary of `area`.
pub fn find_floating(area: &[u8]) -> Option<usize> {
    area.chunks_exact(16)
        .position(|c| c.starts_with(b"_MP_"))
        .map(|i| i * 16)
}

/// Validates the floating pointer structure at the start of `fp`; returns the configuration
/// table address.
pub fn parse_floating(fp: &[u8]) -> Result<u64, MpError> {
    let len = usize::from(u8_at(fp, 8)).max(1) * FLOATING_LEN;
    match fp.get(..len) {
        Some(all) if checksum_ok(all) => {}
        _ => return Err(MpError::FloatingChecksum),
    }
    match u32_at(fp, 4) {
        0 => Err(MpError::NoConfigTable),
        addr => Ok(u64::from(addr)),
    }
}

/// Checks the configuration table header; returns the base table length.
pub fn table_len(header: &[u8]) -> Result<usize, MpError> {
    if !header.starts_with(b"PCMP") {
        return Err(MpError::TableSignature);
    }
    match usize::from(u16_at(header, 4)) {
        n if n < HEADER_LEN => Err(MpError::TableLength),
        n => Ok(n),
    }
}

/// Counts enabled processor entries of a whole base configuration table.
pub fn count_cpus(table: &[u8]) -> Result<u32, MpError> {
    if !checksum_ok(table) {
        return Err(MpError::TableChecksum);
    }
    let count = u16_at(table, 34);
    let mut off = HEADER_LEN;
    let mut cpus = 0;
    for _ in 0..count {
        let len = match table.get(off) {
            Some(0) => PROCESSOR_ENTRY_LEN,
            Some(1..=4) => OTHER_ENTRY_LEN,
            _ => return Err(MpError::BadEntry),
        };
        let entry = table.get(off..off + len).ok_or(MpError::BadEntry)?;
        if len == PROCESSOR_ENTRY_LEN && entry[3] & CPU_ENABLED != 0 {
            cpus += 1;
        }
        off += len;
    }
    Ok(cpus)
}

/// Finds the MP tables in `mem` and counts the enabled processors.
pub fn cpus<M: PhysMem>(mem: &M) -> Result<u32, MpError> {
    let fp = SEARCH_AREAS
        .iter()
        .filter_map(|&(base, len)| {
            let area = mem.slice(base, len)?;
            find_floating(area).map(|off| &area[off..])
        })
        .next()
        .ok_or(MpError::NoFloatingPointer)?;
    let table_addr = parse_floating(fp)?;
    let header = mem
        .slice(table_addr, HEADER_LEN)
        .ok_or(MpError::TableUnreadable)?;
    let len = table_len(header)?;
    let table = mem.slice(table_addr, len).ok_or(MpError::TableUnreadable)?;
    count_cpus(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::Flat;
    use std::vec::Vec;

    fn fix_checksum(b: &mut [u8], at: usize) {
        b[at] = 0;
        let sum = b.iter().fold(0u8, |s, &x| s.wrapping_add(x));
        b[at] = sum.wrapping_neg();
    }

    fn floating(table: u32) -> Vec<u8> {
        let mut fp = b"_MP_".to_vec();
        fp.extend_from_slice(&table.to_le_bytes());
        fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
        fix_checksum(&mut fp, 10);
        fp
    }

    /// A table like herd-vmm's: `n` CPUs (the last one disabled if `last_off`), a bus, an
    /// IOAPIC and two interrupt entries.
    fn table(n: usize, last_off: bool) -> Vec<u8> {
        let mut t = b"PCMP".to_vec();
        t.resize(HEADER_LEN, 0);
        for i in 0..n {
            let flags = if last_off && i == n - 1 {
                0
            } else {
                1 | u8::from(i == 0) << 1
            };
            let mut e = std::vec![0u8, i as u8, 0x14, flags];
            e.resize(PROCESSOR_ENTRY_LEN, 0);
            t.extend(e);
        }
        for kind in [1u8, 2, 3, 4] {
            t.extend([kind, 0, 0, 0, 0, 0, 0, 0]);
        }
        let len = t.len() as u16;
        t[4..6].copy_from_slice(&len.to_le_bytes());
        t[6] = 4;
        t[34..36].copy_from_slice(&(n as u16 + 4).to_le_bytes());
        fix_checksum(&mut t, 7);
        t
    }

    #[test]
    fn counts_enabled_cpus() {
        assert_eq!(count_cpus(&table(1, false)), Ok(1));
        assert_eq!(count_cpus(&table(4, false)), Ok(4));
        assert_eq!(count_cpus(&table(4, true)), Ok(3));
    }

    #[test]
    fn finds_tables_in_memory() {
        let mut mem = Flat::new(0, 0x100000);
        mem.put(0x9fc00, &floating(0x9fc10));
        mem.put(0x9fc10, &table(2, false));
        assert_eq!(cpus(&mem), Ok(2));
    }

    #[test]
    fn finds_floating_pointer_in_bios_area() {
        let mut mem = Flat::new(0, 0x100000);
        mem.put(0xf5a10, &floating(0xf0000));
        mem.put(0xf0000, &table(3, false));
        assert_eq!(cpus(&mem), Ok(3));
    }

    #[test]
    fn reports_what_is_wrong() {
        let mut mem = Flat::new(0, 0x100000);
        assert_eq!(cpus(&mem), Err(MpError::NoFloatingPointer));
        let mut fp = floating(0x9fc10);
        fp[11] ^= 1;
        mem.put(0x9fc00, &fp);
        assert_eq!(cpus(&mem), Err(MpError::FloatingChecksum));
        mem.put(0x9fc00, &floating(0));
        assert_eq!(cpus(&mem), Err(MpError::NoConfigTable));
        mem.put(0x9fc00, &floating(0x200000));
        assert_eq!(cpus(&mem), Err(MpError::TableUnreadable));
        mem.put(0x9fc00, &floating(0x9fc10));
        assert_eq!(cpus(&mem), Err(MpError::TableSignature));
        let mut t = table(2, false);
        t[40] ^= 1;
        mem.put(0x9fc10, &t);
        assert_eq!(cpus(&mem), Err(MpError::TableChecksum));
        let mut t = table(2, false);
        t[HEADER_LEN + PROCESSOR_ENTRY_LEN] = 9;
        fix_checksum(&mut t, 7);
        mem.put(0x9fc10, &t);
        assert_eq!(cpus(&mem), Err(MpError::BadEntry));
        let mut t = table(2, false);
        t[4] = 10;
        mem.put(0x9fc10, &t);
        assert_eq!(cpus(&mem), Err(MpError::TableLength));
    }
}
