//! How much of a mapping is resident, this process's peak RSS, and a name for the guest's RAM
//! in `/proc/PID/smaps`: what separates the VMM's own memory overhead from the guest's.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use vm_memory::{GuestMemoryRegion, GuestRegionMmap};

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

/// The name guest RAM mappings carry in `/proc/PID/smaps` (`[anon:herd-guest-ram]`).
pub const GUEST_RAM_NAME: &std::ffi::CStr = c"herd-guest-ram";

/// Names the anonymous mapping `[addr, addr + len)` [`GUEST_RAM_NAME`], so that anyone
/// reading smaps (the density benchmark, an operator) can tell guest pages from the VMM's.
///
/// `addr` must be the page-aligned start of a live anonymous mapping of `len` bytes. Fails on
/// kernels without `CONFIG_ANON_VMA_NAME`; callers treat that as harmless.
pub fn name_guest_ram(addr: *mut u8, len: usize) -> io::Result<()> {
    // SAFETY: PR_SET_VMA_ANON_NAME only attaches a copy of the NUL-terminated name to the
    // VMAs of the range; it reads `GUEST_RAM_NAME` (static) and touches no memory of ours.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_VMA,
            libc::PR_SET_VMA_ANON_NAME,
            addr as libc::c_ulong,
            len as libc::c_ulong,
            GUEST_RAM_NAME.as_ptr() as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Replaces `len` bytes at `offset` into guest RAM `region` with a private (copy-on-write)
/// mapping of `file` from `file_offset`: the guest reads the page cache's pages, shared with
/// every other mapping of the file, until it writes one. `offset`, `len` and `file_offset`
/// must be page-aligned and the range inside the region; the file may end inside the last
/// page (the rest reads as zeroes), not before it.
pub fn map_file_over(
    region: &GuestRegionMmap,
    offset: usize,
    len: usize,
    file: &File,
    file_offset: u64,
) -> io::Result<()> {
    let aligned = |v: u64| v.is_multiple_of(PAGE as u64);
    let inside = offset
        .checked_add(len)
        .is_some_and(|end| end <= region.len() as usize);
    if !aligned(offset as u64) || !aligned(len as u64) || !aligned(file_offset) || !inside {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let file_offset = libc::off_t::try_from(file_offset)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let addr = region.as_ptr().wrapping_add(offset);
    // SAFETY: `[addr, addr + len)` is page-aligned and inside `region`, an anonymous mapping
    // this process owns for the VM's life; MAP_FIXED replaces those pages with the file's
    // (same protection, still private), so `region` stays fully mapped and is unmapped whole
    // when dropped. Guest memory is only reached through volatile accesses and KVM, whose
    // MMU notifier drops any stale translation of the range.
    let mapped = unsafe {
        libc::mmap(
            addr.cast(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED,
            file.as_raw_fd(),
            file_offset,
        )
    };
    if mapped == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    crate::bus::lock(&FILE_BACKED).push((addr as usize, len));
    Ok(())
}

/// Host ranges of guest RAM that [`map_file_over`] backed with a file: there a page the guest
/// never touched holds the file's bytes, not zeroes. One VM per process, so one list.
static FILE_BACKED: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

/// Whether any of `[addr, addr + len)` is backed by a file (see [`map_file_over`]).
pub fn overlaps_file_backed(addr: *const u8, len: usize) -> bool {
    let (start, end) = (addr as usize, addr as usize + len);
    crate::bus::lock(&FILE_BACKED)
        .iter()
        .any(|&(s, l)| s < end && start < s + l)
}

/// Fills `out` with one byte per page of `[addr, addr + len)`, bit 0 set when the page is
/// resident (mapped in this process or in the page cache).
///
/// `addr` must be the page-aligned start of a live mapping of at least `len` bytes and `out`
/// at least `len / 4096` (rounded up) bytes long.
pub fn resident_pages(addr: *const u8, len: usize, out: &mut [u8]) -> io::Result<()> {
    if out.len() < len.div_ceil(PAGE) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: mincore reads only the page tables of the range and writes one byte per page
    // into `out`, which was just checked to be long enough; the caller guarantees the range
    // is a live page-aligned mapping.
    let rc = unsafe { libc::mincore(addr as *mut libc::c_void, len, out.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the host has no swap space, so a page of anonymous memory that is not resident
/// was never touched (and reads as zero).
pub fn host_has_no_swap() -> bool {
    // SAFETY: an all-zero sysinfo is a valid value of this plain C struct.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: sysinfo writes only into `info`, a valid, writable struct.
    let rc = unsafe { libc::sysinfo(&mut info) };
    rc == 0 && info.totalswap == 0
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

    #[test]
    fn named_guest_ram_shows_in_smaps() {
        let region = vm_memory::MmapRegion::<()>::new(16 * PAGE).unwrap();
        if let Err(e) = name_guest_ram(region.as_ptr(), region.size()) {
            // Kernels without CONFIG_ANON_VMA_NAME refuse; nothing to check there.
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
            return;
        }
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let start = format!("{:x}-", region.as_ptr() as usize);
        let line = smaps.lines().find(|l| l.starts_with(&start)).unwrap();
        assert!(line.ends_with("[anon:herd-guest-ram]"), "{line}");
    }
}
