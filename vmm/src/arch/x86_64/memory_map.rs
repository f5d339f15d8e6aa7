//! Where RAM goes for a given memory size, and the e820 map a guest is told about.
//!
//! RAM fills from 0 up to the MMIO hole at 3 GiB; the rest continues at 4 GiB. The e820 map
//! marks the BIOS area that holds the MP table as reserved, so a guest never reuses it.

use super::layout::{EBDA_ADDR, HIMEM_ADDR, MMIO_HOLE_END, MMIO_HOLE_START};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// One e820 entry: `[start, start + len)` of `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub start: u64,
    pub len: u64,
    pub kind: u32,
}

impl E820Entry {
    /// First address past the entry.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// The guest-physical RAM ranges `(start, len)` for `mem_bytes` of memory.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    let low = mem_bytes.min(MMIO_HOLE_START);
    let mut ranges = vec![(0, low)];
    if mem_bytes > low {
        ranges.push((MMIO_HOLE_END, mem_bytes - low));
    }
    ranges
}

/// The e820 map for `mem_bytes` of memory (at least `HIMEM_ADDR` bytes).
pub fn e820_map(mem_bytes: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            start: 0,
            len: EBDA_ADDR,
            kind: E820_RAM,
        },
        E820Entry {
            start: EBDA_ADDR,
            len: HIMEM_ADDR - EBDA_ADDR,
            kind: E820_RESERVED,
        },
    ];
    for (start, len) in ram_ranges(mem_bytes) {
        let (start, len) = if start == 0 {
            (HIMEM_ADDR, len - HIMEM_ADDR)
        } else {
            (start, len)
        };
        map.push(E820Entry {
            start,
            len,
            kind: E820_RAM,
        });
    }
    map
}

/// End of RAM below the MMIO hole: the highest address an initrd may end at.
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn small_guest_has_one_ram_range_and_a_reserved_bios_area() {
        assert_eq!(ram_ranges(64 * MIB), vec![(0, 64 * MIB)]);
        let map = e820_map(64 * MIB);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    start: 0,
                    len: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    start: 0x9fc00,
                    len: 0x60400,
                    kind: E820_RESERVED
                },
                E820Entry {
                    start: 0x100000,
                    len: 63 * MIB,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn memory_above_3_gib_continues_at_4_gib() {
        assert_eq!(ram_ranges(5 * GIB), vec![(0, 3 * GIB), (4 * GIB, 2 * GIB)]);
        let map = e820_map(5 * GIB);
        assert_eq!(map[2].end(), 3 * GIB);
        assert_eq!(
            map[3],
            E820Entry {
                start: 4 * GIB,
                len: 2 * GIB,
                kind: E820_RAM
            }
        );
        assert_eq!(low_ram_end(5 * GIB), 3 * GIB);
    }

    #[test]
    fn e820_entries_are_sorted_and_disjoint_and_cover_all_ram() {
        for mem in [32 * MIB, 2 * GIB, 3 * GIB, 3 * GIB + MIB, 9 * GIB] {
            let map = e820_map(mem);
            for pair in map.windows(2) {
                assert!(pair[0].end() <= pair[1].start, "{map:?}");
            }
            let ram: u64 = map
                .iter()
                .filter(|e| e.kind == E820_RAM)
                .map(|e| e.len)
                .sum();
            assert_eq!(ram, mem - (HIMEM_ADDR - EBDA_ADDR));
        }
    }
}
