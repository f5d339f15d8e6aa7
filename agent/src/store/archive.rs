//! `herd save` and `herd load`: one image as an OCI image layout in a tarball.
//!
//! Saving writes a deterministic tar (entries sorted, mode 0644/0755, uid/gid 0, mtime 0, no
//! user names) so the same image always gives the same bytes. Loading trusts nothing: it checks
//! the tar's own structure (header checksums, zero padding and trailer), stages every blob in
//! a temp file while hashing it, checks the index strictly and every manifest and config, and
//! only then renames the blobs into place and updates the index. A damaged archive leaves the
//! store as it was.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use sha2::Digest as _;
use tempfile::NamedTempFile;

use super::files::{self, digest_hex, io_err, is_sha256_hex};
use super::index::{Entry, Index, parse_archive_index};
use super::{LAYOUT, Store, StoreError, parse_manifest};
use crate::image::config::{ImageConfig, KernelFormat};

const MAX_SMALL_FILE: u64 = 16 << 20;

/// An image imported by `load`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// `name:version`.
    pub reference: String,
    /// Manifest digest.
    pub digest: String,
    /// The digest the ref pointed at before, if it pointed elsewhere.
    pub replaced: Option<String>,
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: sha2::Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// Writes the tarball of the image `reference` denotes to `out` (atomically); returns its digest.
pub(super) fn save(store: &Store, reference: &str, out: &Path) -> Result<String, StoreError> {
    let index = Index::read(store.dir())?;
    let mut entries = index.find(reference)?;
    entries.sort_by_key(Entry::reference);
    let digest = entries[0].digest.clone();
    let (manifest, parts) = store.manifest(&digest)?;
    let mut blobs: Vec<(String, u64)> = vec![(digest.clone(), manifest.len() as u64)];
    blobs.extend(parts.all().iter().map(|b| (b.digest.clone(), b.size)));
    blobs.sort();
    blobs.dedup();
    let entries = entries
        .into_iter()
        .map(|e| Entry { sequence: 0, ..e })
        .collect();
    let index_json = Index::from_entries(entries).to_json(false);

    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = files::temp_file(dir)?;
    let mut tar = tar::Builder::new(BufWriter::new(tmp.as_file()));
    for d in ["blobs/", "blobs/sha256/"] {
        let mut h = header(tar::EntryType::Directory, 0, 0o755);
        tar.append_data(&mut h, d, io::empty())
            .map_err(io_err("write", out))?;
    }
    for (digest, size) in &blobs {
        append_blob(&mut tar, store, digest, *size, out)?;
    }
    for (name, bytes) in [("index.json", index_json), ("oci-layout", LAYOUT.to_vec())] {
        let mut h = header(tar::EntryType::Regular, bytes.len() as u64, 0o644);
        tar.append_data(&mut h, name, bytes.as_slice())
            .map_err(io_err("write", out))?;
    }
    let mut writer = tar.into_inner().map_err(io_err("write", out))?;
    writer.flush().map_err(io_err("write", out))?;
    drop(writer);
    files::persist(tmp, out, 0o644)?;
    Ok(digest)
}

/// Appends one blob, verifying it against its digest on the way.
fn append_blob<W: Write>(
    tar: &mut tar::Builder<W>,
    store: &Store,
    digest: &str,
    size: u64,
    out: &Path,
) -> Result<(), StoreError> {
    let path = store.blob_path(digest);
    let location = path.display().to_string();
    let file = File::open(&path).map_err(|_| StoreError::MissingBlob {
        digest: digest.to_owned(),
        location: location.clone(),
    })?;
    let mut reader = Hashing {
        inner: file.take(size),
        hasher: sha2::Sha256::new(),
    };
    let name = format!("blobs/sha256/{}", digest_hex(digest).unwrap_or_default());
    let mut h = header(tar::EntryType::Regular, size, 0o644);
    tar.append_data(&mut h, &name, &mut reader)
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => StoreError::DigestMismatch {
                digest: digest.to_owned(),
                location: location.clone(),
                actual: "a truncated blob".into(),
            },
            _ => StoreError::Io {
                action: "write",
                path: out.to_owned(),
                source: e,
            },
        })?;
    files::check_digest(digest, &hex::encode(reader.hasher.finalize()), &location)
}

/// Everything read from an archive, blobs still in temp files.
struct Staged {
    layout: Option<Vec<u8>>,
    index: Option<Vec<u8>>,
    blobs: BTreeMap<String, NamedTempFile>,
}

