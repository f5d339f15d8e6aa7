//! Network namespaces for tests that move frames: [`NetNs`] creates `herd-test-<pid>-<n>`,
//! TAPs inside it (with an IPv4 address and a static neighbour for IP tests), and runs commands
//! (herd-vmm, a packet helper) in it, so no frame ever
//! reaches the host's own interfaces or routes. Dropping it deletes the TAPs and the
//! namespace, also when the test fails.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace of our own, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    taps: Vec<String>,
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip")
}

impl NetNs {
    /// Creates a namespace, or `None` (with the reason) where that is not possible here
    /// (no `ip`, not root).
    pub fn create() -> Result<Self, String> {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("herd-test-{}-{n}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip netns add failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let ns = Self {
            name,
            taps: Vec::new(),
        };
        // No IPv6 chatter (router solicitations, MLD) from the host side of our TAPs.
        ns.run(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        ns.run(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The words that run a command inside the namespace.
    pub fn exec_prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// A command running `program` inside the namespace with the host's cgroup hierarchies
    /// mounted again: `ip netns exec` gives its command a fresh /sys, which has no
    /// /sys/fs/cgroup mounts, and the agent needs them to jail instances. The mounts are made
    /// in the mount namespace `ip netns exec` creates, so the host never sees them. The
    /// shell replaces itself with `program`, whose pid is the command's.
    pub fn command_with_cgroups(&self, program: &std::ffi::OsStr) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, "sh", "-ec"]);
        cmd.arg(format!("{}exec \"$0\" \"$@\"", cgroup_mount_script()));
        cmd.arg(program);
        cmd
    }

    /// Runs `cmd` inside the namespace and returns its output.
    pub fn run(&self, cmd: &[&str]) -> Output {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(cmd);
        ip(&args)
    }

    /// Creates TAP `name` inside the namespace and brings it up.
    pub fn add_tap(&mut self, name: &str) {
        let out = self.run(&["ip", "tuntap", "add", "dev", name, "mode", "tap"]);
        assert!(out.status.success(), "ip tuntap add {name}: {out:?}");
        self.taps.push(name.to_owned());
        let out = self.run(&["ip", "link", "set", name, "up"]);
        assert!(out.status.success(), "ip link set {name} up: {out:?}");
    }

    /// Waits (up to 5 s) until `dev` is operationally up: a TAP is once a process attaches,
    /// but the kernel applies carrier changes up to a second late when interfaces changed
    /// recently (anywhere on the host), and until then it drops what the host sends there.
    pub fn wait_until_up(&self, dev: &str) {
        let path = format!("/sys/class/net/{dev}/operstate");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = self.run(&["cat", &path]);
            if String::from_utf8_lossy(&out.stdout).trim() == "up" {
                // The queueing discipline is switched on right after the state changes.
                std::thread::sleep(Duration::from_millis(10));
                return;
            }
            assert!(Instant::now() < deadline, "{dev} is not up: {out:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Gives TAP `dev` the address `cidr` (e.g. `10.0.0.1/24`) and a permanent neighbour
    /// entry `ip` -> `mac`, so the host stack sends IP traffic to the guest without ARP.
    pub fn add_ipv4(&self, dev: &str, cidr: &str, neighbour: (&str, &str)) {
        let (ip, mac) = neighbour;
        for cmd in [
            &["ip", "addr", "add", cidr, "dev", dev][..],
            &[
                "ip",
                "neigh",
                "replace",
                ip,
                "lladdr",
                mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ],
        ] {
            let out = self.run(cmd);
            assert!(out.status.success(), "{cmd:?}: {out:?}");
        }
    }
}

/// Shell commands that mount, under a fresh /sys, the cgroup hierarchies this process sees.
fn cgroup_mount_script() -> String {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut script = String::new();
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, target, fstype, options, ..] = fields[..] else {
            continue;
        };
        let options: Vec<&str> = (options.split(','))
            .filter(|o| !["rw", "relatime", "nosuid", "nodev", "noexec"].contains(o))
            .collect();
        let options = options.join(",");
        match fstype {
            "tmpfs" if target == "/sys/fs/cgroup" => {
                script.push_str("mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup; ");
            }
            "cgroup" | "cgroup2" if target.starts_with("/sys/fs/cgroup") => {
                let opts = if options.is_empty() {
                    String::new()
                } else {
                    format!("-o {options} ")
                };
                script.push_str(&format!(
                    "mkdir -p {target}; mount -t {fstype} {opts}{fstype} {target}; "
                ));
            }
            _ => {}
        }
    }
    script
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for tap in &self.taps {
            let _ = self.run(&["ip", "link", "del", tap]);
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}
