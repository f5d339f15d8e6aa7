//! The local image store: a content-addressed OCI image layout at
//! `${HERD_HOME:-/var/lib/herd}/images` (`oci-layout`, `index.json`, `blobs/sha256/<hex>`).
//!
//! It owns every write to that directory and keeps three promises:
//! - nothing is ever half-written: blobs are written to temp files and renamed into place
//!   under their digest only once complete and synced; the index is replaced atomically and
//!   only ever points at manifests whose blobs are all in place;
//! - concurrent builds, loads and removals are safe (see `files` for the locks);
//! - everything read back is verified against its digest, so a corrupt or truncated blob is
//!   refused with a digest mismatch naming it.
//!
//! `herd run` uses [`Store::open`] and [`Store::resolve`]; the image commands use the rest.

mod archive;
mod files;
mod index;

use std::io;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageManifest;

pub use archive::Loaded;
pub use files::{TEMP_PREFIX, digest_hex, is_sha256_hex};
pub use index::{Entry, Reference};

use crate::image::config::{ConfigError, ImageConfig};
use crate::image::{
    ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, INITRAMFS_MEDIA_TYPE, KERNEL_MEDIA_TYPE, MANIFEST_MEDIA_TYPE,
    exit,
};
use files::io_err;
use index::Index;

/// `HERD_HOME` when unset.
pub const DEFAULT_HOME: &str = "/var/lib/herd";
const LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// `$HERD_HOME`, or [`DEFAULT_HOME`] when it is unset or empty.
pub fn default_home() -> PathBuf {
    std::env::var_os("HERD_HOME")
        .filter(|h| !h.is_empty())
        .map_or_else(|| DEFAULT_HOME.into(), PathBuf::from)
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("digest mismatch: blob {digest} at {location} hashes to {actual}")]
    DigestMismatch {
        digest: String,
        location: String,
        actual: String,
    },
    #[error("size mismatch: blob {digest} has {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("blob {digest} is missing (expected at {location})")]
    MissingBlob { digest: String, location: String },
    #[error(
        "invalid image reference {0:?}: use name:version, name, or a digest (sha256:HEX or HEX, at least 4 hex digits)"
    )]
    BadReference(String),
    #[error("no image {0:?} in the store")]
    NotFound(String),
    #[error("{reference:?} matches several images: {candidates}")]
    Ambiguous {
        reference: String,
        candidates: String,
    },
    #[error("manifest {digest} is not a herd image: {why}")]
    BadManifest { digest: String, why: String },
    #[error("config blob {digest} is invalid")]
    BadConfig { digest: String, source: ConfigError },
    #[error("{location} is not a valid {what}")]
    BadJson {
        location: String,
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("{path} is not a herd store: {why}")]
    NotAStore { path: PathBuf, why: String },
    #[error("{path} is not a usable image archive: {why}")]
    BadArchive { path: PathBuf, why: String },
    #[error("cannot read image archive {0}")]
    ArchiveRead(PathBuf, #[source] io::Error),
}

impl StoreError {
    /// The exit status this error should end `herd` with.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Io { .. } => exit::SOFTWARE,
            Self::BadReference(_) | Self::Ambiguous { .. } => exit::USAGE,
            Self::NotFound(_) => exit::NO_INPUT,
            Self::ArchiveRead(_, e) => exit::io_input(e),
            _ => exit::DATA,
        }
    }
}

/// An image found in the store, verified, ready to boot in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedImage {
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    pub config: ImageConfig,
    /// The kernel blob (an ELF vmlinux or bzImage, per `config.kernel.format`).
    pub kernel: PathBuf,
    /// The initramfs blob (newc cpio).
    pub initramfs: PathBuf,
    /// The root filesystem image blob, attached read-only as the first disk.
    pub rootfs: Option<(herd_proto::Fstype, PathBuf)>,
    /// The `name:version` refs pointing at this image.
    pub refs: Vec<String>,
    /// The manifest bytes.
    pub manifest: Vec<u8>,
}

/// One blob a manifest refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRef {
    pub digest: String,
    pub size: u64,
}

/// The three blobs of a herd image manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestParts {
    pub config: BlobRef,
    pub kernel: BlobRef,
    pub initramfs: BlobRef,
    /// The optional third layer, a root filesystem image.
    pub rootfs: Option<(herd_proto::Fstype, BlobRef)>,
}

