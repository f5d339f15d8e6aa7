//! [`RealOs`]: signals, `posix_spawn`, `waitpid`, `kill`, files and the control port, as
//! libc calls.
//!
//! Signals are taken synchronously: [`Signal`]s are blocked and read from a `signalfd`, which
//! `poll` watches together with the control port, so init needs no handlers and no threads.
//! The kernel queues a blocked signal even for a PID 1 with default dispositions (it only
//! discards unblocked ones), so nothing sent during setup is lost.

use std::ffi::c_int;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::ptr;

use herd_proto::Launch;

use super::{CStringArray, check, cstring};
use crate::host::{Event, Os, Pid, Signal};

/// Size of `struct signalfd_siginfo`, what one read of a signalfd returns.
const SIGINFO_SIZE: usize = 128;

/// The real process calls.
pub struct RealOs {
    /// SIGTERM, SIGINT, SIGCHLD: blocked in init, read from `signals`.
    handled: libc::sigset_t,
    /// The signalfd for `handled`, once [`Os::block_signals`] ran.
    signals: Option<File>,
    /// The control port, once opened and until it ends.
    control: Option<File>,
}

impl Default for RealOs {
    fn default() -> Self {
        Self::new()
    }
}

impl RealOs {
    pub fn new() -> Self {
        Self {
            handled: sigset(&[libc::SIGTERM, libc::SIGINT, libc::SIGCHLD]),
            signals: None,
            control: None,
        }
    }
}

/// A signal set holding `signals`.
fn sigset(signals: &[c_int]) -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: initialises the set behind a valid pointer; cannot fail for a valid pointer.
    unsafe { libc::sigemptyset(set.as_mut_ptr()) };
    for &signal in signals {
        // SAFETY: the set was initialised above; the signal numbers are valid constants.
        unsafe { libc::sigaddset(set.as_mut_ptr(), signal) };
    }
    // SAFETY: sigemptyset initialised the set.
    unsafe { set.assume_init() }
}

fn raw_signal(signal: Signal) -> c_int {
    match signal {
        Signal::Term => libc::SIGTERM,
        Signal::Int => libc::SIGINT,
        Signal::Child => libc::SIGCHLD,
    }
}

impl Os for RealOs {
    fn block_signals(&mut self) -> io::Result<()> {
        // SAFETY: `handled` is an initialised set; the old mask is not wanted (null).
        check(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &self.handled, ptr::null_mut()) })?;
        let flags = libc::SFD_CLOEXEC | libc::SFD_NONBLOCK;
        // SAFETY: `handled` is an initialised set; -1 asks for a new descriptor.
        let fd = check(unsafe { libc::signalfd(-1, &self.handled, flags) })?;
        // SAFETY: `fd` was just created and is owned by nothing else.
        self.signals = Some(File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
        Ok(())
    }

    fn read_file(&mut self, path: &str) -> io::Result<Option<String>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn replace_file(&mut self, path: &str, text: &str) -> io::Result<()> {
        let path = Path::new(path);
        if let Some(dir) = path.parent() {
            DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
        }
        // A fixed temporary name: only init writes these files, one at a time.
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    fn exists(&mut self, path: &str) -> bool {
        std::path::Path::new(path).exists()
    }

    fn chdir(&mut self, dir: &str) -> io::Result<()> {
        std::env::set_current_dir(dir)
    }

    fn spawn(&mut self, launch: &Launch) -> io::Result<Pid> {
        let path = cstring(launch.argv[0].as_str())?;
        let argv = CStringArray::new(launch.argv.iter().map(String::as_str))?;
        let envp = CStringArray::new(launch.env.iter().map(|(k, v)| format!("{k}={v}")))?;
        let mut attr = MaybeUninit::<libc::posix_spawnattr_t>::uninit();
        // SAFETY: initialises the attribute object behind a valid pointer.
        let err = unsafe { libc::posix_spawnattr_init(attr.as_mut_ptr()) };
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
        let attr = attr.as_mut_ptr();
        let result = configure(attr).and_then(|()| {
            let mut pid = 0;
            // SAFETY: path, argv and envp are NUL-terminated strings in NULL-terminated arrays
            // that outlive the call; attr is initialised; null file actions mean "inherit".
            let err = unsafe {
                libc::posix_spawn(
                    &mut pid,
                    path.as_ptr(),
                    ptr::null(),
                    attr,
                    argv.as_ptr(),
                    envp.as_ptr(),
                )
            };
            if err == 0 {
                Ok(pid)
            } else {
                Err(io::Error::from_raw_os_error(err))
            }
        });
        // SAFETY: attr was initialised by posix_spawnattr_init and is not used afterwards.
        unsafe { libc::posix_spawnattr_destroy(attr) };
        result
    }

    fn open_control(&mut self, path: &str) -> io::Result<()> {
        // Read-write: a FIFO standing in for the port (tests) then never reports end of file.
        let port = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(path)?;
        self.control = Some(port);
        Ok(())
    }

    fn wait_event(&mut self, buf: &mut [u8]) -> io::Result<Event> {
        let signals = self
            .signals
            .as_mut()
            .ok_or_else(|| io::Error::other("signals not blocked"))?;
        loop {
            if let Some(signal) = read_signal(signals)? {
                return Ok(Event::Signal(signal));
            }
            if let Some(port) = &mut self.control {
                match port.read(buf) {
                    Ok(n) if n > 0 => return Ok(Event::Control(n)),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) => {}
                    Ok(_) | Err(_) => {
                        self.control = None;
                        return Ok(Event::ControlClosed);
                    }
                }
            }
            let port = self.control.as_ref().map_or(-1, AsRawFd::as_raw_fd);
            poll_readable(signals.as_raw_fd(), port)?;
        }
    }

    fn reap(&mut self) -> io::Result<Option<(Pid, i32)>> {
        loop {
            let mut raw = 0;
            // SAFETY: `raw` is a valid place for the status.
            let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
            return match pid {
                0 => Ok(None),
                -1 => match io::Error::last_os_error() {
                    e if e.raw_os_error() == Some(libc::ECHILD) => Ok(None),
                    e if e.kind() == io::ErrorKind::Interrupted => continue,
                    e => Err(e),
                },
                pid => Ok(Some((pid, raw))),
            };
        }
    }

    fn kill(&mut self, pid: Pid, signal: Signal) -> io::Result<()> {
        // SAFETY: kill has no memory preconditions.
        match check(unsafe { libc::kill(pid, raw_signal(signal)) }) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            result => result.map(drop),
        }
    }
}

