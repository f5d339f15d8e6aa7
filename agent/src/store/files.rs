//! The store's filesystem primitives: atomic writes (temp file in the same directory, fsync,
//! rename, fsync the directory), blob hashing and verification, stale temp-file cleanup and
//! the two lock files that make concurrent builds, loads and removals safe.
//!
//! Locking protocol: writers (build, load) hold `.lock-gc` shared from their first blob to
//! their index update; `image rm` holds it exclusive while it deletes unused blobs, so it can
//! never delete a blob that a running build has written but not yet referenced. The index is
//! read-modify-written under `.lock-index`, always taken after `.lock-gc`. Readers take no lock:
//! every file they read is replaced atomically.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::Digest as _;

use super::StoreError;

/// Prefix of every temporary file the store writes.
pub const TEMP_PREFIX: &str = ".tmp-";
const GC_LOCK: &str = ".lock-gc";
const INDEX_LOCK: &str = ".lock-index";

pub(super) fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

/// Whether `s` is 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The hex part of a `sha256:<hex>` digest, if it is one.
pub fn digest_hex(digest: &str) -> Option<&str> {
    digest.strip_prefix("sha256:").filter(|h| is_sha256_hex(h))
}

/// Fsyncs a directory so renames and unlinks in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

/// A temporary file in `dir`, named so the store ignores it and cleans it up if abandoned.
pub fn temp_file(dir: &Path) -> Result<tempfile::NamedTempFile, StoreError> {
    tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(io_err("create a temporary file in", dir))
}

/// Makes a fully written temp file durable and renames it to `path` (same directory).
pub fn persist(tmp: tempfile::NamedTempFile, path: &Path, mode: u32) -> Result<(), StoreError> {
    let file = tmp.as_file();
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io_err("set permissions of", tmp.path()))?;
    file.sync_all().map_err(io_err("sync", tmp.path()))?;
    tmp.persist(path).map_err(|e| StoreError::Io {
        action: "rename into place",
        path: path.to_owned(),
        source: e.error,
    })?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Writes `bytes` to `path` atomically: readers see the old file or the new one, never part.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = temp_file(dir)?;
    tmp.write_all(bytes).map_err(io_err("write", tmp.path()))?;
    persist(tmp, path, mode)
}

/// Streams `reader` into `out`, returning the sha256 hex and byte count.
pub fn copy_hashing(mut reader: impl Read, mut out: impl Write) -> io::Result<(String, u64)> {
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
    out.flush()?;
    Ok((hex::encode(hasher.finalize()), total))
}

/// Checks the file at `path` hashes to `digest` and has `size` bytes (when given).
pub fn verify_file(path: &Path, digest: &str, size: Option<u64>) -> Result<(), StoreError> {
    let file = match File::open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StoreError::MissingBlob {
                digest: digest.to_owned(),
                location: path.display().to_string(),
            });
        }
        other => other.map_err(io_err("open", path))?,
    };
    let (hex, len) = copy_hashing(file, io::sink()).map_err(io_err("read", path))?;
    check_digest(digest, &hex, &path.display().to_string())?;
    match size {
        Some(size) if size != len => Err(StoreError::SizeMismatch {
            digest: digest.to_owned(),
            expected: size,
            actual: len,
        }),
        _ => Ok(()),
    }
}

/// Errors unless `actual_hex` is the hex of `digest`.
pub fn check_digest(digest: &str, actual_hex: &str, location: &str) -> Result<(), StoreError> {
    if digest_hex(digest) == Some(actual_hex) {
        Ok(())
    } else {
        Err(StoreError::DigestMismatch {
            digest: digest.to_owned(),
            location: location.to_owned(),
            actual: format!("sha256:{actual_hex}"),
        })
    }
}

/// Reads a (small) file whole and checks it against `digest`.
pub fn read_verified(path: &Path, digest: &str) -> Result<Vec<u8>, StoreError> {
    let bytes = match std::fs::read(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StoreError::MissingBlob {
                digest: digest.to_owned(),
                location: path.display().to_string(),
            });
        }
        other => other.map_err(io_err("read", path))?,
    };
    let hex = hex::encode(sha2::Sha256::digest(&bytes));
    check_digest(digest, &hex, &path.display().to_string())?;
    Ok(bytes)
}