impl ManifestParts {
    fn all(&self) -> Vec<&BlobRef> {
        let mut all = vec![&self.config, &self.kernel, &self.initramfs];
        all.extend(self.rootfs.as_ref().map(|(_, b)| b));
        all
    }
}

/// Checks `bytes` is a herd image manifest and returns its blobs.
pub fn parse_manifest(digest: &str, bytes: &[u8]) -> Result<ManifestParts, StoreError> {
    let bad = |why: &str| StoreError::BadManifest {
        digest: digest.to_owned(),
        why: why.to_owned(),
    };
    let m: ImageManifest = serde_json::from_slice(bytes)
        .map_err(|e| bad(&format!("not an OCI image manifest ({e})")))?;
    if m.schema_version() != 2
        || m.media_type()
            .as_ref()
            .is_some_and(|t| t.as_ref() != MANIFEST_MEDIA_TYPE)
    {
        return Err(bad("not an OCI image manifest v2"));
    }
    if m.artifact_type().as_ref().map(|t| t.as_ref()) != Some(ARTIFACT_TYPE) {
        return Err(bad(&format!("artifactType is not {ARTIFACT_TYPE}")));
    }
    let blob = |d: &oci_spec::image::Descriptor, media_type: &str| {
        let digest = d.digest().to_string();
        if d.media_type().as_ref() != media_type || digest_hex(&digest).is_none() {
            return Err(bad(&format!(
                "expected a {media_type} blob with a sha256 digest"
            )));
        }
        Ok(BlobRef {
            digest,
            size: d.size(),
        })
    };
    let (kernel, initramfs, rootfs) = match m.layers().as_slice() {
        [kernel, initramfs] => (kernel, initramfs, None),
        [kernel, initramfs, rootfs] => (kernel, initramfs, Some(rootfs)),
        _ => {
            return Err(bad(
                "it does not have two or three layers (kernel, initramfs, rootfs)",
            ));
        }
    };
    let rootfs = match rootfs {
        None => None,
        Some(d) => {
            let fstype = [herd_proto::Fstype::Ext4, herd_proto::Fstype::Erofs]
                .into_iter()
                .find(|&t| d.media_type().as_ref() == crate::image::rootfs_media_type(t))
                .ok_or_else(|| bad("layer 2 is not a herd rootfs (ext4 or erofs)"))?;
            Some((fstype, blob(d, &crate::image::rootfs_media_type(fstype))?))
        }
    };
    Ok(ManifestParts {
        config: blob(m.config(), CONFIG_MEDIA_TYPE)?,
        kernel: blob(kernel, KERNEL_MEDIA_TYPE)?,
        initramfs: blob(initramfs, INITRAMFS_MEDIA_TYPE)?,
        rootfs,
    })
}

/// A summary line of `herd images`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSummary {
    pub entry: Entry,
    /// Manifest plus blobs, in bytes; `None` when the manifest cannot be read.
    pub size: Option<u64>,
}

/// What `image rm` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removal {
    /// Refs removed from the index.
    pub untagged: Vec<String>,
    /// Blobs deleted because no manifest uses them any more.
    pub deleted: Vec<String>,
}

