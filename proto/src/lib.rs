//! Wire types shared by the host (`herd build`, `herd run`, later the agent) and the guest's
//! `herd-init`: what an image runs by default (`/herd/image.json`) and what one instance adds
//! (`/herd/instance.json`, in the archive appended at boot), and the MAC address a restored
//! clone's interface takes ([`MacAddr`], `docs/snapshots.md`). See `docs/image-format.md`.
//!
//! Both are parsed with unknown fields rejected: a guest must never run with half of the
//! configuration it was given.

#![forbid(unsafe_code)]

mod mac;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

pub use mac::{MacAddr, MacAddrError};

/// Path of the image's default run settings inside its initramfs.
pub const IMAGE_RUNTIME_PATH: &str = "/herd/image.json";
/// Path of the instance configuration inside the appended archive.
pub const INSTANCE_CONFIG_PATH: &str = "/herd/instance.json";

/// Errors reading either document.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("{0} is not valid")]
    Parse(&'static str, #[source] serde_json::Error),
    #[error("{0}: {1}")]
    Invalid(&'static str, String),
}

/// What the image runs by default (`/herd/image.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRuntime {
    /// Program and its fixed leading arguments; `entrypoint[0]` is an absolute path.
    pub entrypoint: Vec<String>,
    /// Default arguments after the entrypoint, replaced by an instance's `args`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Default environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory of the app.
    #[serde(default = "root_dir")]
    pub workdir: String,
    /// The app's files are on this block device, not in the initramfs: init mounts it
    /// read-only and switches root to it. Absent for initramfs-only images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<Rootfs>,
}

/// Filesystem types of a root filesystem image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fstype {
    Ext4,
    Erofs,
}

impl Fstype {
    /// The name `mount(2)` and the image's media type use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ext4 => "ext4",
            Self::Erofs => "erofs",
        }
    }
}

/// Where the image's root filesystem is (`rootfs` of `/herd/image.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rootfs {
    /// The guest's block device node, `/dev/vda` (the first disk).
    pub device: String,
    pub fstype: Fstype,
}

/// The device the root filesystem of an image is on: `herd run` attaches it first.
pub const ROOTFS_DEVICE: &str = "/dev/vda";

fn root_dir() -> String {
    "/".to_owned()
}

/// What one instance adds (`/herd/instance.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// Unique id of this instance.
    pub instance_id: String,
    /// Hostname the guest takes.
    pub hostname: String,
    /// Environment merged over the image's (instance wins).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Replaces the image's default args when present.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Settings of the first network interface; absent: init leaves it down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig>,
}

/// Most name servers a resolver reads from `resolv.conf` (glibc's and musl's `MAXNS`).
pub const MAX_DNS: usize = 3;

/// The instance's network settings, as written in `/herd/instance.json` (IPv4).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Address and prefix length of the interface, `10.0.0.2/24`.
    pub address: String,
    /// Default route through this router, which must be inside `address`'s subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Name servers for `/etc/resolv.conf` (IPv4 or IPv6), at most [`MAX_DNS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
}

/// [`NetworkConfig`] parsed and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<IpAddr>,
}

impl Network {
    /// The netmask of [`Network::prefix`], `255.255.255.0` for 24.
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        Ipv4Addr::from(bits)
    }

    /// Whether `ip` is inside the interface's subnet.
    pub fn on_link(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::from(self.netmask());
        u32::from(ip) & mask == u32::from(self.address) & mask
    }

    /// `/etc/resolv.conf` naming the name servers; `None` without any.
    pub fn resolv_conf(&self) -> Option<String> {
        if self.dns.is_empty() {
            return None;
        }
        let mut text = String::from("# written by herd-init from /herd/instance.json\n");
        for server in &self.dns {
            text.push_str(&format!("nameserver {server}\n"));
        }
        Some(text)
    }
}

/// Parses `ADDR/PREFIX` (IPv4, prefix 1 to 32).
pub fn parse_ipv4_cidr(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, prefix) = text
        .split_once('/')
        .ok_or_else(|| format!("address {text:?} needs a prefix length, as in 10.0.0.2/24"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("address {addr:?} is not an IPv4 address"))?;
    let prefix = prefix
        .parse::<u8>()
        .ok()
        .filter(|p| (1..=32).contains(p))
        .ok_or_else(|| format!("prefix length {prefix:?} is not 1 to 32"))?;
    if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() {
        return Err(format!("address {addr} cannot be an interface address"));
    }
    Ok((addr, prefix))
}

