//! The devices `herd run` gives an instance, from its flags: disks (`--disk PATH[,ro]`), TAP
//! network interfaces (`--net TAP` for an existing one, `--net auto` for one herd creates and
//! removes), the vsock socket (`--vsock-socket PATH`, guest CID [`GUEST_CID`]), and the
//! instance's network settings (`--ip`, `--gateway`, `--dns`) that go into
//! `/herd/instance.json` for herd-init to apply.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use herd_proto::{MacAddr, NetworkConfig};

/// The guest's vsock context id (0 to 2 are reserved: hypervisor, local, host).
pub const GUEST_CID: u32 = 3;
/// Longest Linux interface name (`IFNAMSIZ` - 1).
const IFNAME_MAX: usize = 15;

/// Bad device flags, or a TAP herd could not create.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("--disk {0:?}: {1}")]
    Disk(String, &'static str),
    #[error("--net {0:?}: expected `auto` or a TAP interface name of 1 to 15 characters")]
    Net(String),
    #[error("--ip/--gateway/--dns: {0}")]
    Network(String),
    #[error("--gateway and --dns need --ip")]
    NetworkWithoutIp,
    #[error("--vsock-socket {0}: the path must not contain a comma")]
    Vsock(PathBuf),
    #[error("cannot create TAP interface {name}")]
    Tap {
        name: String,
        #[source]
        source: crate::agent::network::NetworkError,
    },
}

/// One `--disk`: a file or block device, optionally read-only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
}

impl Disk {
    /// Parses `PATH[,ro]`.
    pub fn parse(flag: &str) -> Result<Self, DeviceError> {
        let bad = |why| DeviceError::Disk(flag.to_owned(), why);
        let mut parts = flag.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or(bad("no path"))?;
        let mut disk = Disk {
            path: PathBuf::from(path),
            read_only: false,
        };
        for opt in parts {
            match opt {
                "ro" if !disk.read_only => disk.read_only = true,
                _ => return Err(bad("the only option is `ro`")),
            }
        }
        Ok(disk)
    }

    /// herd-vmm's `--disk` value.
    pub fn vmm_flag(&self) -> OsString {
        let mut flag = self.path.clone().into_os_string();
        if self.read_only {
            flag.push(",ro");
        }
        flag
    }
}

/// A network interface of the VM: the host TAP it attaches to and, if given, the MAC address
/// the device offers the guest (without one, the guest's kernel picks a random one at boot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    pub tap: String,
    pub mac: Option<MacAddr>,
}

impl Nic {
    /// herd-vmm's `--net` value, `TAP[,mac=MAC]`.
    pub fn vmm_flag(&self) -> OsString {
        match self.mac {
            Some(mac) => format!("{},mac={mac}", self.tap).into(),
            None => self.tap.clone().into(),
        }
    }
}

/// One `--net`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Net {
    /// An existing TAP interface, attached as it is.
    Tap(String),
    /// A TAP herd creates for this instance and removes when it ends.
    Auto,
}

impl Net {
    pub fn parse(flag: &str) -> Result<Self, DeviceError> {
        if flag == "auto" {
            return Ok(Net::Auto);
        }
        let valid = !flag.is_empty()
            && flag.len() <= IFNAME_MAX
            && flag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        valid
            .then(|| Net::Tap(flag.to_owned()))
            .ok_or_else(|| DeviceError::Net(flag.to_owned()))
    }
}

/// The instance's network settings from `--ip`, `--gateway` and `--dns`, validated.
pub fn network_config(
    ip: Option<&str>,
    gateway: Option<&str>,
    dns: &[String],
) -> Result<Option<NetworkConfig>, DeviceError> {
    let Some(address) = ip else {
        if gateway.is_some() || !dns.is_empty() {
            return Err(DeviceError::NetworkWithoutIp);
        }
        return Ok(None);
    };
    let config = NetworkConfig {
        address: address.to_owned(),
        gateway: gateway.map(str::to_owned),
        dns: dns.to_vec(),
    };
    config.parse().map_err(DeviceError::Network)?;
    Ok(Some(config))
}

