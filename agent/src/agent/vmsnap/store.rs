//! The snapshots directory (`<state>/snapshots`, the agent's alone): one directory per image
//! (its digest's hex), one per key inside (`<vcpus>x<MiB>-<hash>`) holding herd-vmm's
//! `state` and `memory` and the agent's `snapshot.json`. A snapshot directory is complete or
//! absent: it is assembled under a `.tmp-*` name and renamed into place (never over another),
//! and removed by renaming it back to a `.tmp-*` name first. `.tmp-*` leftovers of a crash
//! are removed at start.
//!
//! Sealing: herd-vmm writes a snapshot into its instance's directory, as the jail's user,
//! which may still hold the files open after that. So the directory is first renamed out of
//! the instance's reach, then its two files are copied into new files of the agent's own
//! (holes kept, so a mostly empty guest memory stays small), and only those are installed:
//! nothing a jailed process could still write to is ever restored from.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, RenameFlags, SeekFrom};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use super::key::SnapshotKey;
use crate::store::is_sha256_hex;

/// herd-vmm's files in a snapshot directory (docs/snapshots.md).
pub const STATE_FILE: &str = "state";
pub const MEMORY_FILE: &str = "memory";
/// The agent's description of a snapshot, beside herd-vmm's files.
pub const META_FILE: &str = "snapshot.json";
/// Names of directories being assembled or removed.
const TEMP_PREFIX: &str = ".tmp-";

/// Errors of the snapshots directory; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotStoreError {
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is not a directory (herd-vmm writes a snapshot as one)")]
    NotADirectory(PathBuf),
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    #[error("a snapshot is already installed at {0}")]
    Exists(PathBuf),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotStoreError {
    let path = path.to_owned();
    move |source| SnapshotStoreError::Io { what, path, source }
}

/// What the agent records about a snapshot (`snapshot.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotMeta {
    pub digest: String,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// The key's settings hash.
    pub settings: String,
    /// The guest's vsock CID, which every restore must use again.
    pub vsock_cid: u32,
    pub network_interfaces: u8,
    /// The host CPU it was taken on (herd-vmm restores only on the same model).
    pub host_cpu: String,
    /// Unix ms.
    pub created_at_ms: u64,
    pub service: String,
    pub source_instance: String,
    /// Guest memory bytes herd-vmm wrote (holes not counted).
    pub memory_bytes: u64,
}

impl SnapshotMeta {
    pub fn key(&self) -> SnapshotKey {
        SnapshotKey {
            digest: self.digest.clone(),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            settings: self.settings.clone(),
        }
    }
}

/// The host's CPU as herd-vmm compares it: vendor, family, model and stepping of the first
/// processor in /proc/cpuinfo.
pub fn host_cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| "?".to_owned())
    };
    format!(
        "{} {}/{}/{}",
        field("vendor_id"),
        field("cpu family"),
        field("model"),
        field("stepping")
    )
}

/// A snapshot copied into the agent's files, not yet installed; dropping it removes it.
#[derive(Debug)]
pub struct Sealed {
    /// `.tmp-*`: `taken` (what herd-vmm wrote) and `sealed` (the copy).
    work: tempfile::TempDir,
    pub meta: SnapshotMeta,
}

impl Sealed {
    fn sealed(&self) -> PathBuf {
        self.work.path().join("sealed")
    }
}

/// The snapshots directory.
#[derive(Clone, Debug)]
pub struct SnapshotDir {
    root: PathBuf,
}

impl SnapshotDir {
    /// Creates the directory if needed, readable by the agent's user only.
    pub fn open(root: &Path) -> Result<Self, SnapshotStoreError> {
        std::fs::create_dir_all(root).map_err(io_err("create", root))?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("set the mode of", root))?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// Where the snapshot of `key` is (installed or not).
    pub fn path_of(&self, key: &SnapshotKey) -> PathBuf {
        self.root.join(key.rel_path())
    }

