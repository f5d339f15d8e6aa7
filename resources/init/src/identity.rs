//! Clone identity (`docs/snapshots.md`, "Clone identity"): every time herd-vmm restores a VM
//! from a snapshot it sends `restored <json>` on the control port, because a snapshot may be
//! restored many times and each clone must stop being the VM it was copied from. This module
//! owns what that request means, apart from any effect:
//! - [`Identity::from_json`] parses the JSON at the boundary into a checked [`Identity`]
//!   (`generation_id`, `entropy`, and the optional `instance_id`, `hostname`, `mac` and
//!   `network` the host appends from its identity file); anything else is refused whole.
//! - [`Current`] is the identity init keeps (from `/herd/instance.json`, then each restore);
//!   [`Current::restore`] decides what a restore changes ([`Restore`]) and renders the new
//!   [`IDENTITY_PATH`], the file through which the app learns its current identity.
//!
//! [`crate::restore`] carries the decisions out.

use std::fmt;

use herd_proto::{MacAddr, MacAddrError, Network, NetworkConfig};
use serde::{Deserialize, Serialize};

use crate::config::HOSTNAME_MAX;

/// The file an app reads its current identity from, rewritten (atomically) on each restore.
pub const IDENTITY_PATH: &str = "/run/herd/identity.json";
/// Bytes of `entropy` (64 hex digits on the wire).
pub const ENTROPY_BYTES: usize = 32;
/// Hex digits of `generation_id` (128 bits).
pub const GENERATION_DIGITS: usize = 32;
/// Longest `instance_id` taken.
pub const INSTANCE_ID_MAX: usize = 128;

/// Why a `restored` request was refused (it is then ignored).
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("not a JSON object of the restored request's members")]
    Json(#[source] serde_json::Error),
    #[error("generation_id must be {GENERATION_DIGITS} hex digits")]
    GenerationId,
    #[error("entropy must be {} hex digits", 2 * ENTROPY_BYTES)]
    Entropy,
    #[error("instance_id must be 1 to {INSTANCE_ID_MAX} bytes without control characters")]
    InstanceId,
    #[error("hostname {0:?} must be 1 to {HOSTNAME_MAX} bytes without NUL")]
    Hostname(String),
    #[error("network: {0}")]
    Network(String),
    #[error("mac")]
    Mac(#[source] MacAddrError),
}

/// The request's JSON as herd-vmm writes it: its own two members, then the identity file's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    generation_id: String,
    entropy: String,
    #[serde(default)]
    instance_id: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    network: Option<NetworkConfig>,
    /// Kept as text here so that a bad address is refused naming why, not as bad JSON.
    #[serde(default)]
    mac: Option<String>,
}

/// Fresh random bytes from the host for the kernel's random number generator. Never printed:
/// its `Debug` hides the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Entropy(pub [u8; ENTROPY_BYTES]);

impl fmt::Debug for Entropy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Entropy({ENTROPY_BYTES} bytes)")
    }
}

/// A checked `restored` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// New for every restore, lowercase hex.
    pub generation_id: String,
    pub entropy: Entropy,
    pub instance_id: Option<String>,
    pub hostname: Option<String>,
    pub network: Option<Network>,
    /// The clone's own Ethernet address: every clone of a snapshot would otherwise keep the
    /// snapshotted VM's, and clones on one bridge must not share one.
    pub mac: Option<MacAddr>,
}

impl Identity {
    /// Parses and checks the JSON after `restored `.
    pub fn from_json(text: &str) -> Result<Self, IdentityError> {
        let wire: Wire = serde_json::from_str(text).map_err(IdentityError::Json)?;
        let generation = hex(&wire.generation_id).filter(|b| b.len() * 2 == GENERATION_DIGITS);
        if generation.is_none() {
            return Err(IdentityError::GenerationId);
        }
        let entropy = hex(&wire.entropy)
            .and_then(|b| <[u8; ENTROPY_BYTES]>::try_from(b).ok())
            .ok_or(IdentityError::Entropy)?;
        if let Some(id) = &wire.instance_id
            && (id.is_empty() || id.len() > INSTANCE_ID_MAX || id.chars().any(char::is_control))
        {
            return Err(IdentityError::InstanceId);
        }
        if let Some(name) = &wire.hostname
            && (name.is_empty() || name.len() > HOSTNAME_MAX || name.contains('\0'))
        {
            return Err(IdentityError::Hostname(name.clone()));
        }
        let network = wire.network.as_ref().map(NetworkConfig::parse).transpose();
        let mac = wire.mac.as_deref().map(str::parse).transpose();
        Ok(Identity {
            generation_id: wire.generation_id.to_ascii_lowercase(),
            entropy: Entropy(entropy),
            instance_id: wire.instance_id,
            hostname: wire.hostname,
            network: network.map_err(IdentityError::Network)?,
            mac: mac.map_err(IdentityError::Mac)?,
        })
    }
}

