//! What the VMM hands the probe at entry: the PVH `hvm_start_info` or the Linux zero page
//! (`boot_params`), reduced to one [`Handoff`]: command-line address, memory map, initrd.

use crate::bytes::{u8_at, u32_at, u64_at};
use crate::mem::PhysMem;

/// `hvm_start_info.magic`.
pub const PVH_MAGIC: u32 = 0x336e_c578;
/// Size of `hvm_start_info` (version 1).
const START_INFO_LEN: usize = 56;
/// Size of one `hvm_modlist_entry`.
const MODLIST_ENTRY_LEN: usize = 32;
/// Size of the zero page.
const ZERO_PAGE_LEN: usize = 4096;
/// Most memory-map entries we look at (the zero page holds 128).
pub const MAX_MEMMAP_ENTRIES: usize = 128;
/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;

/// Zero-page offsets (Linux `Documentation/arch/x86/zero-page.rst`, `boot.rst`).
mod zp {
    pub const EXT_RAMDISK_IMAGE: usize = 0x0c0;
    pub const EXT_RAMDISK_SIZE: usize = 0x0c4;
    pub const EXT_CMD_LINE_PTR: usize = 0x0c8;
    pub const E820_ENTRIES: usize = 0x1e8;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const E820_TABLE: usize = 0x2d0;
}

/// The boot protocol the probe was entered through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// 32-bit PVH entry, `ebx` = `hvm_start_info`.
    Pvh,
    /// 64-bit Linux boot protocol, `rsi` = zero page.
    Linux64,
}

impl Protocol {
    /// The name printed in `probe: boot=...`.
    pub fn name(self) -> &'static [u8] {
        match self {
            Protocol::Pvh => b"pvh",
            Protocol::Linux64 => b"linux64",
        }
    }
}

/// Why the boot information could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootError {
    /// The start info or zero page pointer does not point at readable memory.
    InfoUnreadable,
    /// `hvm_start_info.magic` is wrong.
    BadMagic,
    /// The memory map pointer/count does not point at readable memory.
    MemMapUnreadable,
    /// The module list does not point at readable memory.
    ModulesUnreadable,
}

impl BootError {
    /// Short reason for the report line.
    pub fn as_str(self) -> &'static str {
        match self {
            BootError::InfoUnreadable => "bootinfo unreadable",
            BootError::BadMagic => "bootinfo bad-magic",
            BootError::MemMapUnreadable => "bootinfo memmap-unreadable",
            BootError::ModulesUnreadable => "bootinfo modules-unreadable",
        }
    }
}

/// A range of guest-physical memory (the initrd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
}

/// One memory-map entry, end exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRegion {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// e820 type (1 = RAM, 2 = reserved, ...).
    pub kind: u32,
}

/// A memory map as stored by the VMM: entries of `addr: u64, size: u64, type: u32`, 20 bytes
/// apart in the zero page, 24 in a PVH `hvm_memmap_table_entry` array.
#[derive(Debug, Clone, Copy)]
pub struct MemMap<'a> {
    bytes: &'a [u8],
    stride: usize,
}

impl<'a> MemMap<'a> {
    /// Stride of zero-page e820 entries.
    pub const E820_STRIDE: usize = 20;
    /// Stride of PVH memory-map entries.
    pub const PVH_STRIDE: usize = 24;

    /// A map over `bytes` with entries `stride` bytes apart.
    pub fn new(bytes: &'a [u8], stride: usize) -> Self {
        MemMap { bytes, stride }
    }

    /// The entries in stored order.
    pub fn iter(&self) -> impl Iterator<Item = MemRegion> + 'a {
        self.bytes.chunks_exact(self.stride).map(|e| {
            let start = u64_at(e, 0);
            MemRegion {
                start,
                end: start.saturating_add(u64_at(e, 8)),
                kind: u32_at(e, 16),
            }
        })
    }

    /// The RAM entry that ends highest.
    pub fn highest_ram(&self) -> Option<MemRegion> {
        self.iter()
            .filter(|r| r.kind == E820_RAM && r.end > r.start)
            .max_by_key(|r| r.end)
    }

    /// How many bytes from `addr` on, up to `max`, lie inside the one entry holding `addr`.
    pub fn covered_len(&self, addr: u64, max: u64) -> u64 {
        self.iter()
            .find(|r| r.start <= addr && addr < r.end)
            .map_or(0, |r| max.min(r.end - addr))
    }
}

