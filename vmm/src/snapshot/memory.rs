//! Guest memory in a snapshot: saved as one file holding the RAM regions one after another,
//! zero pages left as holes (a sparse file, so a mostly idle 1 GiB guest costs what it
//! touched); restored by mapping that file privately over the regions, so a restore reads
//! nothing up front and the guest faults in only the pages it uses, copy-on-write.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::sys::memory::map_file_over;

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
}

/// Bytes of guest RAM (the memory file's size).
pub fn guest_bytes(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// Writes every non-zero page of `mem` into `file` (empty, opened for writing) at its place;
/// returns the bytes written. The vCPUs must be paused.
pub fn save(mem: &GuestMemoryMmap, file: &File) -> Result<u64, MemoryFileError> {
    file.set_len(guest_bytes(mem))
        .map_err(MemoryFileError::Write)?;
    let mut buf = vec![0u8; CHUNK];
    let (mut file_offset, mut written) = (0u64, 0u64);
    for region in mem.iter() {
        let start = region.start_addr();
        let len = region.len();
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            let at = vm_memory::GuestAddress(start.0 + done);
            mem.read_slice(&mut buf[..n], at)
                .map_err(|e| MemoryFileError::Read(at.0, e))?;
            written += write_non_zero(file, &buf[..n], file_offset + done)?;
            done += n as u64;
        }
        file_offset += len;
    }
    Ok(written)
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
        let written = save(&mem, &file).unwrap();
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
