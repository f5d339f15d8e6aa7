//! The store work behind the agent's image routes, as the API's views. All of it blocks
//! (reading, hashing, renaming under the store's locks), so the API runs it on tokio's
//! blocking threads, never on the supervisor's task. Whether an image is in use is the
//! supervisor's knowledge (its published snapshot); [`digest_removed`] says which image a
//! removal would take away, so only that question goes to it.

use std::path::Path;

use super::types::{ImageDetails, ImageInfo, ImageRemoval, ImportedImage};
use crate::store::{Store, StoreError, parse_manifest};

/// Every image ref in the store, by name then newest first.
pub fn list(home: &Path) -> Result<Vec<ImageInfo>, StoreError> {
    Ok(Store::open(home)?
        .list()?
        .into_iter()
        .map(|image| ImageInfo {
            reference: image.entry.reference(),
            name: image.entry.name,
            version: image.entry.version,
            digest: image.entry.digest,
            size: image.size,
        })
        .collect())
}

/// One image, verified, with its config and every ref pointing at it.
pub fn inspect(home: &Path, reference: &str) -> Result<ImageDetails, StoreError> {
    let image = Store::open(home)?.resolve(reference)?;
    let parts = parse_manifest(&image.digest, &image.manifest)?;
    let rootfs = parts.rootfs.as_ref().map_or(0, |(_, b)| b.size);
    let blobs = parts.config.size + parts.kernel.size + parts.initramfs.size + rootfs;
    Ok(ImageDetails {
        size: image.manifest.len() as u64 + blobs,
        digest: image.digest,
        refs: image.refs,
        config: image.config,
    })
}

/// The digest of the image that removing `reference` would take out of the store; `None`
/// when another ref keeps it. Reads only the index, so a corrupt image can still go.
pub fn digest_removed(home: &Path, reference: &str) -> Result<Option<String>, StoreError> {
    let store = Store::open(home)?;
    let found = store.find(reference)?;
    let Some(digest) = found.first().map(|e| e.digest.clone()) else {
        return Err(StoreError::NotFound(reference.to_owned()));
    };
    let every_ref = store.find(&digest)?;
    let kept = every_ref.iter().any(|e| !found.contains(e));
    Ok((!kept).then_some(digest))
}

/// Removes what `reference` denotes (see [`Store::remove`]).
pub fn remove(home: &Path, reference: &str) -> Result<ImageRemoval, StoreError> {
    let removal = Store::open(home)?.remove(reference)?;
    Ok(ImageRemoval {
        untagged: removal.untagged,
        deleted: removal.deleted,
    })
}

/// A new, empty file to receive an uploaded archive: in `home`, next to the store (the same
/// file system, and outside the directories the store cleans of temp files), removed when
/// dropped.
pub fn staging_file(home: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    std::fs::create_dir_all(home)?;
    tempfile::Builder::new()
        .prefix(".herd-import-")
        .tempfile_in(home)
}

/// Imports every image of an OCI layout tarball (checked entirely before the store changes).
pub fn import(home: &Path, archive: &Path) -> Result<Vec<ImportedImage>, StoreError> {
    Ok(Store::open(home)?
        .load(archive)?
        .into_iter()
        .map(|l| ImportedImage {
            reference: l.reference,
            digest: l.digest,
            replaced: l.replaced,
        })
        .collect())
}