/// Reads one pending signal from the signalfd, if any.
fn read_signal(signals: &mut File) -> io::Result<Option<Signal>> {
    let mut info = [0u8; SIGINFO_SIZE];
    match signals.read(&mut info) {
        Ok(SIGINFO_SIZE) => {}
        Ok(n) => {
            return Err(io::Error::other(format!(
                "short signalfd read of {n} bytes"
            )));
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    }
    // `ssi_signo`, the first field, a u32 in native byte order.
    let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]) as c_int;
    match signo {
        libc::SIGTERM => Ok(Some(Signal::Term)),
        libc::SIGINT => Ok(Some(Signal::Int)),
        libc::SIGCHLD => Ok(Some(Signal::Child)),
        other => Err(io::Error::other(format!("unexpected signal {other}"))),
    }
}

/// Sleeps until `signals` or `port` (ignored when negative) is readable or hung up.
fn poll_readable(signals: c_int, port: c_int) -> io::Result<()> {
    let watch = |fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let mut fds = [watch(signals), watch(port)];
    // SAFETY: `fds` is a valid array of two pollfd for the duration of the call; poll skips
    // negative descriptors.
    match check(unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) }) {
        Err(e) if e.kind() != io::ErrorKind::Interrupted => Err(e),
        _ => Ok(()),
    }
}

/// The app starts with an empty signal mask and every signal at its default disposition.
/// Init blocks three signals (the mask is inherited) and installs no handlers (they would be
/// reset by `exec` anyway); the one disposition it changes that survives `exec` is SIGPIPE,
/// which Rust's runtime sets to "ignore" before `main`. Naming only that signal spares ~60
/// `sigaction` calls in the child, which `posix_spawn`'s caller waits for.
fn configure(attr: *mut libc::posix_spawnattr_t) -> io::Result<()> {
    let empty = sigset(&[]);
    let ignored = sigset(&[libc::SIGPIPE]);
    let flags = (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short;
    let errors = [
        // SAFETY: attr is initialised; the set is initialised and copied in.
        unsafe { libc::posix_spawnattr_setsigmask(attr, &empty) },
        // SAFETY: as above.
        unsafe { libc::posix_spawnattr_setsigdefault(attr, &ignored) },
        // SAFETY: as above.
        unsafe { libc::posix_spawnattr_setflags(attr, flags) },
    ];
    match errors.into_iter().find(|&e| e != 0) {
        Some(err) => Err(io::Error::from_raw_os_error(err)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn replace_file_creates_the_directory_and_swaps_the_content_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/herd/identity.json");
        let path_str = path.to_str().unwrap();
        let mut os = RealOs::new();
        os.replace_file(path_str, "first\n").unwrap();
        // A reader holding the old file keeps the old content: the new one is a new inode.
        let old = File::open(&path).unwrap();
        os.replace_file(path_str, "second\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second\n");
        assert_eq!(io::read_to_string(old).unwrap(), "first\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777 & !0o022, 0o644 & !0o022);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["identity.json"], "no temporary file left behind");
    }
}
