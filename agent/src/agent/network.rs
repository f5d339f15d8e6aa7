//! The host side of instance networking: one Linux bridge the agent owns, with the first
//! address of the configured subnet (the instances' gateway), a TAP per instance attached to
//! it, addresses handed out from the subnet, and each instance's own MAC address. Changes go through `ip` (iproute2), like
//! `herd run --net auto`; the address pool itself is pure and tested here.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

use herd_proto::MacAddr;
use sha2::Digest as _;

/// Errors of host network setup.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{0:?} is not an IPv4 subnet like 172.31.0.0/24 with a prefix from 16 to 29")]
    Subnet(String),
    #[error("`ip {args}` failed: {why}")]
    Ip {
        args: String,
        why: String,
        #[source]
        source: Option<std::io::Error>,
    },
    #[error("no free address left in {0}")]
    Exhausted(String),
}

/// An IPv4 subnet: the network address and the prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Subnet {
    type Err = NetworkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetworkError::Subnet(s.to_owned());
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(16..=29).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Subnet {
    /// The bridge's address: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The lowest host address that is neither the gateway, the broadcast address nor `used`.
    pub fn allocate(&self, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let first = u32::from(self.network) + 2;
        let broadcast = u32::from(self.network) | (u32::MAX >> self.prefix);
        (first..broadcast)
            .map(Ipv4Addr::from)
            .find(|a| !used.contains(a))
    }
}

/// Prefix of the TAP names the agent creates (so leftovers can be found and removed).
pub const TAP_PREFIX: &str = "hd";

/// The agent's bridge.
#[derive(Clone, Debug)]
pub struct Bridge {
    pub name: String,
    pub subnet: Subnet,
}

impl Bridge {
    /// Creates the bridge if it is missing, gives it the gateway address and brings it up.
    pub fn ensure(name: &str, subnet: Subnet) -> Result<Self, NetworkError> {
        let exists = Command::new("ip")
            .args(["link", "show", "dev", name])
            .output()
            .is_ok_and(|o| o.status.success());
        if !exists {
            ip(&["link", "add", "name", name, "type", "bridge"])?;
        }
        let addr = format!("{}/{}", subnet.gateway(), subnet.prefix);
        ip(&["addr", "replace", &addr, "dev", name])?;
        ip(&["link", "set", "dev", name, "up"])?;
        Ok(Self {
            name: name.to_owned(),
            subnet,
        })
    }

    /// Creates the TAP `tap` and attaches it to the bridge, up.
    pub fn add_tap(&self, tap: &str) -> Result<(), NetworkError> {
        ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
        let attached = ip(&["link", "set", "dev", tap, "master", &self.name, "up"]);
        if attached.is_err() {
            let _ = remove_tap(tap);
        }
        attached
    }

    /// Deletes the bridge (when the agent stops with no instance left on it).
    pub fn remove(&self) -> Result<(), NetworkError> {
        ip(&["link", "del", "dev", &self.name])
    }

    /// The agent's TAPs on this host (by name prefix), for cleaning up after dead instances.
    pub fn taps(&self) -> Vec<String> {
        let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() else {
            return Vec::new();
        };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let name = line.split(": ").nth(1)?.split('@').next()?;
                name.starts_with(TAP_PREFIX).then(|| name.to_owned())
            })
            .collect()
    }
}

/// Removes a TAP; one that is already gone is fine.
pub fn remove_tap(tap: &str) -> Result<(), NetworkError> {
    match ip(&["link", "del", "dev", tap]) {
        Err(NetworkError::Ip { why, .. }) if why.contains("Cannot find device") => Ok(()),
        other => other,
    }
}

/// The TAP name of an instance: the prefix and the random part of its id (15 bytes at most).
pub fn tap_name(instance_id: &str) -> String {
    let random = instance_id.rsplit('-').next().unwrap_or(instance_id);
    format!("{TAP_PREFIX}{}", &random[..random.len().min(13)])
}

/// The MAC address of an instance's interface: `02:` (locally administered, unicast) and 40
/// bits of the SHA-256 of its id. Derived rather than stored, so it is the same however often
/// the agent asks (a restart adopting the instance included), and distinct per instance: two
/// of a host's instances share one with odds of about n²/2⁴¹ (under one in a million for a
/// thousand). A booted VM's device offers it; a clone restored from a snapshot (whose device
/// keeps the snapshotted VM's) is told it in its identity and herd-init takes it.
pub fn instance_mac(instance_id: &str) -> MacAddr {
    let hash = sha2::Sha256::digest(instance_id.as_bytes());
    let mut octets = [0x02, 0, 0, 0, 0, 0];
    octets[1..].copy_from_slice(&hash[..5]);
    MacAddr::new(octets).expect("02:... is unicast and not zero")
}

/// Runs `ip ARGS`; a failure carries iproute2's own message.
pub fn ip(args: &[&str]) -> Result<(), NetworkError> {
    let err = |why: String, source| NetworkError::Ip {
        args: args.join(" "),
        why,
        source,
    };
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| err("cannot run ip".into(), Some(e)))?;
    if out.status.success() {
        return Ok(());
    }
    Err(err(
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_to_their_network_address() {
        let s: Subnet = "172.31.0.77/24".parse().unwrap();
        assert_eq!(s.to_string(), "172.31.0.0/24");
        assert_eq!(s.gateway(), Ipv4Addr::new(172, 31, 0, 1));
        for bad in ["172.31.0.0", "x/24", "10.0.0.0/8", "10.0.0.0/30", "::1/64"] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_skip_the_gateway_used_ones_and_broadcast() {
        let s: Subnet = "10.1.0.0/29".parse().unwrap();
        let mut used = BTreeSet::new();
        let mut got = Vec::new();
        while let Some(a) = s.allocate(&used) {
            used.insert(a);
            got.push(a.octets()[3]);
        }
        assert_eq!(got, [2, 3, 4, 5, 6]);
        used.remove(&Ipv4Addr::new(10, 1, 0, 4));
        assert_eq!(s.allocate(&used), Some(Ipv4Addr::new(10, 1, 0, 4)));
    }

    #[test]
    fn instance_macs_are_stable_local_unicast_and_differ_between_instances() {
        let mac = instance_mac("web-1a2b3c4d");
        assert_eq!(mac, instance_mac("web-1a2b3c4d"), "the same every time");
        assert_eq!(mac.octets()[0], 0x02, "locally administered, unicast");
        assert!(mac.is_local());
        // The hash's first bytes, so a change of derivation shows here.
        let hash = sha2::Sha256::digest(b"web-1a2b3c4d");
        assert_eq!(mac.octets()[1..], hash[..5]);
        let macs: BTreeSet<MacAddr> = (0..1000)
            .map(|i| instance_mac(&format!("web-{i:08x}")))
            .collect();
        assert_eq!(macs.len(), 1000, "no two of a thousand ids share one");
        assert_ne!(instance_mac("web-1"), instance_mac("api-1"));
    }

    #[test]
    fn tap_names_fit_the_kernel_limit() {
        assert_eq!(tap_name("web-1a2b3c4d"), "hd1a2b3c4d");
        assert!(tap_name("x-0123456789abcdef0123").len() <= 15);
    }
}