/// The bytes of an even number of hex digits (either case).
fn hex(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    digits
        .chunks(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// The identity init keeps: the instance configuration's, then each restore's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Current {
    pub instance_id: Option<String>,
    pub hostname: Option<String>,
    pub network: Option<Network>,
    /// `None` until the first restore.
    pub generation_id: Option<String>,
    /// `None` until a restore names one (the address a booted VM's interface has is the
    /// device's or the kernel's choice, not part of its configuration).
    pub mac: Option<MacAddr>,
}

/// What one restore changes, in the order init carries it out: the random number generator
/// first (everything after, the app included, then draws from the reseeded pool), then the
/// machine's name, its interface's MAC address (before the new IP address, so that the new
/// address is never announced from the snapshot's MAC), its network, then [`IDENTITY_PATH`],
/// last, so that an app that sees the new file finds the rest already done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restore {
    pub entropy: Entropy,
    /// Set when the request names one.
    pub hostname: Option<String>,
    /// Given to the interface when the request names one.
    pub mac: Option<MacAddr>,
    /// Moved to when the request has one (the old address and default route go).
    pub network: Option<Network>,
    /// The new content of [`IDENTITY_PATH`].
    pub record: String,
    /// The console line (without `herd-init: `).
    pub summary: String,
}

/// [`IDENTITY_PATH`]'s JSON: every member always present (`null` when unknown), never the
/// entropy.
#[derive(Serialize)]
struct Record<'a> {
    instance_id: Option<&'a str>,
    hostname: Option<&'a str>,
    generation_id: Option<&'a str>,
    network: Option<NetworkConfig>,
    mac: Option<MacAddr>,
}

impl Current {
    /// The identity from the instance configuration, before any restore.
    pub fn booted(
        instance_id: Option<String>,
        hostname: Option<String>,
        network: Option<Network>,
    ) -> Self {
        Current {
            instance_id,
            hostname,
            network,
            generation_id: None,
            mac: None,
        }
    }

    /// Takes `identity` (what it names replaces what was; what it leaves out stays) and
    /// returns what to change.
    pub fn restore(&mut self, identity: Identity) -> Restore {
        let Identity {
            generation_id,
            entropy,
            instance_id,
            hostname,
            network,
            mac,
        } = identity;
        self.generation_id = Some(generation_id);
        self.instance_id = instance_id.or(self.instance_id.take());
        if let Some(name) = &hostname {
            self.hostname = Some(name.clone());
        }
        if let Some(net) = &network {
            self.network = Some(net.clone());
        }
        self.mac = mac.or(self.mac);
        Restore {
            entropy,
            hostname,
            mac,
            network,
            record: self.record(),
            summary: format!(
                "restored as {} (generation {})",
                self.instance_id.as_deref().unwrap_or("none"),
                self.generation_id.as_deref().unwrap_or_default()
            ),
        }
    }

    /// [`IDENTITY_PATH`]'s content for this identity, one line of JSON.
    pub fn record(&self) -> String {
        let record = Record {
            instance_id: self.instance_id.as_deref(),
            hostname: self.hostname.as_deref(),
            generation_id: self.generation_id.as_deref(),
            network: self.network.as_ref().map(network_config),
            mac: self.mac,
        };
        let mut text = serde_json::to_string(&record).expect("plain data serialises");
        text.push('\n');
        text
    }
}

/// `network` written back in `/herd/instance.json`'s shape.
fn network_config(network: &Network) -> NetworkConfig {
    NetworkConfig {
        address: format!("{}/{}", network.address, network.prefix),
        gateway: network.gateway.map(|gw| gw.to_string()),
        dns: network.dns.iter().map(ToString::to_string).collect(),
    }
}

#[cfg(test)]
#[path = "identity_tests.rs"]
mod tests;
