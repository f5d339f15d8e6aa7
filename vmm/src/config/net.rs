//! Network interfaces: Firecracker's `network-interfaces` entries and the `--net
//! TAP[,mac=aa:bb:cc:dd:ee:ff]` flag, validated into [`NetConfig`]s. Each names an existing
//! TAP on the host (herd-vmm attaches, it never creates one); whether it exists and is free is
//! checked when the VM is built, where the error can name it.

use std::fmt;
use std::str::FromStr;

/// Smallest MTU we announce (IPv4's minimum).
pub const MIN_MTU: u16 = 68;

/// Errors in a network interface's settings; each names the interface.
#[derive(Debug, thiserror::Error)]
pub enum NetConfigError {
    #[error(
        "network interface {iface}: bad MAC address {value:?} (want a unicast aa:bb:cc:dd:ee:ff)"
    )]
    BadMac { iface: String, value: String },
    #[error("network interface {iface}: MTU {mtu} is below {MIN_MTU}")]
    BadMtu { iface: String, mtu: u16 },
    #[error("network interface {iface}: empty host_dev_name")]
    NoTap { iface: String },
    #[error("network interface {0} is configured twice")]
    DuplicateId(String),
    #[error("network interfaces {0} and {1} both use TAP {2}")]
    DuplicateTap(String, String, String),
    #[error("--net {spec:?}: {why} (want TAP[,mac=aa:bb:cc:dd:ee:ff])")]
    BadFlag { spec: String, why: &'static str },
}

/// A MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = ();

    /// Six colon-separated two-digit hex octets, unicast (low bit of the first octet clear).
    fn from_str(s: &str) -> Result<Self, ()> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut mac {
            let p = parts.next().ok_or(())?;
            if p.len() != 2 {
                return Err(());
            }
            *octet = u8::from_str_radix(p, 16).map_err(|_| ())?;
        }
        if parts.next().is_some() || mac[0] & 1 != 0 {
            return Err(());
        }
        Ok(Self(mac))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// One network interface as given, unchecked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawNetConfig {
    pub iface_id: String,
    pub host_dev_name: String,
    pub guest_mac: Option<String>,
    pub mtu: Option<u16>,
}

/// One checked network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The config's name for it (`eth0` in Firecracker configs, `net<N>` from flags).
    pub iface_id: String,
    /// The existing host TAP it attaches to.
    pub host_dev_name: String,
    /// The guest's MAC address (the guest picks a random one without it).
    pub guest_mac: Option<MacAddr>,
    /// The MTU announced to the guest (the TAP's own MTU is the host's business).
    pub mtu: Option<u16>,
}

/// Parses the `index`th `--net TAP[,mac=..]` flag; the interface is named `net<index>`.
pub fn parse_net_flag(index: usize, spec: &str) -> Result<RawNetConfig, NetConfigError> {
    let bad = |why| NetConfigError::BadFlag {
        spec: spec.to_owned(),
        why,
    };
    let mut parts = spec.split(',');
    let tap = parts.next().unwrap_or_default();
    if tap.is_empty() || tap.contains('=') {
        return Err(bad("the TAP name comes first"));
    }
    let mut raw = RawNetConfig {
        iface_id: format!("net{index}"),
        host_dev_name: tap.to_owned(),
        ..RawNetConfig::default()
    };
    for opt in parts {
        match opt.split_once('=') {
            Some(("mac", v)) if raw.guest_mac.is_none() => raw.guest_mac = Some(v.to_owned()),
            _ => return Err(bad("unknown or repeated option")),
        }
    }
    Ok(raw)
}