/// Imports the images of the tarball at `path`.
pub(super) fn load(store: &Store, path: &Path) -> Result<Vec<Loaded>, StoreError> {
    let bad = |why: String| StoreError::BadArchive {
        path: path.to_owned(),
        why,
    };
    check_structure(path)?;
    let _lock = store.start_write()?;
    let staged = stage(store, path)?;
    let layout = staged
        .layout
        .as_deref()
        .and_then(|l| serde_json::from_slice::<serde_json::Value>(l).ok());
    if layout != Some(serde_json::json!({"imageLayoutVersion": "1.0.0"})) {
        return Err(bad(
            "oci-layout is missing or not {\"imageLayoutVersion\":\"1.0.0\"}".into(),
        ));
    }
    let index = staged
        .index
        .as_deref()
        .ok_or_else(|| bad("it has no index.json".into()))?;
    let entries = parse_archive_index(index).map_err(bad)?;
    if entries.is_empty() {
        return Err(bad("its index.json lists no image".into()));
    }
    let mut needed = Vec::new();
    for entry in &entries {
        needed.extend(check_image(path, &staged, entry)?);
    }
    let mut blobs = staged.blobs;
    for hex in &needed {
        if let Some(tmp) = blobs.remove(hex) {
            files::persist(tmp, &store.blob_path(&format!("sha256:{hex}")), 0o444)?;
        }
    }
    let mut loaded = Vec::new();
    {
        let _index = files::index_lock(store.dir())?;
        let mut index = Index::read(store.dir())?;
        for e in &entries {
            let replaced = index.set(&e.name, &e.version, &e.digest, e.size);
            loaded.push(Loaded {
                reference: e.reference(),
                digest: e.digest.clone(),
                replaced,
            });
        }
        index.write(store.dir())?;
    }
    drop(_lock);
    if loaded.iter().any(|l| l.replaced.is_some()) {
        store.collect_if_idle()?;
    }
    Ok(loaded)
}

/// Checks the tar's framing: every header parses with a valid checksum, and every byte that
/// is neither header nor data (padding, end-of-archive blocks) is zero.
fn check_structure(path: &Path) -> Result<(), StoreError> {
    let read_err = |e| StoreError::ArchiveRead(path.to_owned(), e);
    let bad = |why: String| StoreError::BadArchive {
        path: path.to_owned(),
        why,
    };
    let file = File::open(path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    if len % 512 != 0 {
        return Err(bad(format!(
            "its size {len} is not a multiple of 512 bytes"
        )));
    }
    let mut gaps = Vec::new();
    let mut end = 0;
    let mut archive = tar::Archive::new(&file);
    for entry in archive.entries_with_seek().map_err(read_err)?.raw(true) {
        let entry = entry.map_err(|e| bad(format!("bad tar header ({e})")))?;
        check_checksum_field(&file, entry.raw_header_position()).map_err(bad)?;
        let data_end = entry.raw_file_position() + entry.size();
        end = data_end.next_multiple_of(512);
        gaps.push((data_end, end));
    }
    gaps.push((end, len));
    let mut buf = vec![0u8; 64 << 10];
    for (mut from, to) in gaps {
        while from < to {
            let n = (to - from).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], from)
                .map_err(|e| bad(format!("it ends inside an entry ({e})")))?;
            if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
                return Err(bad(format!(
                    "non-zero byte at offset {} in tar padding",
                    from + i as u64
                )));
            }
            from += n as u64;
        }
    }
    Ok(())
}

/// The checksum field is the one part of a header its checksum does not cover, and tar
/// readers parse it leniently: require one of the two renderings tar writers use.
fn check_checksum_field(file: &File, at: u64) -> Result<(), String> {
    let mut head = [0u8; 512];
    file.read_exact_at(&mut head, at)
        .map_err(|e| format!("cannot read the header at offset {at} ({e})"))?;
    let sum: u32 = head[..148]
        .iter()
        .chain(&head[156..])
        .map(|&b| u32::from(b))
        .sum::<u32>()
        + 8 * 32;
    let field = &head[148..156];
    if field == format!("{sum:07o}\0").as_bytes() || field == format!("{sum:06o}\0 ").as_bytes() {
        Ok(())
    } else {
        Err(format!(
            "the header at offset {at} has a malformed checksum field"
        ))
    }
}

fn read_small(
    path: &Path,
    entry: &mut tar::Entry<'_, File>,
    name: &str,
) -> Result<Vec<u8>, StoreError> {
    if entry.size() > MAX_SMALL_FILE {
        return Err(StoreError::BadArchive {
            path: path.to_owned(),
            why: format!("{name} is too large"),
        });
    }
    let mut bytes = Vec::new();
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| StoreError::ArchiveRead(path.to_owned(), e))?;
    Ok(bytes)
}