/// The local image store.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store under `home` (its `images` directory). Creates nothing: the layout is made
    /// by the first write. Fails if the directory exists but is not an OCI layout.
    pub fn open(home: &Path) -> Result<Self, StoreError> {
        let dir = home.join("images");
        match std::fs::read(dir.join("oci-layout")) {
            Ok(bytes) => {
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                if v["imageLayoutVersion"] != "1.0.0" {
                    let why = "oci-layout is not an OCI image layout 1.0.0 marker".to_owned();
                    return Err(StoreError::NotAStore { path: dir, why });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("read", &dir.join("oci-layout"))(e)),
        }
        Ok(Self { dir })
    }

    /// The layout directory (`<home>/images`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn blobs_dir(&self) -> PathBuf {
        self.dir.join("blobs/sha256")
    }

    /// Where the blob with `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.blobs_dir().join(digest_hex(digest).unwrap_or(digest))
    }

    fn temp_dirs(&self) -> [PathBuf; 2] {
        [self.dir.clone(), self.blobs_dir()]
    }

    /// Creates the layout if missing and takes the writer lock.
    fn start_write(&self) -> Result<files::WriterLock, StoreError> {
        let blobs = self.blobs_dir();
        std::fs::create_dir_all(&blobs).map_err(io_err("create", &blobs))?;
        let lock = files::writer_lock(&self.dir, &self.temp_dirs())?;
        if !self.dir.join("oci-layout").exists() {
            files::write_atomic(&self.dir.join("oci-layout"), LAYOUT, 0o644)?;
        }
        if !self.dir.join("index.json").exists() {
            let _index = files::index_lock(&self.dir)?;
            if !self.dir.join("index.json").exists() {
                Index::default().write(&self.dir)?;
            }
        }
        Ok(lock)
    }

    /// Writes one blob unless an intact copy is already there; returns its digest.
    fn put_blob(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let digest = crate::image::sha256_digest(bytes);
        let path = self.blob_path(&digest);
        if files::verify_file(&path, &digest, Some(bytes.len() as u64)).is_err() {
            files::write_atomic(&path, bytes, 0o444)?;
        }
        Ok(digest)
    }

    /// Adds an image: its blobs, then its manifest, then `name:version` in the index.
    /// Idempotent for the same content. `blobs` must hold every blob the manifest names.
    pub fn add(
        &self,
        name: &str,
        version: &str,
        manifest: &[u8],
        blobs: &[&[u8]],
    ) -> Result<String, StoreError> {
        let digest = crate::image::sha256_digest(manifest);
        let parts = parse_manifest(&digest, manifest)?;
        let _lock = self.start_write()?;
        let mut written = Vec::new();
        for blob in blobs {
            written.push(self.put_blob(blob)?);
        }
        for part in parts.all() {
            if !written.contains(&part.digest) {
                return Err(StoreError::MissingBlob {
                    digest: part.digest.clone(),
                    location: "the new image".into(),
                });
            }
        }
        self.put_blob(manifest)?;
        let replaced = {
            let _index = files::index_lock(&self.dir)?;
            let mut index = Index::read(&self.dir)?;
            let before = index.entries.clone();
            let replaced = index.set(name, version, &digest, manifest.len() as u64);
            if index.entries != before {
                index.write(&self.dir)?;
            }
            replaced
        };
        drop(_lock);
        if replaced.is_some() {
            self.collect_if_idle()?;
        }
        Ok(digest)
    }

    /// After a ref moved to another digest, the old one's blobs may be unused: collect them
    /// now if no other writer is busy (else the next `image rm` will).
    fn collect_if_idle(&self) -> Result<(), StoreError> {
        if let Some(_gc) = files::try_gc_lock(&self.dir, files::GC_LOCK_PATIENCE)? {
            let _index = files::index_lock(&self.dir)?;
            self.collect_garbage(&Index::read(&self.dir)?)?;
        }
        Ok(())
    }

    /// Reads and verifies a manifest blob.
    pub fn manifest(&self, digest: &str) -> Result<(Vec<u8>, ManifestParts), StoreError> {
        let bytes = files::read_verified(&self.blob_path(digest), digest)?;
        let parts = parse_manifest(digest, &bytes)?;
        Ok((bytes, parts))
    }

    /// Resolves `name:version`, `name` (newest) or a digest prefix to a verified image.
    pub fn resolve(&self, reference: &str) -> Result<ResolvedImage, StoreError> {
        let index = Index::read(&self.dir)?;
        let entries = index.find(reference)?;
        let digest = entries[0].digest.clone();
        let (manifest, parts) = self.manifest(&digest)?;
        let config_bytes =
            files::read_verified(&self.blob_path(&parts.config.digest), &parts.config.digest)?;
        let config =
            ImageConfig::from_json(&config_bytes).map_err(|source| StoreError::BadConfig {
                digest: parts.config.digest.clone(),
                source,
            })?;
        for blob in parts.all().into_iter().skip(1) {
            files::verify_file(&self.blob_path(&blob.digest), &blob.digest, Some(blob.size))?;
        }
        let mut refs: Vec<String> = index
            .entries
            .iter()
            .filter(|e| e.digest == digest)
            .map(Entry::reference)
            .collect();
        refs.sort();
        Ok(ResolvedImage {
            kernel: self.blob_path(&parts.kernel.digest),
            initramfs: self.blob_path(&parts.initramfs.digest),
            rootfs: (parts.rootfs.as_ref()).map(|(t, b)| (*t, self.blob_path(&b.digest))),
            digest,
            config,
            refs,
            manifest,
        })
    }

    /// Every image ref, by name then newest first.
    pub fn list(&self) -> Result<Vec<ImageSummary>, StoreError> {
        let index = Index::read(&self.dir)?;
        let mut out: Vec<ImageSummary> = index
            .entries
            .iter()
            .map(|entry| {
                let parts = self.manifest(&entry.digest).ok().map(|(_, p)| p);
                let size = parts.map(|p| entry.size + p.all().iter().map(|b| b.size).sum::<u64>());
                ImageSummary {
                    entry: entry.clone(),
                    size,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            a.entry
                .name
                .cmp(&b.entry.name)
                .then(b.entry.sequence.cmp(&a.entry.sequence))
        });
        Ok(out)
    }

    /// The index entries `reference` denotes (those [`Store::remove`] would untag), without
    /// reading any blob.
    pub fn find(&self, reference: &str) -> Result<Vec<Entry>, StoreError> {
        Index::read(&self.dir)?.find(reference)
    }

    /// Removes the refs `reference` denotes (every ref of the image for a digest), then
    /// deletes the blobs no remaining manifest uses and any abandoned temp files.
    pub fn remove(&self, reference: &str) -> Result<Removal, StoreError> {
        Reference::parse(reference)?;
        if !self.dir.join("index.json").exists() {
            return Err(StoreError::NotFound(reference.to_owned()));
        }
        let _gc = files::gc_lock(&self.dir)?;
        let _index = files::index_lock(&self.dir)?;
        let mut index = Index::read(&self.dir)?;
        let found = index.find(reference)?;
        let untagged = index.remove(&found);
        index.write(&self.dir)?;
        let deleted = self.collect_garbage(&index)?;
        Ok(Removal { untagged, deleted })
    }

    /// Deletes blobs no manifest in `index` uses, and temp files. Hold the gc lock
    /// exclusively. If a manifest cannot be read, its blobs are unknown: only temp files go.
    fn collect_garbage(&self, index: &Index) -> Result<Vec<String>, StoreError> {
        files::remove_temp_files(&self.temp_dirs())?;
        let mut live = std::collections::HashSet::new();
        for digest in index.manifest_digests() {
            let path = self.blob_path(&digest);
            let Ok(manifest) = ImageManifest::from_file(&path) else {
                return Ok(Vec::new());
            };
            live.insert(digest);
            live.insert(manifest.config().digest().to_string());
            live.extend(manifest.layers().iter().map(|l| l.digest().to_string()));
        }
        let blobs = self.blobs_dir();
        let mut deleted = Vec::new();
        let entries = std::fs::read_dir(&blobs).map_err(io_err("list", &blobs))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list", &blobs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let digest = format!("sha256:{name}");
            if files::is_sha256_hex(&name) && !live.contains(&digest) {
                std::fs::remove_file(entry.path()).map_err(io_err("remove", &entry.path()))?;
                deleted.push(digest);
            }
        }
        deleted.sort();
        files::sync_dir(&blobs)?;
        Ok(deleted)
    }

    /// Writes an OCI layout tarball holding just the image `reference` denotes.
    pub fn save(&self, reference: &str, out: &Path) -> Result<String, StoreError> {
        archive::save(self, reference, out)
    }

    /// Imports every image of an OCI layout tarball, verifying everything first.
    pub fn load(&self, archive: &Path) -> Result<Vec<Loaded>, StoreError> {
        archive::load(self, archive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::build::manifest;
    use crate::image::config::{DEFAULT_CMDLINE, KernelConfig, KernelFormat};

    struct Image {
        name: String,
        version: String,
        blobs: [Vec<u8>; 3],
        manifest: Vec<u8>,
    }

    fn image(name: &str, version: &str, kernel: &[u8], initramfs: &[u8]) -> Image {
        let config = ImageConfig {
            name: name.into(),
            version: version.into(),
            entrypoint: vec!["/app/x".into()],
            args: vec![],
            env: Default::default(),
            workdir: "/".into(),
            vcpus: 1,
            memory_mib: 64,
            ports: vec![],
            healthcheck: None,
            kernel: KernelConfig {
                format: KernelFormat::Elf,
                cmdline: DEFAULT_CMDLINE.into(),
            },
        };
        let config = config.to_canonical_json();
        let kernel = [b"\x7fELF".as_slice(), kernel].concat();
        let manifest = manifest(&config, &kernel, initramfs, None);
        Image {
            name: name.into(),
            version: version.into(),
            blobs: [config, kernel, initramfs.to_vec()],
            manifest,
        }
    }

    fn add(store: &Store, i: &Image) -> String {
        let blobs: Vec<&[u8]> = i.blobs.iter().map(Vec::as_slice).collect();
        store.add(&i.name, &i.version, &i.manifest, &blobs).unwrap()
    }

    fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() {
                out.extend(
                    snapshot(&entry.path())
                        .into_iter()
                        .map(|(n, b)| (format!("{name}/{n}"), b)),
                );
            } else if !name.starts_with(".lock") {
                out.push((name, std::fs::read(entry.path()).unwrap()));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn added_images_resolve_verified_and_adding_again_changes_nothing() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        assert!(store.list().unwrap().is_empty());
        assert!(!store.dir().exists(), "opening must not create the store");
        let img = image("hello", "1.0", b"kernel", b"initramfs");
        let digest = add(&store, &img);
        let before = snapshot(store.dir());
        assert_eq!(add(&store, &img), digest);
        assert_eq!(snapshot(store.dir()), before);
        let resolved = store.resolve("hello").unwrap();
        assert_eq!(resolved.digest, digest);
        assert_eq!(resolved.config.name, "hello");
        assert_eq!(std::fs::read(&resolved.kernel).unwrap(), img.blobs[1]);
        assert_eq!(std::fs::read(&resolved.initramfs).unwrap(), b"initramfs");
        assert_eq!(resolved.refs, ["hello:1.0"]);
        assert_eq!(store.resolve(&digest[7..13]).unwrap().digest, digest);
        assert_eq!(store.resolve(&digest).unwrap().digest, digest);
        let layout = std::fs::read_to_string(store.dir().join("oci-layout")).unwrap();
        assert_eq!(layout, r#"{"imageLayoutVersion":"1.0.0"}"#);
        let blobs = std::fs::read_dir(store.blobs_dir()).unwrap().count();
        assert_eq!(blobs, 4);
    }

    #[test]
    fn corrupt_or_truncated_blobs_are_refused_naming_them() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let img = image("hello", "1.0", b"kernel", b"initramfs");
        add(&store, &img);
        let kernel = crate::image::sha256_digest(&img.blobs[1]);
        let path = store.blob_path(&kernel);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[5] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = store.resolve("hello:1.0").unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("digest mismatch: blob {kernel} at ")),
            "{err}"
        );
        // Building again repairs the blob.
        add(&store, &img);
        store.resolve("hello:1.0").unwrap();
        let initramfs = crate::image::sha256_digest(b"initramfs");
        std::fs::write(store.blob_path(&initramfs), b"initram").unwrap();
        let err = store.resolve("hello:1.0").unwrap_err();
        assert!(
            matches!(&err, StoreError::DigestMismatch { digest, .. } if *digest == initramfs),
            "{err}"
        );
        std::fs::remove_file(store.blob_path(&initramfs)).unwrap();
        assert!(matches!(
            store.resolve("hello:1.0"),
            Err(StoreError::MissingBlob { .. })
        ));
        assert!(matches!(
            store.save("hello:1.0", &home.path().join("x.tar")),
            Err(StoreError::MissingBlob { .. })
        ));
        assert!(!home.path().join("x.tar").exists());
    }

    #[test]
    fn temp_files_left_by_a_crash_are_ignored_then_cleaned() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        add(&store, &image("a", "1", b"k", b"i"));
        let stale = store.blobs_dir().join(format!("{TEMP_PREFIX}crashed"));
        std::fs::write(&stale, b"half a blob").unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
        store.resolve("a").unwrap();
        add(&store, &image("b", "1", b"k", b"i2"));
        assert!(!stale.exists());
    }

    #[test]
    fn rm_removes_refs_and_only_unused_blobs() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let a = image("a", "1", b"shared kernel", b"a");
        let b = image("b", "1", b"shared kernel", b"b");
        let da = add(&store, &a);
        add(&store, &b);
        store
            .add(
                "a",
                "latest",
                &a.manifest,
                &[&a.blobs[0], &a.blobs[1], &a.blobs[2]],
            )
            .unwrap();
        let removal = store.remove(&da[7..15]).unwrap();
        assert_eq!(removal.untagged, ["a:1", "a:latest"]);
        // The manifest, config (names differ) and initramfs of a go; the shared kernel stays.
        assert_eq!(removal.deleted.len(), 3, "{removal:?}");
        assert!(
            store
                .blob_path(&crate::image::sha256_digest(&a.blobs[1]))
                .exists()
        );
        store.resolve("b:1").unwrap();
        assert!(matches!(store.remove("a:1"), Err(StoreError::NotFound(_))));
        assert!(matches!(
            store.remove("A:1"),
            Err(StoreError::BadReference(_))
        ));
        let removal = store.remove("b").unwrap();
        assert_eq!(removal.deleted.len(), 4);
        assert_eq!(std::fs::read_dir(store.blobs_dir()).unwrap().count(), 0);
    }

    #[test]
    fn rebuilding_a_ref_with_new_content_collects_the_old_blobs() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        add(&store, &image("a", "1", b"k", b"old"));
        let new = add(&store, &image("a", "1", b"k", b"new"));
        assert_eq!(store.resolve("a:1").unwrap().digest, new);
        assert_eq!(std::fs::read_dir(store.blobs_dir()).unwrap().count(), 4);
    }

    #[test]
    fn concurrent_adds_all_land_in_the_index() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        std::thread::scope(|s| {
            for t in 0..8 {
                let store = &store;
                s.spawn(move || {
                    for v in 0..5 {
                        add(
                            store,
                            &image(
                                &format!("app{t}"),
                                &v.to_string(),
                                b"k",
                                format!("{t}-{v}").as_bytes(),
                            ),
                        );
                    }
                });
            }
            // A concurrent rm of something else must not delete blobs the adds wrote.
            let store = &store;
            s.spawn(move || {
                for _ in 0..5 {
                    add(store, &image("victim", "1", b"k", b"v"));
                    store.remove("victim:1").unwrap();
                }
            });
        });
        let list = store.list().unwrap();
        assert_eq!(list.len(), 40);
        for summary in &list {
            store.resolve(&summary.entry.reference()).unwrap();
        }
        let sequences: std::collections::BTreeSet<u64> =
            list.iter().map(|s| s.entry.sequence).collect();
        assert_eq!(sequences.len(), 40, "sequence numbers are unique");
    }

    #[test]
    fn save_load_round_trip_and_any_flipped_byte_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let store = Store::open(home.path()).unwrap();
        let digest = add(&store, &image("hello", "1.0", &[7u8; 700], &[9u8; 300]));
        let tar = home.path().join("hello.tar");
        assert_eq!(store.save("hello:1.0", &tar).unwrap(), digest);
        let tar2 = home.path().join("again.tar");
        store.save(&digest, &tar2).unwrap();
        assert_eq!(
            std::fs::read(&tar).unwrap(),
            std::fs::read(&tar2).unwrap(),
            "save is deterministic"
        );

        let other_home = tempfile::tempdir().unwrap();
        let other = Store::open(other_home.path()).unwrap();
        add(&other, &image("existing", "1", b"k", b"i"));
        let before = snapshot(other.dir());
        let bytes = std::fs::read(&tar).unwrap();
        let flipped = home.path().join("flipped.tar");
        // Every single byte: headers, padding, blobs, index.json, oci-layout, trailer.
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x20;
            std::fs::write(&flipped, &bad).unwrap();
            assert!(
                other.load(&flipped).is_err(),
                "flipped byte at {at} was accepted"
            );
            if at % 64 == 0 {
                assert_eq!(
                    snapshot(other.dir()),
                    before,
                    "store changed after flipped byte at {at}"
                );
            }
        }
        let loaded = other.load(&tar).unwrap();
        assert_eq!(
            loaded,
            [Loaded {
                reference: "hello:1.0".into(),
                digest: digest.clone(),
                replaced: None
            }]
        );
        assert_eq!(other.resolve("hello").unwrap().digest, digest);
        assert_eq!(other.load(&tar).unwrap()[0].digest, digest);
    }

    #[test]
    fn open_refuses_a_directory_that_is_not_a_layout() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join("images")).unwrap();
        std::fs::write(home.path().join("images/oci-layout"), b"{}").unwrap();
        assert!(matches!(
            Store::open(home.path()),
            Err(StoreError::NotAStore { .. })
        ));
    }
}