/// What the VMM handed over, whichever the protocol.
#[derive(Debug, Clone, Copy)]
pub struct Handoff<'a> {
    /// Guest-physical address of the NUL-terminated command line (0: none).
    pub cmdline: u64,
    /// The memory map.
    pub memmap: MemMap<'a>,
    /// The initrd, if one was given.
    pub initrd: Option<Region>,
}

/// Reads the PVH `hvm_start_info` at `info` (and the memory map and first module it points to).
pub fn from_pvh<M: PhysMem>(mem: &M, info: u64) -> Result<Handoff<'_>, BootError> {
    let si = mem
        .slice(info, START_INFO_LEN)
        .ok_or(BootError::InfoUnreadable)?;
    if u32_at(si, 0) != PVH_MAGIC {
        return Err(BootError::BadMagic);
    }
    let (map_addr, map_entries) = match u32_at(si, 4) {
        0 => (0, 0),
        _ => (u64_at(si, 40), u32_at(si, 48) as usize),
    };
    let map_len = map_entries.min(MAX_MEMMAP_ENTRIES) * MemMap::PVH_STRIDE;
    let map = match map_len {
        0 => &[][..],
        _ => mem
            .slice(map_addr, map_len)
            .ok_or(BootError::MemMapUnreadable)?,
    };
    let initrd = match u32_at(si, 12) {
        0 => None,
        _ => {
            let m = mem
                .slice(u64_at(si, 16), MODLIST_ENTRY_LEN)
                .ok_or(BootError::ModulesUnreadable)?;
            Some(Region {
                addr: u64_at(m, 0),
                size: u64_at(m, 8),
            })
        }
    };
    Ok(Handoff {
        cmdline: u64_at(si, 24),
        memmap: MemMap::new(map, MemMap::PVH_STRIDE),
        initrd,
    })
}

