//! What a snapshot is kept under. A restored VM keeps everything of the instance it was
//! taken of except its identity and host-side names: its image, its machine (vCPUs,
//! memory), its kernel command line, the environment and arguments its app started with, its
//! devices. So a snapshot may only start instances for which all of that is the same; the
//! key is the image digest, the machine, and a hash of the rest. Two services running the
//! same image with the same settings share snapshots; a different `env` is another key.
//!
//! On disk a key is `<digest hex>/<vcpus>x<MiB>-<hash>`, so removing an image's snapshots
//! is removing one directory.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::store::{digest_hex, is_sha256_hex};

/// The vsock CID every instance's guest has (herd-vmm's `--vsock 3,PATH`).
pub const GUEST_CID: u32 = 3;

/// Hex digits of the settings hash kept in the key: 64 bits, no collision among the few
/// settings one host runs.
const HASH_DIGITS: usize = 16;

/// The key of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotKey {
    /// `sha256:<hex>` of the image's manifest.
    pub digest: String,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// [`HASH_DIGITS`] hex digits of the SHA-256 of the [`Inherited`] settings.
    pub settings: String,
}

/// What a restored VM inherits besides its image and machine; hashed into the key. Host
/// paths (TAP names, sockets, the store's blob paths) are not here: they are given anew at
/// each restore.
#[derive(Clone, Debug, Serialize)]
pub struct Inherited<'a> {
    pub cmdline: &'a str,
    pub env: &'a BTreeMap<String, String>,
    pub args: Option<&'a [String]>,
    /// virtio-net devices, in order.
    pub network_interfaces: u8,
    /// Each disk's read-only setting, in order.
    pub disks_read_only: Vec<bool>,
    pub vsock_cid: u32,
}

impl SnapshotKey {
    /// The key of VMs of image `digest` with this machine and these inherited settings.
    pub fn new(digest: &str, vcpus: u8, memory_mib: u32, inherited: &Inherited<'_>) -> Self {
        // A version line first: a change of what is hashed makes new keys, never a match
        // with snapshots hashed the old way.
        let mut text = b"herd snapshot key 1\n".to_vec();
        // Plain structs, string keys: serializing cannot fail.
        text.extend(serde_json::to_vec(inherited).unwrap_or_default());
        let hash = crate::image::sha256_digest(&text);
        let hex = digest_hex(&hash).unwrap_or(&hash);
        Self {
            digest: digest.to_owned(),
            vcpus,
            memory_mib,
            settings: hex[..HASH_DIGITS].to_owned(),
        }
    }

    /// The directory of the image's snapshots, relative to the snapshots directory.
    pub fn image_dir(&self) -> &str {
        digest_hex(&self.digest).unwrap_or(&self.digest)
    }

    /// `<vcpus>x<MiB>-<hash>`: the snapshot's directory inside [`Self::image_dir`].
    pub fn name(&self) -> String {
        format!("{}x{}-{}", self.vcpus, self.memory_mib, self.settings)
    }

    /// The snapshot's directory relative to the snapshots directory.
    pub fn rel_path(&self) -> PathBuf {
        PathBuf::from(self.image_dir()).join(self.name())
    }

    /// The key a directory `<image_dir>/<name>` stands for; `None` for anything the agent
    /// did not name.
    pub fn parse(image_dir: &str, name: &str) -> Option<Self> {
        if !is_sha256_hex(image_dir) {
            return None;
        }
        let (machine, settings) = name.split_once('-')?;
        let (vcpus, memory_mib) = machine.split_once('x')?;
        let hex = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if settings.len() != HASH_DIGITS || !hex(settings) {
            return None;
        }
        let key = Self {
            digest: format!("sha256:{image_dir}"),
            vcpus: vcpus.parse().ok()?,
            memory_mib: memory_mib.parse().ok()?,
            settings: settings.to_owned(),
        };
        // Only the canonical spelling (no `+1`, no leading zeros) names a key.
        (key.name() == name).then_some(key)
    }
}

impl fmt::Display for SnapshotKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.digest, self.name())
    }
}

impl std::str::FromStr for SnapshotKey {
    type Err = ();

    /// The [`Display`](fmt::Display) form, `sha256:<hex>/<vcpus>x<MiB>-<hash>`.
    fn from_str(s: &str) -> Result<Self, ()> {
        let (digest, name) = s.split_once('/').ok_or(())?;
        Self::parse(digest_hex(digest).ok_or(())?, name).ok_or(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn inherited(env: &BTreeMap<String, String>) -> Inherited<'_> {
        Inherited {
            cmdline: "console=ttyS0",
            env,
            args: None,
            network_interfaces: 1,
            disks_read_only: vec![true],
            vsock_cid: GUEST_CID,
        }
    }

    #[test]
    fn every_inherited_setting_and_the_machine_change_the_key() {
        let env = BTreeMap::new();
        let base = SnapshotKey::new(DIGEST, 1, 128, &inherited(&env));
        assert_eq!(base, SnapshotKey::new(DIGEST, 1, 128, &inherited(&env)));
        assert_eq!(base.settings.len(), HASH_DIGITS);
        let other_env = BTreeMap::from([("A".to_owned(), "1".to_owned())]);
        let args = ["x".to_owned()];
        let variants = [
            SnapshotKey::new(DIGEST, 2, 128, &inherited(&env)),
            SnapshotKey::new(DIGEST, 1, 256, &inherited(&env)),
            SnapshotKey::new(&DIGEST.replace('0', "f"), 1, 128, &inherited(&env)),
            SnapshotKey::new(DIGEST, 1, 128, &inherited(&other_env)),
            SnapshotKey::new(
                DIGEST,
                1,
                128,
                &Inherited {
                    args: Some(&args),
                    ..inherited(&env)
                },
            ),
            SnapshotKey::new(
                DIGEST,
                1,
                128,
                &Inherited {
                    network_interfaces: 0,
                    ..inherited(&env)
                },
            ),
            SnapshotKey::new(
                DIGEST,
                1,
                128,
                &Inherited {
                    cmdline: "console=ttyS0 quiet",
                    ..inherited(&env)
                },
            ),
            SnapshotKey::new(
                DIGEST,
                1,
                128,
                &Inherited {
                    disks_read_only: vec![],
                    ..inherited(&env)
                },
            ),
        ];
        for v in &variants {
            assert_ne!(*v, base, "{v}");
        }
    }

    #[test]
    fn a_key_round_trips_through_its_directory_names_and_nothing_else_parses() {
        let env = BTreeMap::new();
        let key = SnapshotKey::new(DIGEST, 2, 512, &inherited(&env));
        assert_eq!(key.image_dir(), &DIGEST["sha256:".len()..]);
        assert!(key.name().starts_with("2x512-"));
        assert_eq!(
            SnapshotKey::parse(key.image_dir(), &key.name()),
            Some(key.clone())
        );
        let hex = key.image_dir();
        let settings = &key.settings;
        for (dir, name) in [
            ("sha256", key.name()),
            (&hex[1..], key.name()),
            (hex, format!("02x512-{settings}")),
            (hex, format!("2x512-{}", &settings[1..])),
            (hex, format!("2x512-{}", settings.to_uppercase())),
            (hex, format!("2x512x1-{settings}")),
            (hex, format!("2x-{settings}")),
            (hex, ".tmp-1234".to_owned()),
        ] {
            assert_eq!(SnapshotKey::parse(dir, &name), None, "{dir}/{name}");
        }
    }
}
