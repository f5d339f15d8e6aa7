//! Block devices in a VM config: `--disk PATH[,ro][,root][,id=NAME]` flags and Firecracker's
//! `drives` entries, both turned into [`DriveConfig`]s, checked together (unique ids, at most
//! one root device, which goes first so the guest sees it as `/dev/vda`), and the root
//! device's kernel command-line words (`root=/dev/vda rw`, as Firecracker adds them).

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

pub use crate::devices::virtio::block::CacheMode;

/// Longest drive id we accept.
pub const MAX_ID_LEN: usize = 64;

/// Errors in the drives of a config.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("--disk {0}: {1}")]
    Flag(String, &'static str),
    #[error("drive id {0:?}: use 1 to {MAX_ID_LEN} letters, digits, `_` or `-`")]
    BadId(String),
    #[error("drive id {0:?} is used twice")]
    DuplicateId(String),
    #[error("drives {0} and {1} are both root devices")]
    TwoRoots(String, String),
    #[error("drive {id}: field `{field}`: {why}")]
    Unsupported {
        id: String,
        field: &'static str,
        why: &'static str,
    },
}

/// One block device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveConfig {
    /// Its name in errors and the `GET_ID` string (first 20 bytes).
    pub id: String,
    /// The backing file or block device.
    pub path: PathBuf,
    /// Whether the guest may only read.
    pub read_only: bool,
    /// Whether the kernel mounts it as its root file system.
    pub root: bool,
    /// With `root`, `root=PARTUUID=<this>` instead of `root=/dev/vda`.
    pub partuuid: Option<String>,
    /// Whether guest flushes sync the file.
    pub cache: CacheMode,
}

impl DriveConfig {
    /// Parses a `--disk` value; `index` names it `disk<index>` unless `id=` is given. Flag
    /// disks use the writeback cache mode, so guest flushes are honoured.
    pub fn from_flag(value: &str, index: usize) -> Result<Self, DriveError> {
        let mut parts = value.split(',');
        let path = parts.next().filter(|p| !p.is_empty());
        let path = path.ok_or_else(|| DriveError::Flag(value.to_owned(), "no path"))?;
        let mut drive = DriveConfig {
            id: format!("disk{index}"),
            path: PathBuf::from(path),
            read_only: false,
            root: false,
            partuuid: None,
            cache: CacheMode::Writeback,
        };
        for part in parts {
            match part.split_once('=') {
                None if part == "ro" => drive.read_only = true,
                None if part == "root" => drive.root = true,
                Some(("id", id)) => drive.id = id.to_owned(),
                _ => {
                    let why = "options are `ro`, `root` and `id=NAME`";
                    return Err(DriveError::Flag(value.to_owned(), why));
                }
            }
        }
        Ok(drive)
    }
}

/// Firecracker's `drives` entry (the wire format).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FirecrackerDrive {
    drive_id: String,
    path_on_host: PathBuf,
    is_root_device: bool,
    #[serde(default)]
    is_read_only: Option<bool>,
    partuuid: Option<String>,
    #[serde(default)]
    cache_type: Option<CacheType>,
    io_engine: Option<IoEngine>,
    rate_limiter: Option<Value>,
    socket: Option<Value>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
enum CacheType {
    Unsafe,
    Writeback,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
enum IoEngine {
    Sync,
    Async,
}

impl FirecrackerDrive {
    /// The drive, or the first field herd-vmm does not run. As in Firecracker, the cache
    /// mode defaults to `Unsafe` (guest flushes are not synced).
    pub(super) fn into_config(self) -> Result<DriveConfig, DriveError> {
        let refuse = |field, why| DriveError::Unsupported {
            id: self.drive_id.clone(),
            field,
            why,
        };
        if self.io_engine == Some(IoEngine::Async) {
            return Err(refuse("io_engine", "only \"Sync\" is supported"));
        }
        if self.rate_limiter.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(refuse(
                "rate_limiter",
                "rate limiters are not supported yet",
            ));
        }
        if self.socket.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(refuse("socket", "vhost-user drives are not supported"));
        }
        Ok(DriveConfig {
            id: self.drive_id,
            path: self.path_on_host,
            read_only: self.is_read_only.unwrap_or(false),
            root: self.is_root_device,
            partuuid: self.partuuid,
            cache: match self.cache_type {
                Some(CacheType::Writeback) => CacheMode::Writeback,
                _ => CacheMode::Unsafe,
            },
        })
    }
}

