//! Who may use the real `herd agent`'s API socket, end to end: the socket is given to
//! `--socket-group`, a peer the policy does not allow (here `nobody`, connecting through that
//! group) gets its connection closed with not one byte of answer, each refusal is logged
//! with its uid (a flood of them at most a few lines a second, none lost from the count) and
//! counted in `/metrics`; allowed by `--api-allow-gid` (or `--api-allow-uid`), the same
//! client is served. No KVM and no network are needed: the agent runs with `--bridge none`
//! and no service.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `nobody` / `nogroup`.
const NOBODY: u32 = 65534;

/// Connects `argv[2]` times to the socket `argv[1]`, sends a request on each and reads until
/// the agent closes; prints the bytes received in all, then the first line of the last answer.
const CLIENT: &str = r#"
import socket, sys
total, first = 0, b""
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(20)
    s.connect(sys.argv[1])
    data = b""
    try:
        s.sendall(b"GET /v1/services HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass  # a refused peer may see its write or read reset: it got nothing either way
    s.close()
    total += len(data)
    first = data.split(b"\r\n")[0]
print(total)
print(first.decode(errors="replace"))
"#;

/// A `herd agent` with no bridge and no herd-vmm, in a directory `nobody` can reach.
struct Agent {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Agent {
    fn start(dir: tempfile::TempDir, args: &[&str]) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("agent.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_herd"))
            .arg("--home")
            .arg(dir.path().join("home"))
            .arg("agent")
            .arg("--socket")
            .arg(dir.path().join("run/herd.sock"))
            .args(["--bridge", "none", "--vmm", "/bin/false"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start herd agent");
        let agent = Self {
            dir,
            child: Some(child),
        };
        agent.wait_for("the agent to answer root", || {
            agent.as_root("/v1/health").starts_with("HTTP/1.1 200")
        });
        agent
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/herd.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// `GET path` from this (root) process; the whole answer, or "" if none.
    fn as_root(&self, path: &str) -> String {
        let Ok(mut s) = UnixStream::connect(self.socket()) else {
            return String::new();
        };
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut answer = Vec::new();
        if s.write_all(head.as_bytes()).is_err() || s.read_to_end(&mut answer).is_err() {
            return String::new();
        }
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// `connections` requests as uid and gid `nobody`: the bytes received in all, and the
    /// first line of the last answer.
    fn as_nobody(&self, connections: u32) -> (usize, String) {
        let out = Command::new("/usr/bin/python3")
            .args(["-c", CLIENT])
            .arg(self.socket())
            .arg(connections.to_string())
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "the client failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut lines = stdout.lines();
        let total = lines.next().unwrap().parse().unwrap();
        (total, lines.next().unwrap_or("").to_owned())
    }

    /// The agent's `herd_api_peers_denied_total`.
    fn denied(&self) -> u64 {
        let page = self.as_root("/metrics");
        let line = page
            .lines()
            .find(|l| l.starts_with("herd_api_peers_denied_total "))
            .unwrap_or_else(|| panic!("no denial count in {page}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// The refusal lines of the agent's log.
    fn refusals(&self) -> Vec<String> {
        let log = self.log();
        log.lines()
            .filter(|l| l.contains("refused an API connection"))
            .map(str::to_owned)
            .collect()
    }

    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the agent with SIGTERM; gives back its directory.
    fn stop(mut self) -> tempfile::TempDir {
        let mut child = self.child.take().unwrap();
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(child.wait().unwrap().success(), "{}", self.log());
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A directory (with `run/` for the socket) only root can write but anyone can pass
/// through, so `nobody` reaches the socket and only its mode and the agent decide. (`Command`
/// drops root's supplementary groups when it sets the uid, so `nobody` has only its own.)
fn reachable_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("run")).unwrap();
    for path in [dir.path().to_owned(), dir.path().join("run")] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    dir
}

/// The `suppressed=N` count of a refusal line.
fn suppressed(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("suppressed="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no suppressed count in {line}"))
}

fn can_switch_users(test: &str) -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        herd_tests::vm::skip(test, "needs root to connect as another user");
    }
    root && Path::new("/usr/bin/python3").exists()
}

#[test]
fn denied_api_peers_get_nothing_and_are_logged() {
    if !can_switch_users("denied_api_peers_get_nothing_and_are_logged") {
        return;
    }
    let group = NOBODY.to_string();
    let agent = Agent::start(reachable_dir(), &["--socket-group", &group]);
    let meta = std::fs::metadata(agent.socket()).unwrap();
    assert_eq!(meta.gid(), NOBODY, "the socket belongs to --socket-group");
    assert_eq!(meta.mode() & 0o777, 0o660);

    // nobody can connect (the group may write the socket) but is not allowed.
    let (bytes, first) = agent.as_nobody(1);
    assert_eq!(
        (bytes, first.as_str()),
        (0, ""),
        "a denied peer got an answer"
    );
    agent.wait_for("the refusal to be logged", || !agent.refusals().is_empty());
    let line = &agent.refusals()[0];
    assert!(
        line.contains(&format!("uid={NOBODY}")) && line.contains(&format!("gid={NOBODY}")),
        "{line}"
    );
    assert!(line.contains("pid="), "{line}");
    assert_eq!(agent.denied(), 1);
    // Root still is.
    assert!(agent.as_root("/v1/services").starts_with("HTTP/1.1 200"));

    // A flood is logged a few lines a second, and every refusal is counted: in the metrics,
    // and in the log as a line or in the `suppressed` count of a later one.
    let (bytes, _) = agent.as_nobody(40);
    assert_eq!(bytes, 0);
    std::thread::sleep(Duration::from_millis(1100));
    agent.as_nobody(1);
    agent.wait_for("the last refusal to be logged", || {
        agent
            .refusals()
            .iter()
            .map(|l| 1 + suppressed(l))
            .sum::<u64>()
            == 42
    });
    let lines = agent.refusals();
    assert!(lines.len() < 30, "{} lines for 42 refusals", lines.len());
    assert_eq!(agent.denied(), 42);

    // Allowed by group, the same client is served.
    let dir = agent.stop();
    let agent = Agent::start(dir, &["--socket-group", &group, "--api-allow-gid", &group]);
    let (bytes, first) = agent.as_nobody(1);
    assert!(bytes > 0, "{}", agent.log());
    assert_eq!(first, "HTTP/1.1 200 OK");
    // And by uid.
    let dir = agent.stop();
    let agent = Agent::start(dir, &["--socket-group", &group, "--api-allow-uid", &group]);
    assert_eq!(agent.as_nobody(1).1, "HTTP/1.1 200 OK");
    assert_eq!(agent.denied(), 0);
    agent.stop();
}

#[test]
fn without_socket_group_the_socket_keeps_the_agents_group_and_others_cannot_connect() {
    if !can_switch_users(
        "without_socket_group_the_socket_keeps_the_agents_group_and_others_cannot_connect",
    ) {
        return;
    }
    // Allowed by the policy, but the file mode keeps nobody out: both locks count.
    let nobody = NOBODY.to_string();
    let agent = Agent::start(reachable_dir(), &["--api-allow-uid", &nobody]);
    let meta = std::fs::metadata(agent.socket()).unwrap();
    assert_eq!(meta.gid(), rustix::process::getegid().as_raw());
    let out = Command::new("/usr/bin/python3")
        .args(["-c", CLIENT])
        .arg(agent.socket())
        .arg("1")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "connect should be refused by the mode"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PermissionError"),
        "{out:?}"
    );
    agent.stop();
}
