//! Boot files shared through the page cache (`--map-boot-files`): once the loader has placed
//! the kernel, the whole pages of its ELF segments are remapped from the file, and the first
//! initrd part is mapped instead of copied. Every VM booting the same files then reads the
//! same page-cache pages until it writes one (private, copy-on-write), so a host running many
//! instances of one image holds its kernel and initramfs once, not once per instance.
//!
//! Only whole pages whose file bytes are exactly what the loader wrote are remapped: a
//! segment's partial first and last pages (which may share a page with another segment or
//! its zeroed tail) stay copied. A bzImage's kernel is not mapped: its payload starts at an
//! unaligned file offset and is decompressed in place.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::sys::memory::map_file_over;

const PAGE: u64 = 4096;
const PT_LOAD: u32 = 1;
/// Program headers read at most (Linux's vmlinux has a handful).
const MAX_PHDRS: u16 = 64;

/// Why boot files could not be mapped (the caller falls back to the copy it already has).
#[derive(Debug, thiserror::Error)]
pub enum BootFilesError {
    #[error("cannot read the ELF program headers")]
    Read(#[source] io::Error),
    #[error("cannot map {len:#x} bytes of the file at guest address {guest:#x}")]
    Map {
        guest: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
    #[error("guest range {guest:#x}+{len:#x} is not inside one RAM region")]
    NotRam { guest: u64, len: u64 },
}

/// One loadable segment: `file_size` bytes at `offset` in the file go to `guest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub guest: u64,
    pub file_size: u64,
}

/// The whole pages of `seg` that can come straight from the file: (guest, file offset, len).
pub fn whole_pages(seg: Segment) -> Option<(u64, u64, u64)> {
    if seg.offset % PAGE != seg.guest % PAGE {
        return None;
    }
    let start = seg.guest.next_multiple_of(PAGE);
    let end = seg.guest.checked_add(seg.file_size)? & !(PAGE - 1);
    (end > start).then(|| (start, seg.offset + (start - seg.guest), end - start))
}

/// The `PT_LOAD` segments of the 64-bit little-endian ELF `file`: its ELF header, then its
/// program headers.
pub fn load_segments(file: &mut File) -> Result<Vec<Segment>, BootFilesError> {
    let mut ehdr = [0u8; 64];
    file.seek(SeekFrom::Start(0))
        .map_err(BootFilesError::Read)?;
    file.read_exact(&mut ehdr).map_err(BootFilesError::Read)?;
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let (phoff, entsize, count) = (
        u64_at(&ehdr, 0x20),
        u16_at(&ehdr, 0x36),
        u16_at(&ehdr, 0x38),
    );
    if &ehdr[..4] != b"\x7fELF" || entsize < 56 || count > MAX_PHDRS {
        return Err(BootFilesError::Read(io::ErrorKind::InvalidData.into()));
    }
    let mut table = vec![0u8; usize::from(entsize) * usize::from(count)];
    file.seek(SeekFrom::Start(phoff))
        .map_err(BootFilesError::Read)?;
    file.read_exact(&mut table).map_err(BootFilesError::Read)?;
    Ok(table
        .chunks_exact(usize::from(entsize))
        .filter(|p| u32_at(p, 0) == PT_LOAD)
        .map(|p| Segment {
            offset: u64_at(p, 8),
            guest: u64_at(p, 24),
            file_size: u64_at(p, 32),
        })
        .collect())
}

/// Maps `len` bytes of `file` from `file_offset` at guest address `guest`.
pub fn map_range(
    mem: &GuestMemoryMmap,
    file: &File,
    guest: u64,
    file_offset: u64,
    len: u64,
) -> Result<(), BootFilesError> {
    let not_ram = || BootFilesError::NotRam { guest, len };
    let region = mem.find_region(GuestAddress(guest)).ok_or_else(not_ram)?;
    let offset = guest - region.start_addr().0;
    if offset.checked_add(len).is_none_or(|end| end > region.len()) {
        return Err(not_ram());
    }
    map_file_over(region, offset as usize, len as usize, file, file_offset)
        .map_err(|source| BootFilesError::Map { guest, len, source })
}

/// Maps the initrd part `file` (`size` bytes) at its page-aligned guest address `guest`
/// instead of copying it: the file's last page reads as zeroes past its end, and a later
/// part copied into that page only changes this VM's copy.
pub fn share_initrd_part(
    mem: &GuestMemoryMmap,
    file: &File,
    guest: u64,
    size: u64,
) -> Result<(), BootFilesError> {
    map_range(mem, file, guest, 0, size.next_multiple_of(PAGE))
}

/// Remaps the whole pages of every loaded segment of the ELF kernel `file`; returns bytes mapped.
pub fn share_elf_kernel(mem: &GuestMemoryMmap, file: &mut File) -> Result<u64, BootFilesError> {
    let mut mapped = 0;
    for (guest, offset, len) in load_segments(file)?.into_iter().filter_map(whole_pages) {
        map_range(mem, file, guest, offset, len)?;
        mapped += len;
    }
    Ok(mapped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn only_whole_pages_with_matching_alignment_come_from_the_file() {
        let seg = |offset, guest, file_size| Segment {
            offset,
            guest,
            file_size,
        };
        assert_eq!(
            whole_pages(seg(0x1000, 0x10_0000, 0x3000)),
            Some((0x10_0000, 0x1000, 0x3000))
        );
        // Partial first and last pages stay copied.
        assert_eq!(
            whole_pages(seg(0x1800, 0x10_0800, 0x3000)),
            Some((0x10_1000, 0x2000, 0x2000))
        );
        assert_eq!(
            whole_pages(seg(0x1000, 0x10_0800, 0x3000)),
            None,
            "misaligned"
        );
        assert_eq!(
            whole_pages(seg(0x1000, 0x10_0000, 0xfff)),
            None,
            "under a page"
        );
    }

    fn guest_mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn elf_with_segment(offset: u64, guest: u64, data: &[u8]) -> File {
        let mut image = vec![0u8; offset as usize];
        image[..4].copy_from_slice(b"\x7fELF");
        image[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        image[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        image[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let ph = &mut image[64..120];
        ph[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
        ph[8..16].copy_from_slice(&offset.to_le_bytes());
        ph[24..32].copy_from_slice(&guest.to_le_bytes());
        ph[32..40].copy_from_slice(&(data.len() as u64).to_le_bytes());
        image.extend_from_slice(data);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&image).unwrap();
        f
    }

    #[test]
    fn a_shared_segment_reads_the_files_bytes_and_writes_stay_private() {
        use vm_memory::Bytes;
        let data: Vec<u8> = (0..0x2000u32).map(|i| (i % 251) as u8).collect();
        let mut file = elf_with_segment(0x1000, 0x10_0000, &data);
        let mem = guest_mem();
        assert_eq!(share_elf_kernel(&mem, &mut file).unwrap(), 0x2000);
        let mut back = vec![0u8; data.len()];
        mem.read_slice(&mut back, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(back, data);
        mem.write_slice(&[0xaa], GuestAddress(0x10_0000)).unwrap();
        let mut on_disk = [0u8; 1];
        file.seek(SeekFrom::Start(0x1000)).unwrap();
        file.read_exact(&mut on_disk).unwrap();
        assert_eq!(
            on_disk[0], data[0],
            "the guest's write went to its own copy"
        );
    }

    #[test]
    fn ranges_outside_ram_or_unaligned_are_refused() {
        let file = tempfile::tempfile().unwrap();
        let mem = guest_mem();
        assert!(matches!(
            map_range(&mem, &file, 0x3f_f000, 0, 0x2000),
            Err(BootFilesError::NotRam { .. })
        ));
        assert!(matches!(
            map_range(&mem, &file, 0x800, 0, 0x1000),
            Err(BootFilesError::Map { .. })
        ));
    }
}
