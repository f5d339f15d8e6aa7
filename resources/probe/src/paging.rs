//! Changes to the probe's page tables: mapping one 2 MiB page above 4 GiB (the top of RAM on
//! guests with more than 3 GiB), which the static identity map does not cover.

use herd_probe::hw::flush_tlb;

unsafe extern "C" {
    /// Page-directory-pointer table of the identity map (entries 0-3 cover 0-4 GiB).
    static mut probe_pdpt: [u64; 512];
    /// A spare page directory for one high mapping.
    static mut probe_pd_high: [u64; 512];
}

const FOUR_GIB: u64 = 1 << 32;
const PAGE_2M: u64 = 1 << 21;
const TABLE_FLAGS: u64 = 0x23;
const LARGE_PAGE_FLAGS: u64 = 0xe3;

/// Makes `addr` accessible through the identity map; false if it cannot be (beyond 512 GiB).
pub fn map(addr: u64) -> bool {
    if addr < FOUR_GIB {
        return true;
    }
    let pdpt_index = (addr >> 30) as usize;
    if pdpt_index >= 512 {
        return false;
    }
    let pd_index = ((addr >> 21) & 511) as usize;
    let pd = (&raw mut probe_pd_high).cast::<u64>();
    let pdpt = (&raw mut probe_pdpt).cast::<u64>();
    // SAFETY: the table is static, 4 KiB aligned, only touched here; the index is below 512.
    unsafe {
        pd.wrapping_add(pd_index)
            .write_volatile((addr & !(PAGE_2M - 1)) | LARGE_PAGE_FLAGS)
    };
    // SAFETY: as above. The PDPT entry is written last so no walk sees a half-built directory.
    unsafe {
        pdpt.wrapping_add(pdpt_index)
            .write_volatile(pd as u64 | TABLE_FLAGS)
    };
    flush_tlb();
    true
}
