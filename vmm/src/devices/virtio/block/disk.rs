//! The file behind a virtio-blk device: opened once at start (a regular file or a block
//! device, read-only or read-write), then positional reads and writes for requests that
//! `request::parse` has already checked, through a bounded bounce buffer. A flush is
//! `fdatasync`, so a completed guest flush means the data is durable in the host file.
//!
//! DISCARD and WRITE_ZEROES use `fallocate` with `KEEP_SIZE`: a discard punches a hole; write
//! zeroes zeroes the range in place (`ZERO_RANGE`) or, when the guest allows unmapping, punches
//! a hole. Where the file system lacks a mode (`EOPNOTSUPP`), write zeroes tries the other
//! mode and then writes zero bytes, while a discard, being advisory, does nothing. A mode is
//! not tried again after its first `EOPNOTSUPP`.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use vm_memory::{Address, Bytes, GuestMemoryMmap};
use vmm_sys_util::fallocate::{FallocateMode, fallocate};

use super::ranges::Range;
use super::request::{ID_LEN, Request, RequestType, SECTOR_SIZE};

/// Largest chunk copied between the file and guest memory at once.
const CHUNK: usize = 64 * 1024;

/// Errors opening a disk or serving a request.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot open {0}")]
    Open(PathBuf, #[source] io::Error),
    #[error(
        "cannot open {0} read-write (a read-only file or file system?); ask for a read-only disk"
    )]
    ReadOnlyFile(PathBuf, #[source] io::Error),
    #[error("{0} is not a regular file or block device")]
    NotADisk(PathBuf),
    #[error("cannot find the size of {0}")]
    Size(PathBuf, #[source] io::Error),
    #[error("cannot read the disk at byte {0}")]
    Read(u64, #[source] io::Error),
    #[error("cannot write the disk at byte {0}")]
    Write(u64, #[source] io::Error),
    #[error("cannot flush the disk")]
    Flush(#[source] io::Error),
    #[error("cannot discard the disk at byte {0}")]
    Discard(u64, #[source] io::Error),
    #[error("cannot write zeroes to the disk at byte {0}")]
    WriteZeroes(u64, #[source] io::Error),
    #[error("cannot access guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

/// How the device treats the host page cache (Firecracker's `cache_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Flush requests are completed without syncing (FLUSH is not offered).
    Unsafe,
    /// FLUSH is offered and syncs the file; a driver that does not ack it gets every write
    /// synced (write-through).
    Writeback,
}

/// The `fallocate` modes the backing file has not refused with `EOPNOTSUPP` (yet).
#[derive(Debug, Clone, Copy)]
struct Fallocate {
    punch_hole: bool,
    zero_range: bool,
}

/// An open backing file.
#[derive(Debug)]
pub struct Disk {
    file: File,
    sectors: u64,
    read_only: bool,
    cache: CacheMode,
    id: [u8; ID_LEN],
    buf: Vec<u8>,
    fallocate: Fallocate,
}

impl Disk {
    /// Opens `path` (read-only if `read_only`); `id` is truncated to 20 bytes for `GET_ID`.
    pub fn open(
        path: &Path,
        read_only: bool,
        cache: CacheMode,
        id: &str,
    ) -> Result<Self, DiskError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
                    if !read_only =>
                {
                    DiskError::ReadOnlyFile(path.to_owned(), e)
                }
                io::ErrorKind::IsADirectory => DiskError::NotADisk(path.to_owned()),
                _ => DiskError::Open(path.to_owned(), e),
            })?;
        let kind = file
            .metadata()
            .map_err(|e| DiskError::Size(path.to_owned(), e))?
            .file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(DiskError::NotADisk(path.to_owned()));
        }
        // Block devices report a length of 0 in their metadata; seeking to the end works for both.
        let bytes = (&file)
            .seek(SeekFrom::End(0))
            .map_err(|e| DiskError::Size(path.to_owned(), e))?;
        Ok(Self::new(file, bytes / SECTOR_SIZE, read_only, cache, id))
    }

    /// A disk over an already open file of `sectors` sectors.
    pub fn new(file: File, sectors: u64, read_only: bool, cache: CacheMode, id: &str) -> Self {
        let mut id_bytes = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Self {
            file,
            sectors,
            read_only,
            cache,
            id: id_bytes,
            buf: Vec::new(),
            fallocate: Fallocate {
                punch_hole: true,
                zero_range: true,
            },
        }
    }

    /// This disk as if its file system supported no `fallocate` mode (tests the fallbacks).
    #[cfg(test)]
    pub(super) fn without_fallocate(mut self) -> Self {
        self.fallocate = Fallocate {
            punch_hole: false,
            zero_range: false,
        };
        self
    }

    /// Size in sectors (a partial last sector is not part of the disk).
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The cache mode.
    pub fn cache(&self) -> CacheMode {
        self.cache
    }

    /// Serves a checked request; returns the bytes written to guest memory (not counting the
    /// status byte). `write_through` syncs after each request that changes the disk.
    pub fn execute(
        &mut self,
        mem: &GuestMemoryMmap,
        req: &Request,
        write_through: bool,
    ) -> Result<u32, DiskError> {
        match req.kind {
            RequestType::In => return self.transfer(mem, req, true).map(|()| req.len as u32),
            RequestType::GetId => return self.get_id(mem, req),
            RequestType::Flush => return self.flush().map(|()| 0),
            RequestType::Out => self.transfer(mem, req, false)?,
            RequestType::Discard => req.ranges.iter().try_for_each(|r| self.discard(r))?,
            RequestType::WriteZeroes => req.ranges.iter().try_for_each(|r| self.write_zeroes(r))?,
        }
        // Only the requests that change the disk get here.
        if write_through {
            self.file.sync_data().map_err(DiskError::Flush)?;
        }
        Ok(0)
    }

    /// Serves FLUSH: syncs the file unless the cache mode says not to.
    fn flush(&self) -> Result<(), DiskError> {
        match self.cache {
            CacheMode::Unsafe => Ok(()),
            CacheMode::Writeback => self.file.sync_data().map_err(DiskError::Flush),
        }
    }

    /// Deallocates `r`; does nothing where the file system cannot (discard is advisory: the
    /// spec lets reads of a discarded range return the old data).
    fn discard(&mut self, r: &Range) -> Result<(), DiskError> {
        let (offset, len) = r.bytes();
        self.try_fallocate(FallocateMode::PunchHole, offset, len)
            .map(drop)
            .map_err(|e| DiskError::Discard(offset, e))
    }

    /// Makes `r` read as zeroes: in place, or by a hole where the guest allows unmapping;
    /// each falls back to the other, then to writing zero bytes.
    fn write_zeroes(&mut self, r: &Range) -> Result<(), DiskError> {
        let (offset, len) = r.bytes();
        let modes = if r.unmap {
            [FallocateMode::PunchHole, FallocateMode::ZeroRange]
        } else {
            [FallocateMode::ZeroRange, FallocateMode::PunchHole]
        };
        for mode in modes {
            let done = self
                .try_fallocate(mode, offset, len)
                .map_err(|e| DiskError::WriteZeroes(offset, e))?;
            if done {
                return Ok(());
            }
        }
        self.write_zero_bytes(offset, len)
    }

    /// `fallocate(mode | KEEP_SIZE)` over `len` bytes at `offset`; false if the file system
    /// does not support `mode` (or the range is empty: fallocate refuses a length of 0).
    fn try_fallocate(&mut self, mode: FallocateMode, offset: u64, len: u64) -> io::Result<bool> {
        let supported = match mode {
            FallocateMode::PunchHole => &mut self.fallocate.punch_hole,
            FallocateMode::ZeroRange => &mut self.fallocate.zero_range,
        };
        if !*supported {
            return Ok(false);
        }
        if len == 0 {
            return Ok(true);
        }
        match fallocate(&self.file, mode, true, offset, len) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == libc::EOPNOTSUPP => {
                *supported = false;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `len` zero bytes at `offset`, a chunk at a time.
    fn write_zero_bytes(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.buf.clear();
        self.buf.resize(CHUNK, 0);
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let n = (end - at).min(CHUNK as u64) as usize;
            self.file
                .write_all_at(&self.buf[..n], at)
                .map_err(|e| DiskError::Write(at, e))?;
            at += n as u64;
        }
        Ok(())
    }

    /// Copies between the file (from the request's sector) and its data buffers.
    fn transfer(
        &mut self,
        mem: &GuestMemoryMmap,
        req: &Request,
        read: bool,
    ) -> Result<(), DiskError> {
        let mut offset = req.sector * SECTOR_SIZE;
        self.buf.resize(CHUNK, 0);
        for &(addr, len) in &req.data {
            let mut done = 0usize;
            while done < len as usize {
                let n = (len as usize - done).min(CHUNK);
                let at = addr.unchecked_add(done as u64);
                let buf = &mut self.buf[..n];
                if read {
                    self.file
                        .read_exact_at(buf, offset)
                        .map_err(|e| DiskError::Read(offset, e))?;
                    mem.write_slice(buf, at).map_err(DiskError::Memory)?;
                } else {
                    mem.read_slice(buf, at).map_err(DiskError::Memory)?;
                    self.file
                        .write_all_at(buf, offset)
                        .map_err(|e| DiskError::Write(offset, e))?;
                }
                done += n;
                offset += n as u64;
            }
        }
        Ok(())
    }

    /// Writes the NUL-padded id string over the data buffers (as much as fits).
    fn get_id(&self, mem: &GuestMemoryMmap, req: &Request) -> Result<u32, DiskError> {
        let mut rest = &self.id[..];
        for &(addr, len) in &req.data {
            let n = (len as usize).min(rest.len());
            mem.write_slice(&rest[..n], addr)
                .map_err(DiskError::Memory)?;
            rest = &rest[n..];
        }
        Ok((ID_LEN - rest.len()) as u32)
    }
}
