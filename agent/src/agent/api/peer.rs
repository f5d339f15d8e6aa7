//! Who may talk to the API: the policy applied to each connecting peer's credentials, as the
//! kernel reports them for the socket (`SO_PEERCRED`: the uid, gid and pid of the process
//! when it connected; they cannot be forged by the peer). The socket's file mode already
//! limits who can connect; this is the second lock, so a mode or group set too wide (or a
//! socket passed to another process) does not open the API to everyone who can reach it.
//! Pure, so every rule is unit-tested here; `guard` applies it at accept time.

use std::collections::BTreeSet;

/// A connecting peer's credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The peer's process id, when the kernel knows it (not for a peer in another pid
    /// namespace it cannot name).
    pub pid: Option<i32>,
    pub uid: u32,
    /// The peer's effective gid when it connected (its supplementary groups are not known).
    pub gid: u32,
}

/// Which peers are allowed: root, the agent's own user, and the uids and gids listed
/// (`--api-allow-uid`, `--api-allow-gid`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPolicy {
    own_uid: u32,
    uids: BTreeSet<u32>,
    gids: BTreeSet<u32>,
}

impl PeerPolicy {
    /// A policy for an agent running as `own_uid`, also allowing `uids` and `gids`.
    pub fn new(
        own_uid: u32,
        uids: impl IntoIterator<Item = u32>,
        gids: impl IntoIterator<Item = u32>,
    ) -> Self {
        Self {
            own_uid,
            uids: uids.into_iter().collect(),
            gids: gids.into_iter().collect(),
        }
    }

    /// A policy for this process (its effective uid), also allowing `uids` and `gids`.
    pub fn for_this_process(
        uids: impl IntoIterator<Item = u32>,
        gids: impl IntoIterator<Item = u32>,
    ) -> Self {
        Self::new(rustix::process::geteuid().as_raw(), uids, gids)
    }

    /// Whether `peer` may use the API.
    pub fn allows(&self, peer: &Peer) -> bool {
        peer.uid == 0
            || peer.uid == self.own_uid
            || self.uids.contains(&peer.uid)
            || self.gids.contains(&peer.gid)
    }
}

impl Default for PeerPolicy {
    /// Root and this process's user only.
    fn default() -> Self {
        Self::for_this_process([], [])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer {
            pid: Some(42),
            uid,
            gid,
        }
    }

    #[test]
    fn root_and_the_agents_own_user_are_always_allowed() {
        let policy = PeerPolicy::new(1000, [], []);
        assert!(policy.allows(&peer(0, 0)));
        assert!(policy.allows(&peer(0, 65534)), "root whatever its group");
        assert!(policy.allows(&peer(1000, 1000)));
        assert!(
            policy.allows(&peer(1000, 5)),
            "the agent's user whatever its group"
        );
    }

    #[test]
    fn anyone_else_is_refused_without_an_allow_list() {
        let policy = PeerPolicy::new(0, [], []);
        assert!(!policy.allows(&peer(65534, 65534)));
        assert!(
            !policy.allows(&peer(1000, 0)),
            "group root is not user root"
        );
        let policy = PeerPolicy::new(1000, [], []);
        assert!(
            !policy.allows(&peer(1001, 1000)),
            "the agent's group is not enough"
        );
    }

    #[test]
    fn listed_uids_and_gids_are_allowed_and_only_those() {
        let policy = PeerPolicy::new(0, [1001, 1002], [2000]);
        assert!(policy.allows(&peer(1001, 7)));
        assert!(policy.allows(&peer(1002, 7)));
        assert!(policy.allows(&peer(3000, 2000)), "by gid");
        assert!(!policy.allows(&peer(1003, 2001)));
        // A gid in the uid list (or the reverse) does not count.
        assert!(!policy.allows(&peer(2000, 1001)));
    }

    #[test]
    fn the_default_allows_this_process() {
        let me = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        assert!(PeerPolicy::default().allows(&peer(me, gid)));
    }
}
