//! The vsock device's configuration: the guest's CID and the host-side Unix socket path
//! (Firecracker's `vsock` section, or `--vsock CID,PATH`). Whether the path can be bound is
//! checked when the device is created, where the error can name it.

use std::path::PathBuf;

/// Smallest CID a guest may have (0-2 are the hypervisor, local and the host).
pub const MIN_GUEST_CID: u64 = 3;
/// Largest CID (the top 32 bits are reserved, `u32::MAX` is `VMADDR_CID_ANY`).
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;

/// Errors in a vsock configuration.
#[derive(Debug, thiserror::Error)]
pub enum VsockConfigError {
    #[error("vsock: guest CID {0} is out of range ({MIN_GUEST_CID} to {MAX_GUEST_CID})")]
    Cid(u64),
    #[error("vsock: `{0}` is not CID,PATH")]
    Flag(String),
    #[error("vsock: the socket path is empty")]
    EmptyPath,
}

/// A vsock device, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

impl VsockConfig {
    /// Checks the CID range and that a path is given.
    pub fn validate(self) -> Result<Self, VsockConfigError> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&self.guest_cid) {
            return Err(VsockConfigError::Cid(self.guest_cid));
        }
        if self.uds_path.as_os_str().is_empty() {
            return Err(VsockConfigError::EmptyPath);
        }
        Ok(self)
    }
}

/// Parses `--vsock CID,PATH` (validated later with the rest).
pub fn parse_vsock_flag(spec: &str) -> Result<VsockConfig, VsockConfigError> {
    let bad = || VsockConfigError::Flag(spec.to_owned());
    let (cid, path) = spec.split_once(',').ok_or_else(bad)?;
    Ok(VsockConfig {
        guest_cid: cid.trim().parse().map_err(|_| bad())?,
        uds_path: PathBuf::from(path),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_is_cid_comma_path_and_the_cid_is_checked() {
        let v = parse_vsock_flag("3,/tmp/v.sock").unwrap();
        assert_eq!(v.guest_cid, 3);
        assert_eq!(v.uds_path, PathBuf::from("/tmp/v.sock"));
        assert!(v.validate().is_ok());
        assert!(matches!(
            parse_vsock_flag("x,/p"),
            Err(VsockConfigError::Flag(_))
        ));
        assert!(matches!(
            parse_vsock_flag("3"),
            Err(VsockConfigError::Flag(_))
        ));
        let two = parse_vsock_flag("2,/p").unwrap().validate().unwrap_err();
        assert_eq!(
            two.to_string(),
            format!("vsock: guest CID 2 is out of range (3 to {MAX_GUEST_CID})")
        );
        let huge = parse_vsock_flag("4294967295,/p").unwrap().validate();
        assert!(matches!(huge, Err(VsockConfigError::Cid(_))));
        let empty = parse_vsock_flag("3,").unwrap().validate();
        assert!(matches!(empty, Err(VsockConfigError::EmptyPath)));
    }
}