/// herd-vmm's `--vsock` value for the socket at `path`.
pub fn vsock_flag(path: &Path) -> Result<OsString, DeviceError> {
    if path.to_string_lossy().contains(',') {
        return Err(DeviceError::Vsock(path.to_owned()));
    }
    let mut flag = OsString::from(format!("{GUEST_CID},"));
    flag.push(path);
    Ok(flag)
}

/// A TAP interface herd created (`--net auto`); removed when dropped.
#[derive(Debug)]
pub struct AutoTap {
    pub name: String,
}

impl AutoTap {
    /// Creates and brings up `name`; with `host_address` (`10.0.0.1/24`: the instance's
    /// gateway and prefix), gives the host side that address so the guest can reach it.
    pub fn create(name: &str, host_address: Option<&str>) -> Result<Self, DeviceError> {
        ip(name, &["tuntap", "add", "dev", name, "mode", "tap"])?;
        let tap = AutoTap {
            name: name.to_owned(),
        };
        if let Some(addr) = host_address {
            ip(name, &["addr", "add", addr, "dev", name])?;
        }
        ip(name, &["link", "set", name, "up"])?;
        Ok(tap)
    }
}

impl Drop for AutoTap {
    fn drop(&mut self) {
        let _ = ip(&self.name, &["link", "del", &self.name]);
    }
}

/// Runs `ip ARGS` for the TAP `name`.
fn ip(name: &str, args: &[&str]) -> Result<(), DeviceError> {
    crate::agent::network::ip(args).map_err(|source| DeviceError::Tap {
        name: name.to_owned(),
        source,
    })
}

/// The host-side address of an automatic TAP: the instance's gateway with its prefix.
pub fn host_address(network: Option<&NetworkConfig>) -> Option<String> {
    let net = network?;
    let (_, prefix) = net.address.split_once('/')?;
    Some(format!("{}/{prefix}", net.gateway.as_ref()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_take_a_path_and_ro() {
        let d = Disk::parse("/x/root.ext4,ro").unwrap();
        assert_eq!(d.path, Path::new("/x/root.ext4"));
        assert!(d.read_only);
        assert_eq!(d.vmm_flag(), "/x/root.ext4,ro");
        assert_eq!(Disk::parse("data.img").unwrap().vmm_flag(), "data.img");
        for bad in ["", ",ro", "a,rw", "a,ro,ro", "a,root"] {
            assert!(Disk::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nets_are_auto_or_a_tap_name() {
        assert_eq!(Net::parse("auto").unwrap(), Net::Auto);
        assert_eq!(Net::parse("tap0").unwrap(), Net::Tap("tap0".into()));
        for bad in ["", "a b", "tap0,mac=x", "a-very-long-tap-name", "../x"] {
            assert!(Net::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn network_flags_are_validated_together() {
        assert_eq!(network_config(None, None, &[]).unwrap(), None);
        assert!(matches!(
            network_config(None, Some("10.0.0.1"), &[]),
            Err(DeviceError::NetworkWithoutIp)
        ));
        let dns = ["10.0.0.1".to_owned()];
        let cfg = network_config(Some("10.0.0.2/24"), Some("10.0.0.1"), &dns)
            .unwrap()
            .unwrap();
        assert_eq!(cfg.dns, dns);
        assert_eq!(host_address(Some(&cfg)).as_deref(), Some("10.0.0.1/24"));
        let err = network_config(Some("10.0.0.2/24"), Some("192.168.0.1"), &[]).unwrap_err();
        assert!(err.to_string().contains("inside 10.0.0.2/24"), "{err}");
        assert!(network_config(Some("10.0.0.2"), None, &[]).is_err());
    }

    #[test]
    fn vsock_uses_cid_3() {
        assert_eq!(
            vsock_flag(Path::new("/run/v.sock")).unwrap(),
            "3,/run/v.sock"
        );
        assert!(vsock_flag(Path::new("/a,b")).is_err());
    }
}
