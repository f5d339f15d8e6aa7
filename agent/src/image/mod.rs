//! Images: turning an app into one immutable, bootable OCI image (`herd build`) and the
//! commands that look at the local store. See `docs/image-format.md`, the contract this module
//! implements.
//!
//! - [`config`]: the image config document and its validation.
//! - [`elf`]: reading an ELF file's dynamic-linking facts.
//! - [`ldso`]: finding a binary's loader and libraries as the dynamic loader would.
//! - [`tree`]: the file tree staged for the initramfs (symlink-aware), before it becomes cpio.
//! - [`rootfs`]: the filesystem image of `--rootfs ext4|erofs` (mkfs.ext4, mkfs.erofs).
//! - [`build`]: assembling the initramfs, config and manifest from the build inputs.
//! - [`cli`]: the command-line arguments and handlers of the image commands.

pub mod build;
pub mod cli;
pub mod config;
pub mod elf;
pub mod ldso;
pub mod rootfs;
pub mod tree;

pub use config::ImageConfig;

/// Exit statuses of `herd` (sysexits.h), shared by every command's errors.
pub mod exit {
    /// The command line was wrong.
    pub const USAGE: u8 = 64;
    /// An input was there but unusable (bad config, not an ELF, corrupt blob or archive).
    pub const DATA: u8 = 65;
    /// An input was missing or unreadable (file, image, library).
    pub const NO_INPUT: u8 = 66;
    /// A service herd needs is not there (the agent's socket does not answer).
    pub const UNAVAILABLE: u8 = 69;
    /// Anything else, e.g. the store could not be written.
    pub const SOFTWARE: u8 = 70;

    /// The status for an I/O error reading an input.
    pub fn io_input(e: &std::io::Error) -> u8 {
        use std::io::ErrorKind::*;
        match e.kind() {
            NotFound | PermissionDenied => NO_INPUT,
            IsADirectory | NotADirectory | InvalidData | InvalidInput | UnexpectedEof => DATA,
            _ => SOFTWARE,
        }
    }
}

/// `artifactType` of every herd image manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.herd.image.v1";
/// Media type of the image config blob.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.herd.image.config.v1+json";
/// Media type of layer 0, the guest kernel.
pub const KERNEL_MEDIA_TYPE: &str = "application/vnd.herd.kernel.v1";
/// Media type of layer 1, the initramfs.
pub const INITRAMFS_MEDIA_TYPE: &str = "application/vnd.herd.initramfs.v1.cpio";
/// Media type of the optional layer 2, the root filesystem image, for `fstype`.
pub fn rootfs_media_type(fstype: herd_proto::Fstype) -> String {
    format!("application/vnd.herd.rootfs.v1.{}", fstype.name())
}
/// Media type of an OCI image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Annotation holding an image's `name:version` in `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Serialises `value` as canonical JSON: object keys sorted, no whitespace. Every JSON
/// document herd writes goes through this, so equal content gives equal bytes and digests.
pub fn canonical_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // `serde_json::Value` keeps object keys in a BTreeMap (the `preserve_order` feature is
    // not enabled in this workspace; a unit test guards that), which sorts them.
    let value = serde_json::to_value(value).expect("plain data serialises");
    serde_json::to_vec(&value).expect("a JSON value serialises")
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v = serde_json::json!({"b": 1, "a": {"z": [1, {"y": 2, "x": 3}], "c": null}});
        let text = String::from_utf8(canonical_json(&v)).unwrap();
        assert_eq!(text, r#"{"a":{"c":null,"z":[1,{"x":3,"y":2}]},"b":1}"#);
        let mut map = std::collections::HashMap::new();
        for k in ["q", "w", "e", "r", "t", "y", "u", "i", "o", "p"] {
            map.insert(k, 1);
        }
        let text = String::from_utf8(canonical_json(&map)).unwrap();
        assert_eq!(
            text,
            r#"{"e":1,"i":1,"o":1,"p":1,"q":1,"r":1,"t":1,"u":1,"w":1,"y":1}"#
        );
    }

    #[test]
    fn digest_is_prefixed_lowercase_hex() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