/// Reads the Linux zero page at `zp` (the e820 table lives inside it).
pub fn from_zero_page<M: PhysMem>(mem: &M, zp: u64) -> Result<Handoff<'_>, BootError> {
    let z = mem
        .slice(zp, ZERO_PAGE_LEN)
        .ok_or(BootError::InfoUnreadable)?;
    let wide = |lo: usize, hi: usize| u64::from(u32_at(z, lo)) | u64::from(u32_at(z, hi)) << 32;
    let entries = usize::from(u8_at(z, zp::E820_ENTRIES)).min(MAX_MEMMAP_ENTRIES);
    let map = &z[zp::E820_TABLE..zp::E820_TABLE + entries * MemMap::E820_STRIDE];
    let size = wide(zp::RAMDISK_SIZE, zp::EXT_RAMDISK_SIZE);
    let initrd = (size != 0).then(|| Region {
        addr: wide(zp::RAMDISK_IMAGE, zp::EXT_RAMDISK_IMAGE),
        size,
    });
    Ok(Handoff {
        cmdline: wide(zp::CMD_LINE_PTR, zp::EXT_CMD_LINE_PTR),
        memmap: MemMap::new(map, MemMap::E820_STRIDE),
        initrd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::Flat;
    use std::vec::Vec;

    fn entry(start: u64, size: u64, kind: u32, stride: usize) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&start.to_le_bytes());
        e.extend_from_slice(&size.to_le_bytes());
        e.extend_from_slice(&kind.to_le_bytes());
        e.resize(stride, 0);
        e
    }

    fn herd_map(stride: usize) -> Vec<u8> {
        let mut m = entry(0, 0x9fc00, 1, stride);
        m.extend(entry(0x9fc00, 0x400 + 0x60000, 2, stride));
        m.extend(entry(0x100000, 0x7f00000, 1, stride));
        m
    }

    fn start_info(version: u32, nr_modules: u32) -> Vec<u8> {
        let mut s = Vec::new();
        for v in [PVH_MAGIC, version, 0, nr_modules] {
            s.extend_from_slice(&v.to_le_bytes());
        }
        for v in [0x6100u64, 0x20000, 0, 0x6038] {
            s.extend_from_slice(&v.to_le_bytes());
        }
        s.extend_from_slice(&3u32.to_le_bytes());
        s.extend_from_slice(&0u32.to_le_bytes());
        s
    }

    #[test]
    fn pvh_start_info() {
        let mut mem = Flat::new(0, 0x8000);
        mem.put(0x6000, &start_info(1, 1));
        mem.put(0x6038, &herd_map(MemMap::PVH_STRIDE));
        let mut module = 0x7ff_f000u64.to_le_bytes().to_vec();
        module.extend_from_slice(&0x1234u64.to_le_bytes());
        mem.put(0x6100, &module);
        let h = from_pvh(&mem, 0x6000).unwrap();
        assert_eq!(h.cmdline, 0x20000);
        let want = Region {
            addr: 0x7ff_f000,
            size: 0x1234,
        };
        assert_eq!(h.initrd, Some(want));
        let regions: Vec<MemRegion> = h.memmap.iter().collect();
        assert_eq!(regions.len(), 3);
        let r1 = MemRegion {
            start: 0x9fc00,
            end: 0x100000,
            kind: 2,
        };
        assert_eq!(regions[1], r1);
        assert_eq!(h.memmap.highest_ram().unwrap().end, 0x800_0000);
    }

    #[test]
    fn pvh_errors_and_no_modules() {
        let mut mem = Flat::new(0, 0x8000);
        assert_eq!(from_pvh(&mem, 0x6000).unwrap_err(), BootError::BadMagic);
        assert_eq!(
            from_pvh(&mem, 0x7ff0).unwrap_err(),
            BootError::InfoUnreadable
        );
        mem.put(0x6000, &start_info(1, 0));
        mem.put(0x6038, &herd_map(MemMap::PVH_STRIDE));
        let h = from_pvh(&mem, 0x6000).unwrap();
        assert_eq!(h.initrd, None);
        // Version 0 has no memory map.
        mem.put(0x6000, &start_info(0, 0));
        assert_eq!(from_pvh(&mem, 0x6000).unwrap().memmap.iter().count(), 0);
        // A memory map pointer outside memory.
        let mut bad = start_info(1, 0);
        bad[40..48].copy_from_slice(&0xffff_0000u64.to_le_bytes());
        mem.put(0x6000, &bad);
        assert_eq!(
            from_pvh(&mem, 0x6000).unwrap_err(),
            BootError::MemMapUnreadable
        );
    }

    #[test]
    fn zero_page() {
        let mut mem = Flat::new(0, 0x8000);
        let zp = 0x7000;
        mem.put(zp + 0x1e8, &[3]);
        mem.put(zp + 0x2d0, &herd_map(MemMap::E820_STRIDE));
        mem.put(zp + 0x228, &0x20000u32.to_le_bytes());
        mem.put(zp + 0x218, &0x7ff_f000u32.to_le_bytes());
        mem.put(zp + 0x21c, &0x1000u32.to_le_bytes());
        let h = from_zero_page(&mem, zp).unwrap();
        assert_eq!(h.cmdline, 0x20000);
        assert_eq!(
            h.initrd,
            Some(Region {
                addr: 0x7ff_f000,
                size: 0x1000
            })
        );
        assert_eq!(h.memmap.iter().count(), 3);
        assert_eq!(h.memmap.iter().next().unwrap().end, 0x9fc00);
        // High halves of the initrd and command line.
        mem.put(zp + 0x0c0, &1u32.to_le_bytes());
        mem.put(zp + 0x0c4, &2u32.to_le_bytes());
        mem.put(zp + 0x0c8, &3u32.to_le_bytes());
        let h = from_zero_page(&mem, zp).unwrap();
        assert_eq!(
            h.initrd,
            Some(Region {
                addr: 0x1_07ff_f000,
                size: 0x2_0000_1000
            })
        );
        assert_eq!(h.cmdline, 0x3_0002_0000);
    }

    #[test]
    fn zero_page_without_initrd_and_clamped_count() {
        let mut mem = Flat::new(0, 0x8000);
        mem.put(0x7000 + 0x1e8, &[200]);
        let h = from_zero_page(&mem, 0x7000).unwrap();
        assert_eq!(h.initrd, None);
        assert_eq!(h.memmap.iter().count(), MAX_MEMMAP_ENTRIES);
        assert_eq!(
            from_zero_page(&mem, 0x7800).unwrap_err(),
            BootError::InfoUnreadable
        );
    }

    #[test]
    fn coverage() {
        let bytes = herd_map(MemMap::E820_STRIDE);
        let map = MemMap::new(&bytes, MemMap::E820_STRIDE);
        assert_eq!(map.covered_len(0x20000, 4096), 4096);
        assert_eq!(map.covered_len(0x9fb00, 4096), 0x100);
        assert_eq!(map.covered_len(0x9fc00, 16), 16);
        assert_eq!(map.covered_len(0x900_0000, 16), 0);
        assert_eq!(map.covered_len(0x7ff_fff8, 8), 8);
        assert_eq!(map.covered_len(0x800_0000, 8), 0);
    }
}