/// Reads the archive, hashing each blob into a temp file in the store's blob directory.
fn stage(store: &Store, path: &Path) -> Result<Staged, StoreError> {
    let bad = |why: String| StoreError::BadArchive {
        path: path.to_owned(),
        why,
    };
    let read_err = |e| StoreError::ArchiveRead(path.to_owned(), e);
    let mut staged = Staged {
        layout: None,
        index: None,
        blobs: BTreeMap::new(),
    };
    let mut archive = tar::Archive::new(File::open(path).map_err(read_err)?);
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(|e| bad(format!("bad tar entry ({e})")))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = raw
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        let kind = entry.header().entry_type();
        match name.as_str() {
            "" | "blobs" | "blobs/sha256" if kind.is_dir() => continue,
            _ if !kind.is_file() => {
                return Err(bad(format!("entry {raw:?} is not a regular file")));
            }
            "oci-layout" if staged.layout.is_none() => {
                staged.layout = Some(read_small(path, &mut entry, &name)?)
            }
            "index.json" if staged.index.is_none() => {
                staged.index = Some(read_small(path, &mut entry, &name)?)
            }
            _ => {
                let hex = name
                    .strip_prefix("blobs/sha256/")
                    .filter(|h| is_sha256_hex(h));
                let Some(hex) = hex.filter(|h| !staged.blobs.contains_key(*h)) else {
                    return Err(bad(format!("unexpected or repeated entry {raw:?}")));
                };
                let tmp = files::temp_file(&store.blobs_dir())?;
                let (actual, _) = files::copy_hashing(&mut entry, BufWriter::new(tmp.as_file()))
                    .map_err(|e| StoreError::ArchiveRead(path.to_owned(), e))?;
                files::check_digest(
                    &format!("sha256:{hex}"),
                    &actual,
                    &format!("{}:{name}", path.display()),
                )?;
                staged.blobs.insert(hex.to_owned(), tmp);
            }
        }
    }
    Ok(staged)
}

/// Checks one image of the archive; returns the hex digests of its blobs.
fn check_image(path: &Path, staged: &Staged, entry: &Entry) -> Result<Vec<String>, StoreError> {
    let location = path.display().to_string();
    let staged_blob = |digest: &str, size: u64| -> Result<PathBuf, StoreError> {
        let missing = || StoreError::MissingBlob {
            digest: digest.to_owned(),
            location: location.clone(),
        };
        let tmp = digest_hex(digest)
            .and_then(|h| staged.blobs.get(h))
            .ok_or_else(missing)?;
        let actual = tmp
            .as_file()
            .metadata()
            .map_err(io_err("stat", tmp.path()))?
            .len();
        if actual != size {
            return Err(StoreError::SizeMismatch {
                digest: digest.to_owned(),
                expected: size,
                actual,
            });
        }
        Ok(tmp.path().to_owned())
    };
    let manifest_path = staged_blob(&entry.digest, entry.size)?;
    let manifest = std::fs::read(&manifest_path).map_err(io_err("read", &manifest_path))?;
    let parts = parse_manifest(&entry.digest, &manifest)?;
    let mut hexes = vec![entry.digest.clone()];
    for blob in parts.all() {
        staged_blob(&blob.digest, blob.size)?;
        hexes.push(blob.digest.clone());
    }
    let config_path = staged_blob(&parts.config.digest, parts.config.size)?;
    let config_bytes = std::fs::read(&config_path).map_err(io_err("read", &config_path))?;
    let config = ImageConfig::from_json(&config_bytes).map_err(|source| StoreError::BadConfig {
        digest: parts.config.digest.clone(),
        source,
    })?;
    let bad = |why: String| StoreError::BadArchive {
        path: path.to_owned(),
        why,
    };
    if config.reference() != entry.reference() {
        return Err(bad(format!(
            "index.json names {} but its config says {}",
            entry.reference(),
            config.reference()
        )));
    }
    let kernel_path = staged_blob(&parts.kernel.digest, parts.kernel.size)?;
    let mut head = Vec::new();
    File::open(&kernel_path)
        .and_then(|f| f.take(0x300).read_to_end(&mut head))
        .map_err(io_err("read", &kernel_path))?;
    if KernelFormat::detect(&head) != Some(config.kernel.format) {
        return Err(bad(format!(
            "the kernel of {} is not in the format its config says",
            entry.reference()
        )));
    }
    Ok(hexes
        .iter()
        .filter_map(|d| digest_hex(d).map(str::to_owned))
        .collect())
}
