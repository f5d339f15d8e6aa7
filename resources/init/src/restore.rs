//! Carries out a `restored` request ([`crate::identity`] decides what it changes) against
//! [`Host`] and [`Os`]: reseed the random number generator, set the hostname, give the
//! network interface its new MAC address, move it to the new network (and rewrite
//! `/etc/resolv.conf` when the new network names servers),
//! rewrite [`IDENTITY_PATH`], then log `herd-init: restored as <instance_id> (generation
//! <generation_id>)`.
//!
//! A restore happens while the app runs, so no failure ends anything: each step that fails is
//! one warning on the console and the next step still runs (an app with a stale hostname is
//! better than no app; a clone that could not reseed says so loudly).

use herd_proto::{MacAddr, Network};

use crate::boot::{describe, say, warn};
use crate::host::{Host, HostError, Os};
use crate::identity::{Current, IDENTITY_PATH, Identity};

/// A step of a restore that failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("restore: the random number generator was not reseeded")]
    Rng(#[source] HostError),
    #[error("restore: the hostname was not changed")]
    Hostname(#[source] HostError),
    #[error("restore: the MAC address was not changed")]
    Mac(#[source] HostError),
    #[error("restore: the network was not moved")]
    Network(#[source] HostError),
    #[error("restore: the name servers were not changed")]
    ResolvConf(#[source] HostError),
    #[error("restore: cannot write {IDENTITY_PATH}")]
    Record(#[source] std::io::Error),
}

/// Takes `identity` into `current` and changes the machine to match.
pub fn apply(host: &mut impl Host, os: &mut impl Os, current: &mut Current, identity: Identity) {
    let plan = current.restore(identity);
    for result in [
        host.reseed_rng(&plan.entropy.0).map_err(RestoreError::Rng),
        plan.hostname.as_deref().map_or(Ok(()), |name| {
            host.set_hostname(name).map_err(RestoreError::Hostname)
        }),
        plan.mac.map_or(Ok(()), |mac| change_mac(host, mac)),
        plan.network
            .as_ref()
            .map_or(Ok(()), |network| move_network(host, network)),
        os.replace_file(IDENTITY_PATH, &plan.record)
            .map_err(RestoreError::Record),
    ] {
        if let Err(err) = result {
            warn(&err);
        }
    }
    say(format_args!("{}", plan.summary));
}

/// The interface to `mac`.
fn change_mac(host: &mut impl Host, mac: MacAddr) -> Result<(), RestoreError> {
    let iface = host.set_mac(mac).map_err(RestoreError::Mac)?;
    say(format_args!("{iface} now has MAC address {mac}"));
    Ok(())
}

/// The interface to `network`, and its name servers if it names any (without, the old
/// `/etc/resolv.conf` stays: there is no earlier content to go back to).
fn move_network(host: &mut impl Host, network: &Network) -> Result<(), RestoreError> {
    let iface = host
        .replace_network(network)
        .map_err(RestoreError::Network)?;
    say(format_args!("{iface} is now {}", describe(network)));
    match network.resolv_conf() {
        Some(text) => host
            .write_resolv_conf(&text)
            .map_err(RestoreError::ResolvConf),
        None => Ok(()),
    }
}