impl NetworkConfig {
    /// Parses and checks every field (messages name the bad value).
    pub fn parse(&self) -> Result<Network, String> {
        let (address, prefix) = parse_ipv4_cidr(&self.address)?;
        let mut net = Network {
            address,
            prefix,
            gateway: None,
            dns: Vec::with_capacity(self.dns.len()),
        };
        if let Some(gw) = &self.gateway {
            let ip: Ipv4Addr = gw
                .parse()
                .map_err(|_| format!("gateway {gw:?} is not an IPv4 address"))?;
            if !net.on_link(ip) || ip == address {
                return Err(format!(
                    "gateway {ip} must be another address inside {address}/{prefix}"
                ));
            }
            net.gateway = Some(ip);
        }
        if self.dns.len() > MAX_DNS {
            return Err(format!(
                "at most {MAX_DNS} dns servers, got {}",
                self.dns.len()
            ));
        }
        for server in &self.dns {
            let ip = server
                .parse()
                .map_err(|_| format!("dns server {server:?} is not an IP address"))?;
            net.dns.push(ip);
        }
        Ok(net)
    }
}

/// Validates an environment variable name as a POSIX shell would accept it.
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn check_env(what: &'static str, env: &BTreeMap<String, String>) -> Result<(), ProtoError> {
    for (k, v) in env {
        if !valid_env_name(k) {
            return Err(ProtoError::Invalid(
                what,
                format!("bad environment variable name {k:?}"),
            ));
        }
        if v.contains('\0') {
            return Err(ProtoError::Invalid(
                what,
                format!("environment variable {k} contains NUL"),
            ));
        }
    }
    Ok(())
}

impl ImageRuntime {
    /// Parses and validates `/herd/image.json`.
    pub fn from_json(text: &str) -> Result<Self, ProtoError> {
        let rt: Self =
            serde_json::from_str(text).map_err(|e| ProtoError::Parse(IMAGE_RUNTIME_PATH, e))?;
        rt.validate()?;
        Ok(rt)
    }

    /// Checks the invariants documented on the fields.
    pub fn validate(&self) -> Result<(), ProtoError> {
        let what = IMAGE_RUNTIME_PATH;
        match self.entrypoint.first() {
            Some(p) if p.starts_with('/') => {}
            Some(p) => {
                return Err(ProtoError::Invalid(
                    what,
                    format!("entrypoint {p:?} is not an absolute path"),
                ));
            }
            None => return Err(ProtoError::Invalid(what, "entrypoint is empty".into())),
        }
        if !self.workdir.starts_with('/') {
            return Err(ProtoError::Invalid(
                what,
                format!("workdir {:?} is not absolute", self.workdir),
            ));
        }
        if let Some(rootfs) = &self.rootfs {
            let name = rootfs.device.strip_prefix("/dev/").unwrap_or("");
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(ProtoError::Invalid(
                    what,
                    format!("rootfs device {:?} is not /dev/NAME", rootfs.device),
                ));
            }
        }
        check_env(what, &self.env)
    }

    /// Serialises canonically (sorted keys, no whitespace), so images are reproducible.
    pub fn to_canonical_json(&self) -> String {
        serde_json::to_string(self).expect("plain data serialises")
    }
}

