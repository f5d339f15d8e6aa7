//! Starting an instance from a snapshot: herd-vmm's `--restore` command line and the identity
//! file the restored guest learns who it is from (docs/snapshots.md). The machine comes from
//! the snapshot, so there is no kernel, initrd, command line, vCPU count or memory size here;
//! the host-facing parts are given anew: the instance's own TAP, vsock socket, disks (the
//! image's root filesystem, as at boot) and identity.
//!
//! The TAP is named without a MAC address: the device keeps the snapshot's (the guest read it
//! at boot and herd-vmm refuses another), so the clone's own goes into the identity file,
//! for herd-init to set on the interface.

use std::ffi::OsString;
use std::path::PathBuf;

use herd_proto::{MacAddr, NetworkConfig};
use serde::Serialize;

use crate::run::Disk;

/// The identity file (`--identity`): what a restored guest takes instead of the instance
/// configuration the snapshotted one booted with. Same values as that configuration's, plus
/// the MAC address a booted instance's device would have offered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Identity<'a> {
    pub instance_id: &'a str,
    pub hostname: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<&'a NetworkConfig>,
    /// The interface's own address (with a network only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
}

impl Identity<'_> {
    /// The file's bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // Plain strings and a plain struct: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// What to restore: everything herd-vmm is told besides logging and the jail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestorePlan {
    /// The installed snapshot's directory.
    pub snapshot: PathBuf,
    pub identity: PathBuf,
    pub stop_grace_ms: u64,
    /// Disks in the snapshot's order, with its read-only settings.
    pub disks: Vec<Disk>,
    /// TAP names, one per network interface of the snapshot.
    pub taps: Vec<String>,
    /// herd-vmm's `--vsock` value (the snapshot's CID, a new socket path).
    pub vsock: OsString,
}

impl RestorePlan {
    /// herd-vmm's arguments for this plan.
    pub fn vmm_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--restore".into(),
            self.snapshot.clone().into(),
            "--identity".into(),
            self.identity.clone().into(),
            "--stop-grace".into(),
            self.stop_grace_ms.to_string().into(),
        ];
        for disk in &self.disks {
            a.extend(["--disk".into(), disk.vmm_flag()]);
        }
        for tap in &self.taps {
            a.extend(["--net".into(), tap.into()]);
        }
        a.extend(["--vsock".into(), self.vsock.clone()]);
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_names_the_snapshot_and_the_host_side_only() {
        let plan = RestorePlan {
            snapshot: "/state/snapshots/ab/1x128-0123456789abcdef".into(),
            identity: "/state/instances/web-1/identity.json".into(),
            stop_grace_ms: 300,
            disks: vec![Disk {
                path: "/store/blobs/sha256/cd".into(),
                read_only: true,
            }],
            taps: vec!["hd0123".into()],
            vsock: "3,/state/instances/web-1/vsock.sock".into(),
        };
        let args: Vec<String> = plan
            .vmm_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args.join(" "),
            "--restore /state/snapshots/ab/1x128-0123456789abcdef \
             --identity /state/instances/web-1/identity.json --stop-grace 300 \
             --disk /store/blobs/sha256/cd,ro --net hd0123 \
             --vsock 3,/state/instances/web-1/vsock.sock"
        );
        for booting in [
            "--kernel",
            "--initrd",
            "--cmdline",
            "--vcpus",
            "--memory",
            "--entropy",
        ] {
            assert!(!args.iter().any(|a| a == booting), "{booting}");
        }
    }

    #[test]
    fn the_identity_holds_the_instances_id_hostname_network_and_mac() {
        let net = NetworkConfig {
            address: "172.31.0.7/24".into(),
            gateway: Some("172.31.0.1".into()),
            dns: vec![],
        };
        let id = Identity {
            instance_id: "web-0000abcd",
            hostname: "web-0000abcd",
            network: Some(&net),
            mac: Some("02:00:00:00:00:0a".parse().unwrap()),
        };
        assert_eq!(
            String::from_utf8(id.to_json()).unwrap(),
            r#"{"instance_id":"web-0000abcd","hostname":"web-0000abcd","network":{"address":"172.31.0.7/24","gateway":"172.31.0.1"},"mac":"02:00:00:00:00:0a"}"#
        );
        let none = Identity {
            network: None,
            mac: None,
            ..id
        };
        assert_eq!(
            String::from_utf8(none.to_json()).unwrap(),
            r#"{"instance_id":"web-0000abcd","hostname":"web-0000abcd"}"#
        );
    }
}
