//! Driving a real `herd agent` from a benchmark: started in a network namespace of its own
//! with a fresh home, spoken to over its Unix socket with plain HTTP/1.1 (no client library,
//! so what is timed is the agent), and killed with everything it started when dropped.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use herd_tests::netns::NetNs;
use serde_json::Value;

/// A running agent; dropping it kills the agent and every herd-vmm under its home.
pub struct Agent {
    pub home: tempfile::TempDir,
    pub child: Child,
    _ns: NetNs,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let needle = format!("{}/agent/instances/", self.home.path().display());
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &needle])
            .status();
    }
}

impl Agent {
    /// Starts `herd agent` from `bin` (the directory holding `herd`), instances running
    /// `vmm`, with `extra` agent options; returns once its API answers.
    pub fn start(bin: &Path, vmm: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let ns = NetNs::create().map_err(anyhow::Error::msg)?;
        let home = tempfile::tempdir()?;
        let log = std::fs::File::create(home.path().join("agent.log"))?;
        let child = ns
            .command_with_cgroups(bin.join("herd").as_os_str())
            .arg("--home")
            .arg(home.path())
            .args(["agent", "--socket"])
            .arg(home.path().join("herd.sock"))
            .arg("--vmm")
            .arg(vmm)
            .args(extra)
            .env("HERD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let agent = Agent {
            home,
            child,
            _ns: ns,
        };
        let socket = agent.socket();
        wait(Duration::from_secs(30), || {
            Ok(api(&socket, "GET", "/v1/health", None).is_ok())
        })?;
        Ok(agent)
    }

    pub fn socket(&self) -> PathBuf {
        self.home.path().join("herd.sock")
    }

    /// The agent's own pid: `ip netns exec` replaces itself with the agent.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Milliseconds since the Unix epoch: the clock of the agent's `started_at_ms`.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One request on a fresh connection; the JSON answer (`Null` if none), or the status line
/// and body as the error.
pub fn api(socket: &Path, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
    let mut s = UnixStream::connect(socket)?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: herd\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").context("no HTTP answer")?;
    if !head.starts_with("HTTP/1.1 2") {
        bail!("{method} {path}: {head} {body}");
    }
    Ok(serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Polls `done` every 2 ms until it is true or `limit` has passed.
pub fn wait(limit: Duration, mut done: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done()? {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Builds the image `probe-app:<version>` into `home`'s store: the probe guest as kernel,
/// init and app, with the probe's command-line `words` (`probe.end=halt`, ...).
pub fn build_probe_image(
    bin: &Path,
    home: &Path,
    version: &str,
    words: &str,
) -> anyhow::Result<String> {
    let probe = herd_tests::probe::pvh_elf();
    let app = home.join("app");
    std::fs::copy(probe, &app)?;
    std::fs::set_permissions(&app, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let out = Command::new(bin.join("herd"))
        .arg("--home")
        .arg(home)
        .args(["build", "--binary"])
        .arg(&app)
        .args(["--name", "probe-app", "--version", version, "--kernel"])
        .arg(probe)
        .arg("--init")
        .arg(probe)
        .args(["--cmdline", &format!("console=ttyS0 {words} v={version}")])
        .output()?;
    if !out.status.success() {
        bail!("herd build: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(format!("probe-app:{version}"))
}

/// Instances of `service` as the API lists them.
pub fn instances(socket: &Path, service: &str) -> anyhow::Result<Vec<Value>> {
    let all = api(
        socket,
        "GET",
        &format!("/v1/instances?service={service}"),
        None,
    )?;
    Ok(all.as_array().context("not a list")?.clone())
}