    /// Moves `taken` (a directory herd-vmm wrote) here and copies it into files of the
    /// agent's own with `meta`; see the module's doc.
    pub fn seal(&self, taken: &Path, meta: SnapshotMeta) -> Result<Sealed, SnapshotStoreError> {
        let kind = std::fs::symlink_metadata(taken).map_err(io_err("inspect", taken))?;
        if !kind.is_dir() {
            return Err(SnapshotStoreError::NotADirectory(taken.to_owned()));
        }
        let work = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempdir_in(&self.root)
            .map_err(io_err("create a directory in", &self.root))?;
        let moved = work.path().join("taken");
        std::fs::rename(taken, &moved).map_err(io_err("move", taken))?;
        let sealed = Sealed { work, meta };
        let out = sealed.sealed();
        std::fs::create_dir(&out).map_err(io_err("create", &out))?;
        for name in [STATE_FILE, MEMORY_FILE] {
            copy_file(&moved.join(name), &out.join(name))?;
        }
        let json = serde_json::to_vec_pretty(&sealed.meta).unwrap_or_default();
        let meta_path = out.join(META_FILE);
        new_file(&meta_path)
            .and_then(|f| f.write_all_at(&json, 0).and_then(|()| f.sync_all()))
            .map_err(io_err("write", &meta_path))?;
        sync_dir(&out)?;
        Ok(sealed)
    }

    /// Installs a sealed snapshot under its key, never replacing one that is there (the
    /// first one wins); returns its directory.
    pub fn install(&self, sealed: Sealed) -> Result<PathBuf, SnapshotStoreError> {
        let key = sealed.meta.key();
        let image_dir = self.root.join(key.image_dir());
        match std::fs::create_dir(&image_dir) {
            Ok(()) => sync_dir(&self.root)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create", &image_dir)(e)),
        }
        let dest = self.path_of(&key);
        match rustix::fs::renameat_with(CWD, sealed.sealed(), CWD, &dest, RenameFlags::NOREPLACE) {
            Ok(()) => {}
            Err(Errno::EXIST) | Err(Errno::NOTEMPTY) => {
                return Err(SnapshotStoreError::Exists(dest));
            }
            Err(e) => return Err(io_err("install", &dest)(e.into())),
        }
        sync_dir(&image_dir)?;
        // Dropping `sealed` removes what is left in its work directory (herd-vmm's files).
        Ok(dest)
    }

    /// Removes the snapshot of `key`, if there is one, and its image's directory if that
    /// is left empty.
    pub fn remove(&self, key: &SnapshotKey) -> Result<(), SnapshotStoreError> {
        self.remove_path(&self.path_of(key))?;
        // Fails while the image has other snapshots, which is as it should be.
        let _ = std::fs::remove_dir(self.root.join(key.image_dir()));
        Ok(())
    }

    /// Removes every snapshot of the image `digest`.
    pub fn remove_image(&self, digest: &str) -> Result<(), SnapshotStoreError> {
        match crate::store::digest_hex(digest) {
            Some(hex) => self.remove_path(&self.root.join(hex)),
            None => Ok(()),
        }
    }

    /// Renames `path` to a `.tmp-*` name, so it stops being a snapshot at once, then
    /// removes it. A missing `path` is not an error.
    fn remove_path(&self, path: &Path) -> Result<(), SnapshotStoreError> {
        let grave = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempdir_in(&self.root)
            .map_err(io_err("create a directory in", &self.root))?;
        let target = grave.path().join("removed");
        match std::fs::rename(path, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("remove", path)(e)),
        }
        grave.close().map_err(io_err("remove", path))
    }

    /// The installed snapshots, after removing everything else: `.tmp-*` leftovers, images
    /// `keep` says are gone, and directories that are not a valid snapshot of this host's
    /// CPU. What is removed is logged.
    pub fn load(&self, keep: &dyn Fn(&str) -> bool, host_cpu: &str) -> Vec<SnapshotMeta> {
        let mut found = Vec::new();
        for (name, path) in entries(&self.root) {
            let digest = format!("sha256:{name}");
            let why = if name.starts_with(TEMP_PREFIX) {
                "left by an interrupted snapshot or removal"
            } else if !is_sha256_hex(&name) || !path.is_dir() {
                "not a directory of an image's snapshots"
            } else if !keep(&digest) {
                "its image is no longer in the store"
            } else {
                found.extend(self.load_image(&name, &path, host_cpu));
                continue;
            };
            self.discard(&path, why);
        }
        found
    }

    fn load_image(&self, image_dir: &str, dir: &Path, host_cpu: &str) -> Vec<SnapshotMeta> {
        let mut found = Vec::new();
        for (name, path) in entries(dir) {
            match check(image_dir, &name, &path, host_cpu) {
                Ok(meta) => found.push(meta),
                Err(why) => self.discard(&path, why),
            }
        }
        if found.is_empty() {
            let _ = std::fs::remove_dir(dir);
        }
        found
    }

    fn discard(&self, path: &Path, why: &str) {
        tracing::info!(path = %path.display(), why, "removing a snapshot");
        if let Err(e) = self.remove_path(path) {
            tracing::warn!(path = %path.display(), error = %crate::agent::supervisor::chain(&e), "cannot remove");
        }
    }
}