/// Checks ids and roots; returns the drives with the root device (if any) first.
pub fn validate(mut drives: Vec<DriveConfig>) -> Result<Vec<DriveConfig>, DriveError> {
    let mut root: Option<&str> = None;
    for (i, d) in drives.iter().enumerate() {
        let ok = (1..=MAX_ID_LEN).contains(&d.id.len())
            && d.id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(DriveError::BadId(d.id.clone()));
        }
        if drives[..i].iter().any(|o| o.id == d.id) {
            return Err(DriveError::DuplicateId(d.id.clone()));
        }
        if d.root {
            if let Some(other) = root {
                return Err(DriveError::TwoRoots(other.to_owned(), d.id.clone()));
            }
            root = Some(&d.id);
        }
    }
    if let Some(i) = drives.iter().position(|d| d.root) {
        let r = drives.remove(i);
        drives.insert(0, r);
    }
    Ok(drives)
}

/// The command-line words for the root device (first of `drives`), if there is one.
pub fn root_words(drives: &[DriveConfig]) -> String {
    match drives.first() {
        Some(d) if d.root => {
            let mode = if d.read_only { "ro" } else { "rw" };
            match &d.partuuid {
                Some(uuid) => format!("root=PARTUUID={uuid} {mode}"),
                None => format!("root=/dev/vda {mode}"),
            }
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_flags_parse_path_options_and_default_ids() {
        let d = DriveConfig::from_flag("/img/a.ext4", 0).unwrap();
        assert_eq!(
            (d.id.as_str(), d.read_only, d.root),
            ("disk0", false, false)
        );
        assert_eq!(d.cache, CacheMode::Writeback);
        let d = DriveConfig::from_flag("b.img,ro,id=data,root", 3).unwrap();
        assert_eq!(d.path, PathBuf::from("b.img"));
        assert_eq!((d.id.as_str(), d.read_only, d.root), ("data", true, true));
        for bad in ["", ",ro", "a,rw", "a,id", "a,cache=none"] {
            assert!(
                matches!(DriveConfig::from_flag(bad, 0), Err(DriveError::Flag(..))),
                "{bad}"
            );
        }
    }

    #[test]
    fn ids_must_be_unique_and_plain_and_one_root_goes_first() {
        let d = |s: &str| DriveConfig::from_flag(s, 0).unwrap();
        let drives = validate(vec![d("a,id=x"), d("b,id=y,root,ro")]).unwrap();
        assert_eq!(drives[0].id, "y");
        assert_eq!(root_words(&drives), "root=/dev/vda ro");
        assert_eq!(root_words(&drives[1..]), "");
        let mut uuid = d("c,root");
        uuid.partuuid = Some("1234-01".into());
        assert_eq!(root_words(&[uuid]), "root=PARTUUID=1234-01 rw");
        assert!(matches!(
            validate(vec![d("a,id=x"), d("b,id=x")]),
            Err(DriveError::DuplicateId(_))
        ));
        assert!(matches!(
            validate(vec![d("a,id=x,root"), d("b,root")]),
            Err(DriveError::TwoRoots(..))
        ));
        assert!(matches!(
            validate(vec![d("a,id=a b")]),
            Err(DriveError::BadId(_))
        ));
        assert!(matches!(
            validate(vec![d("a,id=")]),
            Err(DriveError::BadId(_))
        ));
    }
}
