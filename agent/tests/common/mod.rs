//! The end-to-end harness for tests that run the real `herd agent` with real herd-vmm
//! processes: an agent in a network namespace the test creates (so its bridge and TAPs live
//! and die there), with its own store and state, raw HTTP on its socket, the `herd` client
//! commands, and probe-guest images. (The same harness as `agent_fleet.rs` has inline, plus
//! text answers, request bodies from files, and streaming client commands.)
//!
//! Everything the test started is ended by its process id on drop: the client commands,
//! the agent, and the instances (found by their directory under this test's state).

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use herd_tests::netns::NetNs;
use herd_tests::vm::{herd_vmm_bin, kvm_available, skip};
use serde_json::{Value, json};

/// The probe halts and stays up after its report.
pub const HALT: &str = "console=ttyS0 probe.end=halt";

/// An agent under test, in its own namespace, with its own store and state.
pub struct Agent {
    pub ns: NetNs,
    pub home: tempfile::TempDir,
    child: Option<Child>,
}

/// One HTTP answer: status, Content-Type, body as text.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Agent {
    /// `None` (a recorded skip) without KVM or network namespaces.
    pub fn new(test: &str) -> Option<Self> {
        if !kvm_available(test) {
            return None;
        }
        let ns = match NetNs::create() {
            Ok(ns) => ns,
            Err(why) => {
                skip(test, &why);
                return None;
            }
        };
        let mut agent = Self {
            ns,
            home: tempfile::tempdir().unwrap(),
            child: None,
        };
        agent.start();
        Some(agent)
    }

    pub fn socket(&self) -> PathBuf {
        self.home.path().join("herd.sock")
    }

    /// `herd --home HOME` (with `HERD_VMM` and `HERD_SOCKET` set for this agent).
    pub fn herd(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herd"));
        cmd.arg("--home").arg(self.home.path());
        cmd.env("HERD_VMM", herd_vmm_bin());
        cmd.env("HERD_SOCKET", self.socket());
        cmd
    }

    /// Starts the agent and waits until it answers.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.path().join("agent.log"))
            .unwrap();
        let mut cmd = self
            .ns
            .command_with_cgroups(env!("CARGO_BIN_EXE_herd").as_ref());
        cmd.arg("--home").arg(self.home.path());
        cmd.args(["agent", "--socket"]).arg(self.socket());
        cmd.arg("--vmm").arg(herd_vmm_bin());
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("start herd agent"));
        self.wait_for("the agent to answer", || {
            self.try_request("GET", "/v1/health", None, b"")
                .is_some_and(|a| a.status == 200)
        });
    }

    /// One request with `Connection: close`; the answer read to its end. Only for answers
    /// of known length (not streams).
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Option<Answer> {
        let mut s = UnixStream::connect(self.socket()).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let ct = content_type
            .map(|c| format!("Content-Type: {c}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: herd\r\nConnection: close\r\n{ct}Content-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).ok()?;
        s.write_all(body).ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).ok()?;
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = raw.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        let content_type = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type: ")
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        Some(Answer {
            status,
            content_type,
            body: body.to_owned(),
        })
    }

    /// A JSON request; the status and the JSON answer (`Null` when there is none).
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let answer = self.request(method, path, Some("application/json"), body.as_bytes());
        let value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        (answer.status, value)
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Answer {
        self.try_request(method, path, content_type, body)
            .unwrap_or_else(|| panic!("{method} {path}: no answer\n{}", self.log()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("agent.log")).unwrap_or_default()
    }

    pub fn instances(&self, service: &str) -> Vec<Value> {
        let (status, list) = self.api("GET", &format!("/v1/instances?service={service}"), None);
        assert_eq!(status, 200, "{list}");
        list.as_array().unwrap().clone()
    }

    /// Running (starting, healthy or unhealthy) instances of `service`.
    pub fn running(&self, service: &str) -> Vec<Value> {
        self.instances(service)
            .into_iter()
            .filter(|i| {
                ["starting", "healthy", "unhealthy"].contains(&i["status"].as_str().unwrap())
            })
            .collect()
    }

    pub fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Builds `http:1`: the `http` example app (built beside this test) with our guest
    /// kernel, for the tests that run only on hardware KVM.
    pub fn http_image(&self) -> String {
        let kernel = herd_tests::guest_kernel::kernel_dir()
            .expect("guest kernel not built: run guest-kernel/build.sh")
            .join("vmlinux");
        let exe = std::env::current_exe().unwrap();
        let http = exe.parent().unwrap().parent().unwrap().join("http");
        let out = (self.herd().args(["build", "--binary"]).arg(&http))
            .args(["--name", "http", "--version", "1", "--kernel"])
            .arg(&kernel)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        "http:1".into()
    }

    /// Builds an image whose kernel is the probe guest with `cmdline`.
    pub fn probe_image(&self, version: &str, cmdline: &str) -> String {
        let probe = herd_tests::probe::pvh_elf();
        // The app is the probe too (never run: the probe is the kernel); it must be executable.
        let app = self.home.path().join("app");
        std::fs::copy(probe, &app).unwrap();
        std::fs::set_permissions(&app, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let out = self
            .herd()
            .args(["build", "--binary"])
            .arg(&app)
            .args(["--name", "probe-app", "--version", version, "--kernel"])
            .arg(probe)
            .arg("--init")
            .arg(probe)
            .args(["--cmdline", cmdline])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("probe-app:{version}")
    }

    pub fn instance_dirs(&self) -> PathBuf {
        self.home.path().join("agent/instances")
    }

    /// Starts `herd ARGS` with its output read line by line (see [`Lines`]).
    pub fn follow(&self, args: &[&str]) -> Lines {
        let mut child = self
            .herd()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines { child, rx }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The instances outlive the agent by design: each is killed by its pid.
        for pid in pids_with_argument(&format!("{}/", self.instance_dirs().display())) {
            kill_pid(pid);
        }
    }
}

/// A running `herd` command whose output lines arrive on a channel; killed when dropped.
pub struct Lines {
    pub child: Child,
    rx: mpsc::Receiver<String>,
}

impl Lines {
    /// The next line, or `None` if the command ended (or `timeout` passed) first.
    pub fn next(&mut self, timeout: Duration) -> Option<String> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Waits for the command to end by itself; its status and the lines not read yet.
    pub fn wait(mut self, timeout: Duration) -> (std::process::ExitStatus, Vec<String>) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the command did not end");
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at EOF, closing the channel.
        let rest = self.rx.iter().collect();
        (status, rest)
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes with an argument containing `needle` (this test's own paths), by pid.
fn pids_with_argument(needle: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

pub fn pid_of(instance: &Value) -> i32 {
    instance["pid"].as_i64().unwrap() as i32
}

/// SIGKILL to one process; false if it was already gone.
pub fn kill_pid(pid: i32) -> bool {
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn ids(instances: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = instances
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

pub fn service(name: &str, image: &str, replicas: u32) -> Value {
    json!({"name": name, "image": image, "replicas": replicas, "stop_timeout_ms": 300})
}

/// A file's bytes (for request bodies).
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Agent {
    /// SIGKILLs the agent (not its instances).
    pub fn kill_agent(&mut self) {
        let mut child = self.child.take().expect("the agent runs");
        // `ip netns exec` execs the agent, so the child's pid is the agent's.
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Stops the agent with SIGTERM and waits for it to exit; returns whether it exited 0.
    pub fn stop_agent(&mut self) -> bool {
        let mut child = self.child.take().expect("the agent runs");
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        child.wait().unwrap().success()
    }

    /// Whether `dev` exists in the namespace.
    pub fn has_link(&self, dev: &str) -> bool {
        self.ns
            .run(&["ip", "link", "show", "dev", dev])
            .status
            .success()
    }

    /// The agent's TAP interfaces in the namespace.
    pub fn taps(&self) -> Vec<String> {
        let out = self.ns.run(&["ip", "-o", "link", "show"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .filter(|n| n.starts_with("hd"))
            .map(str::to_owned)
            .collect()
    }
}