/// The metadata of the snapshot directory `path` (named `name`, in `image_dir`), if it is a
/// complete snapshot of this host's CPU under the key its name says.
fn check(
    image_dir: &str,
    name: &str,
    path: &Path,
    host_cpu: &str,
) -> Result<SnapshotMeta, &'static str> {
    let key = SnapshotKey::parse(image_dir, name).ok_or("not named like a snapshot")?;
    let is_file = |f: &str| std::fs::symlink_metadata(path.join(f)).is_ok_and(|m| m.is_file());
    if !is_file(STATE_FILE) || !is_file(MEMORY_FILE) || !is_file(META_FILE) {
        return Err("incomplete");
    }
    let bytes = std::fs::read(path.join(META_FILE)).map_err(|_| "unreadable metadata")?;
    let meta: SnapshotMeta = serde_json::from_slice(&bytes).map_err(|_| "invalid metadata")?;
    if meta.key() != key {
        return Err("its metadata names another key");
    }
    if meta.host_cpu != host_cpu {
        return Err("taken on another CPU model");
    }
    Ok(meta)
}

/// Names and paths of a directory's entries (none if it cannot be read).
fn entries(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(list) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    list.flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect()
}

fn new_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotStoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))
}

/// Copies the regular file `from` (never through a link, never blocking on a FIFO) to the
/// new file `to`, keeping holes, and syncs it.
fn copy_file(from: &Path, to: &Path) -> Result<(), SnapshotStoreError> {
    let src = OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(from)
        .map_err(io_err("open", from))?;
    let len = src.metadata().map_err(io_err("inspect", from))?;
    if !len.is_file() {
        return Err(SnapshotStoreError::NotAFile(from.to_owned()));
    }
    let dst = new_file(to).map_err(io_err("create", to))?;
    copy_sparse(&src, &dst, len.len()).map_err(io_err("copy into", to))?;
    dst.sync_all().map_err(io_err("sync", to))
}

/// Copies `len` bytes of `src` to `dst` where `src` has data; its holes stay holes.
fn copy_sparse(src: &File, dst: &File, len: u64) -> io::Result<()> {
    dst.set_len(len)?;
    let mut pos = 0;
    while pos < len {
        let start = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
            Ok(at) => at,
            // Only a hole is left.
            Err(Errno::NXIO) => return Ok(()),
            // A file system without hole reporting: everything is data.
            Err(Errno::INVAL) => pos,
            Err(e) => return Err(e.into()),
        };
        let end = match rustix::fs::seek(src, SeekFrom::Hole(start)) {
            Ok(at) => at.min(len),
            Err(Errno::INVAL) => len,
            Err(e) => return Err(e.into()),
        };
        copy_range(src, dst, start, end)?;
        pos = end.max(start + 1);
    }
    Ok(())
}

/// Copies bytes `start..end` to the same offsets, in the kernel where it can.
fn copy_range(src: &File, dst: &File, start: u64, end: u64) -> io::Result<()> {
    let (mut off_in, mut off_out) = (start, start);
    while off_in < end {
        let chunk = usize::try_from(end - off_in)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), chunk) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(Errno::NOSYS | Errno::XDEV | Errno::INVAL | Errno::OPNOTSUPP) => {
                return copy_range_by_hand(src, dst, off_in, end);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_range_by_hand(src: &File, dst: &File, mut at: u64, end: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while at < end {
        let want = usize::try_from(end - at)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = src.read_at(&mut buf[..want], at)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        dst.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
