//! The namespace fixture: a guest root on the host file system, and `herd-init-testhost`
//! started as its `/init`, PID 1 of fresh PID, mount, UTS and network namespaces.
//!
//! `unshare --pid --fork --kill-child --mount --uts --net --propagation private` runs a shell
//! that bind-mounts the host's `/usr` (read-only) into the root so that `/bin/sh` and friends
//! work there, then `exec chroot ROOT /init`: init keeps PID 1 and mounts `/proc`, `/sys`,
//! `/dev`, ... itself, exactly as in a guest. Its stdout and stderr are files next to the
//! root; its stdin is `/dev/null`. The bind mounts live and die with the private mount
//! namespace; the fixture still checks that none is visible before deleting the directory.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long one guest may run before the test fails.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Top-level host directories the root gets: symlinks copied, directories bind-mounted.
const HOST_DIRS: [&str; 5] = ["usr", "bin", "sbin", "lib", "lib64"];

const SETUP: &str = r#"set -e
root=$1; shift
for dir in "$@"; do mount --bind -o ro "/$dir" "$root/$dir"; done
exec chroot "$root" /init
"#;

/// Records a skipped test like the rest of the workspace does (`$HERD_SKIP_LOG`).
pub fn skip(test: &str, why: &str) {
    let line = format!("HERD-SKIP: {test}: {why}");
    println!("{line}");
    if let Some(path) = std::env::var_os("HERD_SKIP_LOG") {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        writeln!(f, "{line}").unwrap();
    }
}

/// Whether namespace tests can run here (root, `unshare` present); records a skip if not.
pub fn namespaces_available(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let why = if !root {
        "needs root for PID, mount and network namespaces"
    } else if !Path::new("/usr/bin/unshare").exists() {
        "/usr/bin/unshare (util-linux) is missing"
    } else {
        return true;
    };
    skip(test, why);
    false
}

/// `image.json` running `script` with `/bin/sh -c`, `$0` = `app`.
pub fn sh_image(script: &str, args: &[&str], env: &[(&str, &str)], workdir: &str) -> String {
    let env: std::collections::BTreeMap<_, _> = env.iter().copied().collect();
    serde_json::json!({
        "entrypoint": ["/bin/sh", "-c", script, "app"],
        "args": args,
        "env": env,
        "workdir": workdir,
    })
    .to_string()
}

/// A guest root: `/init`, `/herd/image.json`, mount points, the host's `/usr`.
pub struct Guest {
    dir: Option<TempDir>,
    root: PathBuf,
    binds: Vec<String>,
    /// Shell commands the setup runs inside the namespaces before starting init.
    setup: String,
}

impl Guest {
    pub fn new(image_json: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("herd-init-test")
            .tempdir()
            .unwrap();
        let root = dir.path().join("root");
        for d in ["herd", "dev", "proc", "sys", "tmp", "run", "out", "app"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let mut binds = Vec::new();
        for name in HOST_DIRS {
            let host = Path::new("/").join(name);
            if let Ok(target) = fs::read_link(&host) {
                symlink(target, root.join(name)).unwrap();
            } else if host.is_dir() {
                fs::create_dir(root.join(name)).unwrap();
                binds.push(name.to_string());
            }
        }
        let bin = std::env::var_os("HERD_INIT_TESTHOST").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_herd-init-testhost")),
            PathBuf::from,
        );
        fs::copy(&bin, root.join("init")).unwrap();
        let guest = Self {
            dir: Some(dir),
            root,
            binds,
            setup: String::new(),
        };
        guest.write("/herd/image.json", image_json, 0o644);
        guest
    }

