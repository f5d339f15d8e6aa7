//! Ethernet (MAC) addresses an instance's network interface may be given: the agent derives
//! one per instance and hands a restored clone its own in the identity file, and herd-init
//! sets it on the interface (`docs/snapshots.md`, "Clone identity"). Only addresses an
//! interface can really own are [`MacAddr`]s: a multicast (group) address or the all-zero one
//! is refused when parsed, so neither side can be handed one by mistake.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why text or octets are not an interface's MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacAddrError {
    #[error("{0:?} is not six two-digit hex octets separated by colons, as in 02:00:5e:10:00:01")]
    Syntax(String),
    #[error("{0} is a multicast address (the lowest bit of the first octet is set)")]
    Multicast(MacAddr),
    #[error("00:00:00:00:00:00 is not an interface address")]
    Zero,
}

/// A unicast, non-zero MAC address. Written in lower case, `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// `octets` as an address, if an interface can own it.
    pub fn new(octets: [u8; 6]) -> Result<Self, MacAddrError> {
        if octets == [0; 6] {
            return Err(MacAddrError::Zero);
        }
        if octets[0] & 1 != 0 {
            return Err(MacAddrError::Multicast(MacAddr(octets)));
        }
        Ok(MacAddr(octets))
    }

    pub fn octets(self) -> [u8; 6] {
        self.0
    }

    /// Whether the address is locally administered (second-lowest bit of the first octet),
    /// i.e. not one of a manufacturer's.
    pub fn is_local(self) -> bool {
        self.0[0] & 2 != 0
    }
}

impl FromStr for MacAddr {
    type Err = MacAddrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || MacAddrError::Syntax(text.to_owned());
        let mut octets = [0u8; 6];
        let mut parts = text.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(syntax)?;
            // from_str_radix alone would take "+a" or a single digit.
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(syntax());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| syntax())?;
        }
        if parts.next().is_some() {
            return Err(syntax());
        }
        MacAddr::new(octets)
    }
}

impl TryFrom<String> for MacAddr {
    type Error = MacAddrError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<MacAddr> for String {
    fn from(mac: MacAddr) -> String {
        mac.to_string()
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_in_either_case_and_print_in_lower_case() {
        let mac: MacAddr = "02:AB:cd:00:10:ff".parse().unwrap();
        assert_eq!(mac.octets(), [0x02, 0xab, 0xcd, 0x00, 0x10, 0xff]);
        assert_eq!(mac.to_string(), "02:ab:cd:00:10:ff");
        assert!(mac.is_local());
        let vendor: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        assert!(
            vendor.is_local(),
            "QEMU's prefix is locally administered too"
        );
        assert!(!"00:16:3e:00:00:01".parse::<MacAddr>().unwrap().is_local());
    }

    #[test]
    fn malformed_multicast_and_zero_addresses_are_refused() {
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "02-00-00-00-00-01",
            "2:00:00:00:00:01",
            "002:00:00:00:00:1",
            "02:00:00:00:00:0g",
            "+2:00:00:00:00:01",
            "02:00:00:00:00:01:",
        ] {
            let err = bad.parse::<MacAddr>().unwrap_err();
            assert_eq!(err, MacAddrError::Syntax(bad.into()), "{bad}");
        }
        for group in [
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "33:33:00:00:00:01",
        ] {
            let err = group.parse::<MacAddr>().unwrap_err();
            assert!(matches!(err, MacAddrError::Multicast(_)), "{group}");
            assert!(err.to_string().starts_with(group), "{err}");
        }
        assert_eq!(
            "00:00:00:00:00:00".parse::<MacAddr>(),
            Err(MacAddrError::Zero)
        );
        assert_eq!(MacAddr::new([0; 6]), Err(MacAddrError::Zero));
    }

    #[test]
    fn json_carries_the_text_form_and_is_checked() {
        let mac: MacAddr = serde_json::from_str(r#""02:00:00:00:00:0A""#).unwrap();
        assert_eq!(
            serde_json::to_string(&mac).unwrap(),
            r#""02:00:00:00:00:0a""#
        );
        let err = serde_json::from_str::<MacAddr>(r#""01:00:00:00:00:0a""#).unwrap_err();
        assert!(err.to_string().contains("multicast"), "{err}");
        assert!(serde_json::from_str::<MacAddr>("[2,0,0,0,0,1]").is_err());
    }
}
