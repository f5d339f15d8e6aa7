//! Guest memory in a snapshot: saved as one file holding the RAM regions one after another,
//! zero pages left as holes (a sparse file, so a mostly idle 1 GiB guest costs what it
//! touched); restored by mapping that file privately over the regions, so a restore reads
//! nothing up front and the guest faults in only the pages it uses, copy-on-write.
//!
//! Saving reads only pages that can hold data: on a host without swap, a page of anonymous
//! guest RAM that is not resident was never touched, so it is skipped without being read
//! (reading it would fault in the zero page, which for a 1 GiB guest costs most of a second
//! while the VM is paused). Ranges backed by a file (boot files, a restored snapshot) are
//! read whole: there an untouched page holds the file's bytes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::sys::memory::{map_file_over, overlaps_file_backed, resident_pages};

const PAGE: usize = 4096;
/// Memory is read in chunks of this size to find its non-zero pages.
const CHUNK: usize = 1 << 20;

/// Errors saving or mapping guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    #[error("cannot write the memory file")]
    Write(#[source] io::Error),
    #[error("cannot read guest memory at {0:#x}")]
    Read(u64, #[source] vm_memory::GuestMemoryError),
    #[error("the memory file holds {file} bytes, the guest has {guest} bytes of RAM")]
    Size { file: u64, guest: u64 },
    #[error("cannot read the memory file's size")]
    Stat(#[source] io::Error),
    #[error("cannot map the memory file over guest RAM at {0:#x}")]
    Map(u64, #[source] io::Error),
    #[error("cannot tell which guest pages are resident at {0:#x}")]
    Residency(u64, #[source] io::Error),
}

/// Bytes of guest RAM (the memory file's size).
pub fn guest_bytes(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// Writes every non-zero page of `mem` into `file` (empty, opened for writing) at its place;
/// returns the bytes written. The vCPUs must be paused. `untouched_is_zero`: whether
/// non-resident anonymous pages are known to be zero (the host has no swap).
pub fn save(
    mem: &GuestMemoryMmap,
    file: &File,
    untouched_is_zero: bool,
) -> Result<u64, MemoryFileError> {
    file.set_len(guest_bytes(mem))
        .map_err(MemoryFileError::Write)?;
    let mut buf = vec![0u8; CHUNK];
    let mut resident = vec![0u8; CHUNK / PAGE];
    let (mut file_offset, mut written) = (0u64, 0u64);
    for region in mem.iter() {
        let len = region.len();
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            let at = vm_memory::GuestAddress(region.start_addr().0 + done);
            let host = region.as_ptr().wrapping_add(done as usize);
            let only_resident = untouched_is_zero && !overlaps_file_backed(host, n);
            let pages = if only_resident {
                resident_pages(host, n, &mut resident)
                    .map_err(|e| MemoryFileError::Residency(at.0, e))?;
                &resident[..n / PAGE]
            } else {
                &[][..]
            };
            let chunk = Chunk {
                at,
                len: n,
                file_offset: file_offset + done,
            };
            written += chunk.save(mem, file, &mut buf, only_resident.then_some(pages))?;
            done += n as u64;
        }
        file_offset += len;
    }
    Ok(written)
}

/// One chunk of guest RAM and where it goes in the memory file.
struct Chunk {
    at: vm_memory::GuestAddress,
    len: usize,
    file_offset: u64,
}

impl Chunk {
    /// Writes the chunk's non-zero pages, reading only the `resident` ones when given (one
    /// byte per page, bit 0 set if resident); returns the bytes written.
    fn save(
        &self,
        mem: &GuestMemoryMmap,
        file: &File,
        buf: &mut [u8],
        resident: Option<&[u8]>,
    ) -> Result<u64, MemoryFileError> {
        let Some(resident) = resident else {
            return self.save_pages(mem, file, buf, 0..self.len / PAGE);
        };
        let mut written = 0;
        let mut page = 0;
        while page < resident.len() {
            if resident[page] & 1 == 0 {
                page += 1;
                continue;
            }
            let end = (page..resident.len())
                .find(|&p| resident[p] & 1 == 0)
                .unwrap_or(resident.len());
            written += self.save_pages(mem, file, buf, page..end)?;
            page = end;
        }
        Ok(written)
    }

    /// Reads pages `pages` of the chunk and writes their non-zero runs.
    fn save_pages(
        &self,
        mem: &GuestMemoryMmap,
        file: &File,
        buf: &mut [u8],
        pages: std::ops::Range<usize>,
    ) -> Result<u64, MemoryFileError> {
        let (from, to) = (pages.start * PAGE, (pages.end * PAGE).min(self.len));
        let at = vm_memory::GuestAddress(self.at.0 + from as u64);
        mem.read_slice(&mut buf[..to - from], at)
            .map_err(|e| MemoryFileError::Read(at.0, e))?;
        write_non_zero(file, &buf[..to - from], self.file_offset + from as u64)
    }
}

/// Writes the runs of non-zero pages of `chunk` at `offset` onward; returns bytes written.
fn write_non_zero(file: &File, chunk: &[u8], offset: u64) -> Result<u64, MemoryFileError> {
    let mut written = 0;
    let mut run: Option<usize> = None;
    for (i, page) in chunk.chunks(PAGE).enumerate() {
        let zero = page.iter().all(|&b| b == 0);
        match (run, zero) {
            (None, false) => run = Some(i * PAGE),
            (Some(from), true) => {
                written += write_run(file, &chunk[from..i * PAGE], offset + from as u64)?;
                run = None;
            }
            _ => {}
        }
    }
    if let Some(from) = run {
        written += write_run(file, &chunk[from..], offset + from as u64)?;
    }
    Ok(written)
}

fn write_run(file: &File, bytes: &[u8], offset: u64) -> Result<u64, MemoryFileError> {
    file.write_all_at(bytes, offset)
        .map_err(MemoryFileError::Write)?;
    Ok(bytes.len() as u64)
}

/// Replaces every RAM region of `mem` with a private mapping of its part of `file`.
pub fn map(mem: &GuestMemoryMmap, file: &File) -> Result<(), MemoryFileError> {
    let size = file.metadata().map_err(MemoryFileError::Stat)?.len();
    let guest = guest_bytes(mem);
    if size != guest {
        return Err(MemoryFileError::Size { file: size, guest });
    }
    let mut offset = 0u64;
    for region in mem.iter() {
        let len = region.len() as usize;
        map_file_over(region, 0, len, file, offset)
            .map_err(|e| MemoryFileError::Map(region.start_addr().0, e))?;
        offset += region.len();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn guest(mib: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mib << 20)]).unwrap()
    }

    #[test]
    fn saved_memory_is_sparse_and_maps_back_with_the_same_bytes() {
        let mem = guest(4);
        mem.write_slice(b"counter", GuestAddress(0x1234)).unwrap();
        mem.write_slice(&[7u8; PAGE * 2], GuestAddress(0x30_0000))
            .unwrap();
        let file = tempfile::tempfile().unwrap();
        let written = save(&mem, &file, false).unwrap();
        assert_eq!(written, 3 * PAGE as u64, "only the touched pages");
        assert_eq!(file.metadata().unwrap().len(), 4 << 20);

        let restored = guest(4);
        map(&restored, &file).unwrap();
        let mut word = [0u8; 7];
        restored
            .read_slice(&mut word, GuestAddress(0x1234))
            .unwrap();
        assert_eq!(&word, b"counter");
        let mut page = [0u8; 2 * PAGE];
        restored
            .read_slice(&mut page, GuestAddress(0x30_0000))
            .unwrap();
        assert_eq!(page, [7u8; 2 * PAGE]);
        // Private: the restored guest's writes never reach the file.
        restored
            .write_slice(b"changed", GuestAddress(0x1234))
            .unwrap();
        let mut in_file = [0u8; 7];
        file.read_exact_at(&mut in_file, 0x1234).unwrap();
        assert_eq!(&in_file, b"counter");
    }

    #[test]
    fn reading_only_resident_pages_saves_the_same_bytes() {
        let mem = guest(4);
        mem.write_slice(b"resident", GuestAddress(0x20_1000))
            .unwrap();
        let mut zero_page = [1u8; PAGE];
        // A page only read (the zero page mapped) and a chunk never touched.
        mem.read_slice(&mut zero_page, GuestAddress(0x10_0000))
            .unwrap();
        let (full, sparse) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
        assert_eq!(save(&mem, &full, false).unwrap(), PAGE as u64);
        assert_eq!(save(&mem, &sparse, true).unwrap(), PAGE as u64);
        let (mut a, mut b) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
        full.read_exact_at(&mut a, 0).unwrap();
        sparse.read_exact_at(&mut b, 0).unwrap();
        assert!(a == b, "the same file either way");
    }

    #[test]
    fn a_memory_file_of_another_size_is_refused() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(1 << 20).unwrap();
        assert!(matches!(
            map(&guest(4), &file),
            Err(MemoryFileError::Size {
                file: 1048576,
                guest: 4194304
            })
        ));
    }
}