/// Removes abandoned temporary files from `dirs`. Only call with no writer running (that is,
/// holding the gc lock exclusively).
pub fn remove_temp_files(dirs: &[PathBuf]) -> Result<usize, StoreError> {
    let mut removed = 0;
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                std::fs::remove_file(entry.path()).map_err(io_err("remove", &entry.path()))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

fn lock_file(dir: &Path, name: &str) -> Result<File, StoreError> {
    let path = dir.join(name);
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("open lock", &path))
}

/// Held by a writer: the gc lock, shared.
pub struct WriterLock {
    _gc: File,
}

/// Takes the gc lock shared. If nobody holds it, first removes abandoned temp files.
pub fn writer_lock(dir: &Path, temp_dirs: &[PathBuf]) -> Result<WriterLock, StoreError> {
    let gc = lock_file(dir, GC_LOCK)?;
    if gc.try_lock().is_ok() {
        remove_temp_files(temp_dirs)?;
    }
    gc.lock_shared()
        .map_err(io_err("lock", &dir.join(GC_LOCK)))?;
    Ok(WriterLock { _gc: gc })
}

/// Takes the gc lock exclusively: no writer is running while it is held.
pub fn gc_lock(dir: &Path) -> Result<File, StoreError> {
    let gc = lock_file(dir, GC_LOCK)?;
    gc.lock().map_err(io_err("lock", &dir.join(GC_LOCK)))?;
    Ok(gc)
}

/// How long [`try_gc_lock`] keeps asking before it concludes a writer holds the lock.
pub const GC_LOCK_PATIENCE: Duration = Duration::from_millis(200);

/// Takes the gc lock exclusively if no writer holds it, asking again for up to `patience`.
/// The retries matter even with a single writer: a child another thread is spawning holds a
/// copy of every descriptor (cloexec or not) until it execs, so a lock just released here can
/// look held for a moment. A real writer holds it far longer than `patience`.
pub fn try_gc_lock(dir: &Path, patience: Duration) -> Result<Option<File>, StoreError> {
    let gc = lock_file(dir, GC_LOCK)?;
    let deadline = Instant::now() + patience;
    loop {
        if gc.try_lock().is_ok() {
            return Ok(Some(gc));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Takes the index lock exclusively.
pub fn index_lock(dir: &Path) -> Result<File, StoreError> {
    let index = lock_file(dir, INDEX_LOCK)?;
    index
        .lock()
        .map_err(io_err("lock", &dir.join(INDEX_LOCK)))?;
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_files_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"one", 0o644).unwrap();
        write_atomic(&path, b"two", 0o444).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o444
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn verification_names_the_blob_and_both_digests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        std::fs::write(&path, b"hello").unwrap();
        let good = crate::image::sha256_digest(b"hello");
        verify_file(&path, &good, Some(5)).unwrap();
        assert_eq!(read_verified(&path, &good).unwrap(), b"hello");
        assert!(matches!(
            verify_file(&path, &good, Some(6)),
            Err(StoreError::SizeMismatch { .. })
        ));
        std::fs::write(&path, b"hell").unwrap();
        let err = verify_file(&path, &good, Some(5)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("digest mismatch: blob {good} at ")),
            "{text}"
        );
        assert!(
            text.contains(&crate::image::sha256_digest(b"hell")),
            "{text}"
        );
        assert!(matches!(
            read_verified(&dir.path().join("nope"), &good),
            Err(StoreError::MissingBlob { .. })
        ));
    }

    #[test]
    fn stale_temp_files_are_removed_only_without_writers() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(format!("{TEMP_PREFIX}crashed"));
        std::fs::write(&stale, b"half").unwrap();
        let writer = writer_lock(dir.path(), &[dir.path().to_owned()]).unwrap();
        assert!(!stale.exists());
        std::fs::write(&stale, b"half").unwrap();
        // A second writer runs concurrently: it must not remove the first one's temp files.
        let second = writer_lock(dir.path(), &[dir.path().to_owned()]).unwrap();
        assert!(stale.exists());
        assert!(try_gc_lock(dir.path(), Duration::ZERO).unwrap().is_none());
        drop((writer, second));
        assert!(try_gc_lock(dir.path(), GC_LOCK_PATIENCE).unwrap().is_some());
    }
}
