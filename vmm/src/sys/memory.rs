//! How much of a mapping is resident, and this process's peak RSS: the numbers that separate
//! the VMM's own memory overhead from the guest's.

use std::io;

const PAGE: usize = 4096;

/// Bytes of `[addr, addr + len)` currently resident in RAM.
///
/// `addr` must be the page-aligned start of a live mapping of at least `len` bytes.
pub fn resident_bytes(addr: *mut u8, len: usize) -> io::Result<u64> {
    let pages = len.div_ceil(PAGE);
    let mut vec = vec![0u8; pages];
    // SAFETY: mincore only reads the page tables of the given range and writes one byte per
    // page into `vec`, which has exactly that many bytes; the caller guarantees the range is a
    // live page-aligned mapping.
    let rc = unsafe { libc::mincore(addr.cast(), len, vec.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(vec.iter().filter(|b| **b & 1 == 1).count() as u64 * PAGE as u64)
}

/// Peak resident set size of this process, in KiB.
pub fn peak_rss_kib() -> u64 {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes only into `usage`, a valid, writable rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return 0;
    }
    usage.ru_maxrss as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_pages_of_a_lazy_mapping_become_resident() {
        let region = vm_memory::MmapRegion::<()>::new(16 * PAGE).unwrap();
        assert_eq!(resident_bytes(region.as_ptr(), region.size()).unwrap(), 0);
        for page in [0, 5] {
            let p = region.as_ptr().wrapping_add(page * PAGE);
            // SAFETY: pages 0 and 5 are inside the 16-page mapping `region` owns.
            unsafe { p.write(1) };
        }
        assert_eq!(
            resident_bytes(region.as_ptr(), region.size()).unwrap(),
            2 * PAGE as u64
        );
        assert!(peak_rss_kib() > 0);
    }
}
