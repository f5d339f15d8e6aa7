//! `TestVm`: boots a guest through the real `herd-vmm` binary and collects what it printed, its
//! exit status and the probe guest's report, so end-to-end tests read like the behaviour they
//! check.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `herd-vmm` binary under test: `$HERD_VMM_BIN`, or the one cargo built next to this
/// test binary (`target/<profile>/herd-vmm`).
pub fn herd_vmm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HERD_VMM_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("herd-vmm");
    assert!(
        bin.exists(),
        "{} missing: build it first (cargo build -p herd-vmm)",
        bin.display()
    );
    bin
}

/// Records that `test` was skipped: printed, and appended to `$HERD_SKIP_LOG` if set, which
/// `.ci/run` checks so that a host with KVM never passes CI by skipping.
pub fn skip(test: &str, why: &str) {
    let line = format!("HERD-SKIP: {test}: {why}");
    println!("{line}");
    if let Some(path) = std::env::var_os("HERD_SKIP_LOG") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open skip log");
        writeln!(f, "{line}").expect("write skip log");
    }
}

/// Whether KVM tests can run here; records a skip when not.
pub fn kvm_available(test: &str) -> bool {
    let ok = Path::new("/dev/kvm").exists();
    if !ok {
        skip(test, "/dev/kvm is missing");
    }
    ok
}

/// Whether this host's KVM is PVM (guest kernel code emulated, no Linux user space).
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// A finished VM: status and output.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    /// The exit code (panics if killed by a signal).
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("herd-vmm killed by a signal: {self:#?}"))
    }

    /// The probe's report lines (`probe: ` prefix removed).
    pub fn probe_lines(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter_map(|l| l.strip_prefix("probe: "))
            .collect()
    }

    /// The value of `probe: key=value`.
    pub fn probe_value(&self, key: &str) -> Option<&str> {
        let prefix = format!("{key}=");
        self.probe_lines()
            .into_iter()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
    }

    /// The e820 entries the probe saw, as (start, end, type).
    pub fn probe_e820(&self) -> Vec<(u64, u64, u32)> {
        let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex");
        self.probe_lines()
            .into_iter()
            .filter_map(|l| l.strip_prefix("e820 "))
            .map(|l| {
                let f: Vec<&str> = l
                    .split(' ')
                    .map(|kv| kv.split('=').nth(1).expect("k=v"))
                    .collect();
                (hex(f[0]), hex(f[1]), f[2].parse().expect("type"))
            })
            .collect()
    }
}

/// A guest boot to run through herd-vmm.
#[derive(Debug, Clone)]
pub struct TestVm {
    wrapper: Vec<OsString>,
    args: Vec<OsString>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
}

impl TestVm {
    /// Boots `kernel` with no other flags.
    pub fn kernel(kernel: &Path) -> Self {
        Self {
            wrapper: Vec::new(),
            args: vec!["--kernel".into(), kernel.into()],
            stdin: None,
            timeout: Duration::from_secs(30),
        }
    }

    /// Boots the probe guest's PVH ELF.
    pub fn probe_pvh() -> Self {
        Self::kernel(crate::probe::pvh_elf())
    }

    /// Boots the probe guest's bzImage.
    pub fn probe_bzimage() -> Self {
        Self::kernel(crate::probe::bzimage())
    }

    /// herd-vmm with exactly these arguments.
    pub fn raw(args: &[&str]) -> Self {
        Self {
            wrapper: Vec::new(),
            args: args.iter().map(OsString::from).collect(),
            stdin: None,
            timeout: Duration::from_secs(30),
        }
    }

    /// Adds flags.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Runs herd-vmm through `wrapper` (e.g. `ip netns exec NS`), which must exec it.
    pub fn within<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, wrapper: I) -> Self {
        self.wrapper = wrapper.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the kernel command line.
    pub fn cmdline(self, cmdline: &str) -> Self {
        self.args(["--cmdline", cmdline])
    }

    /// Feeds `bytes` to the guest console.
    pub fn stdin(mut self, bytes: &[u8]) -> Self {
        self.stdin = Some(bytes.to_vec());
        self
    }

    /// Fails the test if the VM runs longer than this.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Starts herd-vmm without waiting.
    pub fn spawn(&self) -> Running {
        let mut cmd = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(herd_vmm_bin());
                cmd
            }
            None => Command::new(herd_vmm_bin()),
        };
        cmd.args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().expect("spawn herd-vmm");
        if let Some(bytes) = &self.stdin {
            let mut pipe = child.stdin.take().expect("stdin piped");
            pipe.write_all(bytes).expect("write guest input");
        }
        Running::new(child, self.timeout)
    }

    /// Runs to completion.
    pub fn run(&self) -> Finished {
        self.spawn().wait()
    }
}

/// A running herd-vmm, with its stdout lines streamed as they come.
#[derive(Debug)]
pub struct Running {
    child: Child,
    started: Instant,
    timeout: Duration,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Running {
    fn new(mut child: Child, timeout: Duration) -> Self {
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout piped");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().expect("stderr piped");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Self {
            child,
            started: Instant::now(),
            timeout,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line containing `needle`.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        loop {
            let left = self.timeout.saturating_sub(self.started.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "no line with {needle:?} within {:?}; saw {:#?}",
                        self.timeout, self.seen
                    );
                }
            }
        }
    }

    /// Sends `signal` to herd-vmm.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -s {signal} failed");
    }

    /// Waits for exit (killing it and failing the test after the timeout).
    pub fn wait(mut self) -> Finished {
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let mut stdout = self.seen.join("\n");
                for line in self.lines.iter() {
                    if !stdout.is_empty() {
                        stdout.push('\n');
                    }
                    stdout.push_str(&line);
                }
                let stderr = self.stderr.join().unwrap_or_default();
                return Finished {
                    status,
                    stdout,
                    stderr,
                    elapsed: self.started.elapsed(),
                };
            }
            if self.started.elapsed() > self.timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "herd-vmm still running after {:?}; stdout so far {:#?}",
                    self.timeout, self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}