impl RawNetConfig {
    fn validate(self) -> Result<NetConfig, NetConfigError> {
        let iface = self.iface_id;
        if self.host_dev_name.is_empty() {
            return Err(NetConfigError::NoTap { iface });
        }
        let guest_mac = match self.guest_mac {
            Some(value) => match value.parse() {
                Ok(mac) => Some(mac),
                Err(()) => return Err(NetConfigError::BadMac { iface, value }),
            },
            None => None,
        };
        if let Some(mtu) = self.mtu.filter(|&m| m < MIN_MTU) {
            return Err(NetConfigError::BadMtu { iface, mtu });
        }
        Ok(NetConfig {
            iface_id: iface,
            host_dev_name: self.host_dev_name,
            guest_mac,
            mtu: self.mtu,
        })
    }
}

/// Checks every interface, and that ids and TAPs are not used twice.
pub fn validate_net(raw: Vec<RawNetConfig>) -> Result<Vec<NetConfig>, NetConfigError> {
    let mut out: Vec<NetConfig> = Vec::with_capacity(raw.len());
    for r in raw {
        let n = r.validate()?;
        if out.iter().any(|o| o.iface_id == n.iface_id) {
            return Err(NetConfigError::DuplicateId(n.iface_id));
        }
        if let Some(o) = out.iter().find(|o| o.host_dev_name == n.host_dev_name) {
            let (a, b) = (o.iface_id.clone(), n.iface_id);
            return Err(NetConfigError::DuplicateTap(a, b, n.host_dev_name));
        }
        out.push(n);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_parse_unicast_only() {
        let mac: MacAddr = "aa:bb:cc:dd:ee:0f".parse().unwrap();
        assert_eq!(mac.0, [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x0f]);
        assert_eq!(mac.to_string(), "aa:bb:cc:dd:ee:0f");
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "a:bb:cc:dd:ee:ff0",
            "xx:bb:cc:dd:ee:ff",
            "01:00:5e:00:00:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn net_flags_name_the_tap_and_an_optional_mac() {
        let raw = parse_net_flag(1, "tap0,mac=02:00:00:00:00:01").unwrap();
        assert_eq!(raw.iface_id, "net1");
        assert_eq!(raw.host_dev_name, "tap0");
        assert_eq!(raw.guest_mac.as_deref(), Some("02:00:00:00:00:01"));
        assert_eq!(parse_net_flag(0, "tap0").unwrap().guest_mac, None);
        for bad in [
            "",
            "mac=02:00:00:00:00:01",
            "tap0,speed=10",
            "tap0,mac=a,mac=b",
        ] {
            assert!(
                matches!(parse_net_flag(0, bad), Err(NetConfigError::BadFlag { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn validation_names_the_interface() {
        let raw = |id: &str, tap: &str, mac: Option<&str>| RawNetConfig {
            iface_id: id.into(),
            host_dev_name: tap.into(),
            guest_mac: mac.map(Into::into),
            mtu: None,
        };
        let err = validate_net(vec![raw("eth0", "tap0", Some("zz"))]).unwrap_err();
        assert!(
            err.to_string().contains("eth0") && err.to_string().contains("zz"),
            "{err}"
        );
        let err = validate_net(vec![raw("eth0", "t", None), raw("eth0", "u", None)]).unwrap_err();
        assert!(matches!(err, NetConfigError::DuplicateId(id) if id == "eth0"));
        let err = validate_net(vec![raw("a", "t", None), raw("b", "t", None)]).unwrap_err();
        assert!(matches!(err, NetConfigError::DuplicateTap(..)));
        assert!(matches!(
            validate_net(vec![raw("a", "", None)]),
            Err(NetConfigError::NoTap { .. })
        ));
        let mut small = raw("a", "t", None);
        small.mtu = Some(67);
        assert!(matches!(
            validate_net(vec![small]),
            Err(NetConfigError::BadMtu { mtu: 67, .. })
        ));
        let ok = validate_net(vec![raw("a", "t", Some("02:00:00:00:00:01"))]).unwrap();
        assert_eq!(ok[0].guest_mac, Some(MacAddr([2, 0, 0, 0, 0, 1])));
    }
}