    /// Writes a file inside the root with `mode`.
    pub fn write(&self, path: &str, content: &str, mode: u32) {
        let path = self.path(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Makes the FIFO the test host uses as the control port (`/herd-test/control`).
    pub fn control_port(&self) {
        let fifo = self.path("/herd-test/control");
        fs::create_dir_all(fifo.parent().unwrap()).unwrap();
        let status = Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("run mkfifo");
        assert!(status.success(), "mkfifo {}", fifo.display());
    }

    /// Gives the guest's network namespace an `eth0` (one end of a veth pair whose other end,
    /// `peer0`, is up in the same namespace), as a guest's virtio-net interface.
    pub fn with_eth0(&mut self) {
        self.setup
            .push_str("ip link add eth0 type veth peer name peer0\nip link set peer0 up\n");
    }

    /// Adds `/herd/instance.json`.
    pub fn instance(&self, json: &str) {
        self.write("/herd/instance.json", json, 0o644);
    }

    /// Host path of `path` inside the root.
    pub fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Starts init as PID 1 of its namespaces.
    pub fn start(&self) -> Running {
        let base = self.root.parent().unwrap();
        let stdout = fs::File::create(base.join("stdout")).unwrap();
        let stderr = fs::File::create(base.join("stderr")).unwrap();
        let child = Command::new("/usr/bin/unshare")
            .args([
                "--pid",
                "--fork",
                "--kill-child",
                "--mount",
                "--uts",
                "--net",
            ])
            .args([
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-c",
                &SETUP.replace("exec chroot", &format!("{}exec chroot", self.setup)),
                "sh",
            ])
            .arg(&self.root)
            .args(&self.binds)
            // What a kernel gives init, plus PATH for the setup shell and the test host's file.
            .env_clear()
            .env("HOME", "/")
            .env("TERM", "linux")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HERD_INIT_TEST_EXIT_FILE", "/exit-status")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("run /usr/bin/unshare");
        Running {
            child,
            base: base.to_path_buf(),
            root: self.root.clone(),
        }
    }

    /// Runs init to its end.
    pub fn run(&self) -> Outcome {
        self.start().wait()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let base = dir.path().to_string_lossy().into_owned();
        if mounts.lines().any(|l| l.contains(base.as_str())) {
            let kept = dir.keep();
            let msg = format!(
                "{} still has mounts visible here: left in place",
                kept.display()
            );
            if std::thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// A guest whose init is running.
pub struct Running {
    child: Child,
    base: PathBuf,
    root: PathBuf,
}

impl Running {
    /// Host pid of the namespace's PID 1 (unshare's forked child, which became init).
    pub fn init_pid(&self) -> i32 {
        let parent = self.child.id().to_string();
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            for entry in fs::read_dir("/proc").unwrap().flatten() {
                let status = fs::read_to_string(entry.path().join("status")).unwrap_or_default();
                let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:"));
                if ppid.map(str::trim) == Some(parent.as_str()) {
                    return entry.file_name().to_string_lossy().parse().unwrap();
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("unshare {parent} never forked");
    }

    /// Waits until the app has created `path` (inside the root).
    pub fn wait_for_file(&self, path: &str) {
        let path = self.root.join(path.trim_start_matches('/'));
        let deadline = Instant::now() + TIMEOUT;
        while !path.exists() {
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Writes `text` to the control-port FIFO, as herd-vmm would to COM2.
    pub fn send_control(&self, text: &str) {
        let fifo = self.root.join("herd-test/control");
        // Init holds the FIFO open, so opening it for writing does not block.
        let mut port = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        port.write_all(text.as_bytes()).unwrap();
    }

    /// Sends `signal` to init from outside its PID namespace.
    pub fn signal_init(&self, signal: i32) {
        let pid = self.init_pid();
        // SAFETY: kill has no memory preconditions.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {pid}");
    }

    /// Waits for the end (killing everything after [`TIMEOUT`]) and collects what happened.
    pub fn wait(mut self) -> Outcome {
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                self.child.kill().unwrap();
                self.child.wait().unwrap();
                panic!(
                    "init did not end within {TIMEOUT:?}: {}",
                    self.read("stderr")
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let outcome = Outcome {
            status: status.code(),
            exit_file: fs::read_to_string(self.root.join("exit-status")).ok(),
            stdout: self.read("stdout"),
            stderr: self.read("stderr"),
        };
        eprintln!(
            "--- init stderr ---\n{}--- app stdout ---\n{}",
            outcome.stderr, outcome.stdout
        );
        outcome
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.base.join(name)).unwrap_or_default()
    }
}

/// How a guest ended.
#[derive(Debug)]
pub struct Outcome {
    /// Exit code of unshare, which is init's.
    pub status: Option<i32>,
    /// What the test host's `end_vm` wrote.
    pub exit_file: Option<String>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// Asserts the VM would have ended with `status`, through `end_vm`.
    pub fn assert_status(&self, status: u8) {
        assert_eq!(
            self.exit_file.as_deref(),
            Some(format!("{status}\n").as_str()),
            "{self:#?}"
        );
        assert_eq!(self.status, Some(i32::from(status)), "{self:#?}");
    }

    /// The app's stdout lines that start with `key=`, without it.
    pub fn values(&self, key: &str) -> Vec<&str> {
        let prefix = format!("{key}=");
        self.stdout
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect()
    }

    /// The one `key=` value.
    pub fn value(&self, key: &str) -> &str {
        match self.values(key).as_slice() {
            [v] => v,
            other => panic!("expected one {key}= line, got {other:?}: {self:#?}"),
        }
    }

    /// Init's own lines (`herd-init: ...`) on stderr.
    pub fn init_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("herd-init: "))
            .collect()
    }
}