impl InstanceConfig {
    /// Parses and validates `/herd/instance.json`.
    pub fn from_json(text: &str) -> Result<Self, ProtoError> {
        let cfg: Self =
            serde_json::from_str(text).map_err(|e| ProtoError::Parse(INSTANCE_CONFIG_PATH, e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the environment and the network settings.
    pub fn validate(&self) -> Result<(), ProtoError> {
        check_env(INSTANCE_CONFIG_PATH, &self.env)?;
        if let Some(net) = &self.network {
            net.parse().map_err(|why| {
                ProtoError::Invalid(INSTANCE_CONFIG_PATH, format!("network: {why}"))
            })?;
        }
        Ok(())
    }

    /// Serialises canonically.
    pub fn to_canonical_json(&self) -> String {
        serde_json::to_string(self).expect("plain data serialises")
    }
}

/// What init runs: the image's defaults with the instance's settings applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: String,
}

/// Merges instance settings over image defaults.
pub fn launch(image: &ImageRuntime, instance: Option<&InstanceConfig>) -> Launch {
    let mut env = image.env.clone();
    let mut args = image.args.clone();
    if let Some(inst) = instance {
        env.extend(inst.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(a) = &inst.args {
            args = a.clone();
        }
    }
    let mut argv = image.entrypoint.clone();
    argv.extend(args);
    Launch {
        argv,
        env,
        workdir: image.workdir.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageRuntime {
        ImageRuntime {
            entrypoint: vec!["/app/hello".into(), "--fixed".into()],
            args: vec!["default".into()],
            env: [("A".into(), "image".into()), ("B".into(), "image".into())].into(),
            workdir: "/".into(),
            rootfs: None,
        }
    }

    #[test]
    fn rootfs_is_optional_checked_and_strict() {
        let mut rt = image();
        assert!(!rt.to_canonical_json().contains("rootfs"));
        rt.rootfs = Some(Rootfs {
            device: ROOTFS_DEVICE.into(),
            fstype: Fstype::Ext4,
        });
        let text = rt.to_canonical_json();
        assert!(
            text.ends_with(r#""rootfs":{"device":"/dev/vda","fstype":"ext4"}}"#),
            "{text}"
        );
        assert_eq!(ImageRuntime::from_json(&text).unwrap(), rt);
        let erofs = text.replace("ext4", "erofs");
        let parsed = ImageRuntime::from_json(&erofs).unwrap();
        assert_eq!(parsed.rootfs.unwrap().fstype.name(), "erofs");
        for bad in [
            text.replace("ext4", "xfs"),
            text.replace("/dev/vda", "vda"),
            text.replace("/dev/vda", "/dev/../x"),
            text.replace(r#""fstype""#, r#""extra":1,"fstype""#),
        ] {
            assert!(ImageRuntime::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn instance_env_wins_and_args_replace_defaults() {
        let inst = InstanceConfig {
            instance_id: "i".into(),
            hostname: "h".into(),
            env: [("B".into(), "inst".into()), ("C".into(), "inst".into())].into(),
            args: Some(vec!["x".into()]),
            network: None,
        };
        let l = launch(&image(), Some(&inst));
        assert_eq!(l.argv, ["/app/hello", "--fixed", "x"]);
        assert_eq!(l.env["A"], "image");
        assert_eq!(l.env["B"], "inst");
        assert_eq!(l.env["C"], "inst");
        let l = launch(&image(), None);
        assert_eq!(l.argv, ["/app/hello", "--fixed", "default"]);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        assert!(
            InstanceConfig::from_json(r#"{"instance_id":"i","hostname":"h","extra":1}"#).is_err()
        );
        assert!(
            InstanceConfig::from_json(r#"{"instance_id":"i","hostname":"h","env":{"1A":"x"}}"#)
                .is_err()
        );
        assert!(ImageRuntime::from_json(r#"{"entrypoint":["app"]}"#).is_err());
        assert!(ImageRuntime::from_json(r#"{"entrypoint":[]}"#).is_err());
        let rt = ImageRuntime::from_json(r#"{"entrypoint":["/app"]}"#).unwrap();
        assert_eq!(rt.workdir, "/");
    }

    #[test]
    fn canonical_json_round_trips_with_sorted_env() {
        let rt = image();
        let text = rt.to_canonical_json();
        assert!(text.find("\"A\"").unwrap() < text.find("\"B\"").unwrap());
        assert_eq!(ImageRuntime::from_json(&text).unwrap(), rt);
    }

    #[test]
    fn env_names_follow_posix_rules() {
        assert!(valid_env_name("PATH") && valid_env_name("_x1"));
        assert!(
            !valid_env_name("")
                && !valid_env_name("1x")
                && !valid_env_name("A-B")
                && !valid_env_name("A=B")
        );
    }

    #[test]
    fn network_settings_are_parsed_and_checked() {
        let ok = r#"{"instance_id":"i","hostname":"h","network":{"address":"10.0.0.2/24","gateway":"10.0.0.1","dns":["10.0.0.1","::1"]}}"#;
        let cfg = InstanceConfig::from_json(ok).unwrap();
        let net = cfg.network.unwrap().parse().unwrap();
        assert_eq!(net.address, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(net.prefix, 24);
        assert_eq!(net.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(net.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(
            net.resolv_conf().unwrap(),
            "# written by herd-init from /herd/instance.json\nnameserver 10.0.0.1\nnameserver ::1\n"
        );
        let bad = |network: &str| {
            let text = format!(r#"{{"instance_id":"i","hostname":"h","network":{network}}}"#);
            InstanceConfig::from_json(&text).unwrap_err().to_string()
        };
        assert!(bad(r#"{"address":"10.0.0.2"}"#).contains("prefix length"));
        assert!(bad(r#"{"address":"10.0.0.2/33"}"#).contains("1 to 32"));
        assert!(bad(r#"{"address":"10.0.0.300/24"}"#).contains("IPv4"));
        assert!(bad(r#"{"address":"10.0.0.2/24","gateway":"10.0.1.1"}"#).contains("inside"));
        assert!(bad(r#"{"address":"10.0.0.2/24","dns":["x"]}"#).contains("dns server"));
        assert!(
            bad(r#"{"address":"10.0.0.2/24","dns":["1.1.1.1","1.1.1.2","1.1.1.3","1.1.1.4"]}"#)
                .contains("at most 3")
        );
        assert!(bad(r#"{"address":"10.0.0.2/24","mtu":1500}"#).contains("not valid"));
        let n32 = NetworkConfig {
            address: "10.1.2.3/32".into(),
            ..Default::default()
        };
        assert_eq!(
            n32.parse().unwrap().netmask(),
            Ipv4Addr::new(255, 255, 255, 255)
        );
        // Absent network: the canonical JSON stays as before.
        let plain = InstanceConfig {
            instance_id: "i".into(),
            hostname: "h".into(),
            ..Default::default()
        };
        assert!(!plain.to_canonical_json().contains("network"));
    }
}
