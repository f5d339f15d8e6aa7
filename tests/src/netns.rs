//! Network namespaces for tests that move frames: [`NetNs`] creates `herd-test-<pid>-<n>`,
//! TAPs inside it, and runs commands (herd-vmm, a packet helper) in it, so no frame ever
//! reaches the host's own interfaces or routes. Dropping it deletes the TAPs and the
//! namespace, also when the test fails.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

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
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for tap in &self.taps {
            let _ = self.run(&["ip", "link", "del", tap]);
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}
