//! Identity page tables for the Linux 64-bit boot protocol: the first 4 GiB mapped with 2 MiB
//! pages, so the kernel (and the probe guest) can reach all low RAM and the MMIO hole before
//! building its own tables.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{PAGE_SIZE, PML4_ADDR};

/// Errors writing page tables.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the boot page tables to guest memory")]
pub struct PagingError(#[source] vm_memory::GuestMemoryError);

const PRESENT_WRITABLE: u64 = 0x3;
const HUGE_PAGE: u64 = 0x80;
const TWO_MIB: u64 = 2 << 20;
/// Gigabytes mapped, one page directory each.
pub const MAPPED_GIB: u64 = 4;

/// Address of the page-directory-pointer table.
pub const PDPT_ADDR: u64 = PML4_ADDR + PAGE_SIZE;
/// Address of the first of `MAPPED_GIB` page directories.
pub const PD_ADDR: u64 = PDPT_ADDR + PAGE_SIZE;

/// The tables as (address, 512 entries) pairs.
pub fn tables() -> Vec<(u64, Vec<u64>)> {
    let mut pml4 = vec![0u64; 512];
    pml4[0] = PDPT_ADDR | PRESENT_WRITABLE;
    let mut pdpt = vec![0u64; 512];
    let mut out = vec![(PML4_ADDR, pml4)];
    let mut dirs = Vec::new();
    for gib in 0..MAPPED_GIB {
        let pd_addr = PD_ADDR + gib * PAGE_SIZE;
        pdpt[gib as usize] = pd_addr | PRESENT_WRITABLE;
        let pd = (0..512)
            .map(|i| ((gib << 30) + i * TWO_MIB) | PRESENT_WRITABLE | HUGE_PAGE)
            .collect();
        dirs.push((pd_addr, pd));
    }
    out.push((PDPT_ADDR, pdpt));
    out.extend(dirs);
    out
}

/// Writes the tables; returns the value for CR3.
pub fn write(mem: &GuestMemoryMmap) -> Result<u64, PagingError> {
    for (addr, entries) in tables() {
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(PagingError)?;
    }
    Ok(PML4_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the tables like the MMU does for a 2 MiB mapping.
    fn translate(tables: &[(u64, Vec<u64>)], va: u64) -> Option<u64> {
        let find = |addr: u64| {
            tables
                .iter()
                .find(|(a, _)| *a == addr & !0xfff)
                .map(|(_, t)| t)
        };
        let pml4e = find(PML4_ADDR)?[((va >> 39) & 0x1ff) as usize];
        let pdpte = find(pml4e)?.get(((va >> 30) & 0x1ff) as usize).copied()?;
        if pdpte & 1 == 0 {
            return None;
        }
        let pde = find(pdpte)?[((va >> 21) & 0x1ff) as usize];
        (pde & 0x81 == 0x81)
            .then_some((pde & !0x1f_ffff & 0x000f_ffff_ffff_f000) | (va & 0x1f_ffff))
    }

    #[test]
    fn first_4_gib_is_identity_mapped_and_nothing_above() {
        let t = tables();
        for va in [
            0,
            0x10_0000,
            0x1234_5678,
            0xc000_0000,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&t, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&t, 1 << 32), None);
    }

    #[test]
    fn tables_fit_below_the_command_line() {
        let last = tables().iter().map(|(a, _)| *a).max().unwrap();
        assert!(last + PAGE_SIZE <= super::super::layout::CMDLINE_ADDR);
    }
}
