//! `herd agent`'s command line: every option, documented for `--help`, with its default, and
//! the socket, state and herd-vmm paths and the API's access rules resolved from flags,
//! environment and `--home`.

use std::path::{Path, PathBuf};

use super::api::{Access, PeerPolicy};
use super::network::Subnet;
use crate::run::{RunError, find_vmm};

/// The API socket when neither `--socket` nor `$HERD_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/herd/herd.sock";

/// `$HERD_SOCKET`, or [`DEFAULT_SOCKET`] when it is unset or empty; the agent and the client
/// agree on it.
pub fn default_socket() -> PathBuf {
    std::env::var_os("HERD_SOCKET")
        .filter(|s| !s.is_empty())
        .map_or_else(|| DEFAULT_SOCKET.into(), PathBuf::from)
}

/// Run the agent: serve the API and keep every service's instances running.
#[derive(Clone, Debug, clap::Args)]
pub struct AgentArgs {
    /// The API's Unix socket (HTTP/1.1 + JSON, mode 0660; its directory is created). A socket
    /// left by a dead agent is replaced; one a live agent answers on is refused [default:
    /// $HERD_SOCKET, else /run/herd/herd.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Give the socket to this group (numeric gid; the owner stays the agent's user), so its
    /// members can connect through the file mode. They are served only if also allowed by
    /// --api-allow-gid or --api-allow-uid [default: the agent's own group].
    #[arg(long, value_name = "GID")]
    pub socket_group: Option<u32>,
    /// A user (numeric uid) allowed to use the API besides root and the agent's own user;
    /// repeatable. Checked on each connection (SO_PEERCRED): anyone else is closed unanswered
    /// and logged.
    #[arg(long = "api-allow-uid", value_name = "UID")]
    pub api_allow_uids: Vec<u32>,
    /// A group (numeric gid) whose processes may use the API: the connecting process's
    /// effective gid must be it (supplementary groups are not seen); repeatable.
    #[arg(long = "api-allow-gid", value_name = "GID")]
    pub api_allow_gids: Vec<u32>,
    /// Where the agent keeps its database and the instances' console logs [default:
    /// HOME/agent, HOME being --home].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The host bridge the instances' TAP interfaces join; the agent creates it and gives it
    /// the subnet's first address. `none`: instances get no network device.
    #[arg(long, value_name = "NAME", default_value = "herd0", value_parser = parse_bridge)]
    pub bridge: String,
    /// The instances' IPv4 network, prefix 16 to 29: the first host address is the bridge's
    /// (the instances' gateway); each instance gets one of the others.
    #[arg(long, value_name = "CIDR", default_value = "172.31.0.0/24")]
    pub subnet: Subnet,
    /// The herd-vmm binary instances run in [default: $HERD_VMM, else next to this
    /// executable, else on PATH].
    #[arg(long, value_name = "PATH")]
    pub vmm: Option<PathBuf>,
    /// Run the instances' herd-vmm unjailed (debugging only). By default each runs as its own
    /// unprivileged uid, in new mount, PID, IPC, UTS and network namespaces with its instance
    /// directory as `/`, under seccomp, in a cgroup that limits its memory (guest memory plus
    /// --jail-memory-overhead-mib), CPU (one core per vCPU) and processes.
    #[arg(long)]
    pub no_jail: bool,
    /// First uid (and gid) of the range jailed instances get, one each; chosen above the
    /// usual user and subordinate-id ranges.
    #[arg(long, value_name = "UID", default_value_t = 3_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub jail_uid_base: u32,
    /// How many uids the range has: the most jailed instances that can run at once.
    #[arg(long, value_name = "N", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1..))]
    pub jail_uid_count: u32,
    /// Memory a jailed instance's cgroup allows beyond its guest memory, in MiB, for herd-vmm
    /// and the kernel's memory for the VM.
    #[arg(long, value_name = "MIB", default_value_t = 32)]
    pub jail_memory_overhead_mib: u32,
    /// Size cap of each instance's console log in bytes; older output is rotated away.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(4096..))]
    pub log_max_bytes: u64,
    /// How long the console logs of an instance that ended are kept, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 3_600_000)]
    pub log_keep_ms: u64,
}

impl AgentArgs {
    /// The socket to serve on.
    pub fn socket_path(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(default_socket)
    }

    /// The state directory, given herd's home (`--home`).
    pub fn state_dir(&self, home: &Path) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| home.join("agent"))
    }

    /// Who may use the API: the socket's group and the peers allowed.
    pub fn access(&self) -> Access {
        Access {
            socket_group: self.socket_group,
            peers: PeerPolicy::for_this_process(
                self.api_allow_uids.iter().copied(),
                self.api_allow_gids.iter().copied(),
            ),
        }
    }

    /// The herd-vmm binary.
    pub fn vmm_path(&self) -> Result<PathBuf, RunError> {
        self.vmm.clone().map_or_else(find_vmm, Ok)
    }
}

/// A network interface name the kernel accepts: 1 to 15 bytes, no `/`, `:` or whitespace.
fn parse_bridge(name: &str) -> Result<String, String> {
    let ok = (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "{name:?} is not an interface name (1 to 15 characters, no '/', ':' or spaces)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_names_must_be_interface_names() {
        assert!(parse_bridge("herd0").is_ok());
        for bad in ["", "a/b", "a b", "sixteen-chars-xx", ".."] {
            assert!(parse_bridge(bad).is_err(), "{bad}");
        }
    }
}
