//! The size-capped console log (`--console-log PATH --console-log-max-bytes N`): a writer that
//! keeps at most about `2N` bytes of guest console output on disk by itself.
//!
//! herd-vmm processes outlive the agent that started them, so nothing else can be trusted to
//! rotate their logs: when a write would take `PATH` past `N` bytes, [`RotatingFile`] renames
//! it to `PATH.1` (replacing the older one) and carries on in a fresh `PATH`. Reading
//! `PATH.1` then `PATH` gives the latest output in order. The UART hands us one byte per
//! write, so the size is a running count, never a `stat`.
//!
//! The guest decides how much it writes, so a failing rotation (the directory removed, the
//! disk full) must not stop it: output is dropped, one warning says so, and the rotation is
//! retried at most once every [`RETRY_INTERVAL`].

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::logging::RateLimit;

/// Smallest cap we accept: below a page, rotation would cost more than the output it keeps.
pub const MIN_MAX_BYTES: u64 = 4096;
/// How long output is dropped after a failed rotation before the next attempt.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Errors opening the console log.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleLogError {
    #[error("cannot create console log {0}")]
    Create(PathBuf, #[source] io::Error),
    #[error("cannot remove the previous run's rotated console log {0}")]
    RemoveRotated(PathBuf, #[source] io::Error),
}

impl ConsoleLogError {
    /// The underlying I/O error (for the exit status).
    pub fn io(&self) -> &io::Error {
        match self {
            Self::Create(_, e) | Self::RemoveRotated(_, e) => e,
        }
    }
}

/// `PATH.1`: where a full `PATH` goes.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// A log file that rotates to `PATH.1` instead of growing past `max_bytes`.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    rotated: PathBuf,
    max_bytes: u64,
    /// The current `PATH`; `None` while output is dropped after a failed rotation.
    file: Option<File>,
    /// Bytes in the current `PATH`.
    written: u64,
    /// While output is dropped: when to try rotating again.
    retry_at: Option<Instant>,
    retry_interval: Duration,
    /// Bytes dropped since the last failed rotation, reported when writing works again.
    dropped: u64,
    failure_log: RateLimit,
}

impl RotatingFile {
    /// Creates (or truncates) `path` and removes a `path.1` left by an earlier run, so both
    /// files only ever hold this VM's output. `max_bytes` is at least 1 (the config checks
    /// [`MIN_MAX_BYTES`]).
    pub fn create(path: &Path, max_bytes: u64) -> Result<Self, ConsoleLogError> {
        let rotated = rotated_path(path);
        // Before creating `path`, so that failing here leaves no log behind.
        match fs::remove_file(&rotated) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ConsoleLogError::RemoveRotated(rotated, e)),
        }
        let file = File::create(path).map_err(|e| ConsoleLogError::Create(path.to_owned(), e))?;
        Ok(Self {
            path: path.to_owned(),
            rotated,
            max_bytes: max_bytes.max(1),
            file: Some(file),
            written: 0,
            retry_at: None,
            retry_interval: RETRY_INTERVAL,
            dropped: 0,
            // An outage costs two lines, its start and its end; it lasts a retry interval
            // at least, so this only bites if that interval is made tiny.
            failure_log: RateLimit::new(2),
        })
    }

    /// Moves the full `PATH` to `PATH.1` and opens a fresh `PATH`. A missing `PATH` (removed
    /// by someone, or already moved by an attempt that then failed to create the new one) is
    /// nothing to move.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        match fs::rename(&self.path, &self.rotated) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.file = Some(File::create(&self.path)?);
        self.written = 0;
        Ok(())
    }

    /// Rotates if the retry interval allows; whether there is a fresh file to write to.
    fn try_rotate(&mut self) -> bool {
        if let Some(at) = self.retry_at
            && Instant::now() < at
        {
            return false;
        }
        match self.rotate() {
            Ok(()) => {
                if self.retry_at.take().is_some() && self.failure_log.allow() {
                    tracing::info!(
                        path = %self.path.display(),
                        dropped_bytes = self.dropped,
                        "console log writable again"
                    );
                }
                self.dropped = 0;
                true
            }
            Err(e) => {
                // Log when writing stops, not at every retry: one line per outage.
                if self.retry_at.is_none() && self.failure_log.allow() {
                    tracing::warn!(
                        path = %self.path.display(),
                        "cannot rotate the console log, dropping console output: {e}"
                    );
                }
                self.retry_at = Some(Instant::now() + self.retry_interval);
                false
            }
        }
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let len = buf.len() as u64;
        let full = self.written > 0 && self.written + len > self.max_bytes;
        if (full || self.file.is_none()) && !self.try_rotate() {
            self.dropped += len;
            return Ok(buf.len());
        }
        // A write larger than the cap goes out in cap-sized pieces (`write_all` loops).
        let room = usize::try_from(self.max_bytes - self.written).unwrap_or(usize::MAX);
        match self.file.as_mut() {
            Some(file) => {
                let n = file.write(&buf[..buf.len().min(room)])?;
                self.written += n as u64;
                Ok(n)
            }
            None => {
                self.dropped += len;
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), Write::flush)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn write_bytewise(log: &mut RotatingFile, bytes: &[u8]) {
        // As the UART does: one byte per write_all, then a flush.
        for b in bytes {
            log.write_all(&[*b]).unwrap();
            log.flush().unwrap();
        }
    }

    fn read(path: &Path) -> Option<String> {
        fs::read_to_string(path).ok()
    }

    #[test]
    fn output_stays_in_path_up_to_the_cap_then_moves_to_path_1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut log = RotatingFile::create(&path, 10).unwrap();
        write_bytewise(&mut log, b"0123456789");
        assert_eq!(read(&path).as_deref(), Some("0123456789"));
        assert_eq!(
            read(&rotated_path(&path)),
            None,
            "no rotation at exactly the cap"
        );
        write_bytewise(&mut log, b"a");
        assert_eq!(read(&rotated_path(&path)).as_deref(), Some("0123456789"));
        assert_eq!(read(&path).as_deref(), Some("a"));
    }

    #[test]
    fn each_rotation_replaces_the_older_path_1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut log = RotatingFile::create(&path, 4).unwrap();
        write_bytewise(&mut log, b"aaaabbbbcccc");
        write_bytewise(&mut log, b"dd");
        assert_eq!(read(&rotated_path(&path)).as_deref(), Some("cccc"));
        assert_eq!(read(&path).as_deref(), Some("dd"));
    }

    #[test]
    fn a_write_larger_than_the_cap_is_split_and_keeps_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut log = RotatingFile::create(&path, 4).unwrap();
        log.write_all(b"abcdefghij").unwrap();
        assert_eq!(read(&rotated_path(&path)).as_deref(), Some("efgh"));
        assert_eq!(read(&path).as_deref(), Some("ij"));
    }

    #[test]
    fn an_earlier_runs_log_and_path_1_are_discarded_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        fs::write(&path, "old run, long enough to count against the cap").unwrap();
        fs::write(rotated_path(&path), "older run").unwrap();
        let mut log = RotatingFile::create(&path, 8).unwrap();
        assert_eq!(read(&rotated_path(&path)), None);
        write_bytewise(&mut log, b"new run");
        assert_eq!(read(&path).as_deref(), Some("new run"), "count starts at 0");
    }

    #[test]
    fn a_path_1_that_cannot_be_removed_is_an_error_naming_it_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        fs::create_dir(rotated_path(&path)).unwrap();
        fs::write(rotated_path(&path).join("keep"), "x").unwrap();
        let err = RotatingFile::create(&path, 8).unwrap_err();
        assert!(matches!(err, ConsoleLogError::RemoveRotated(..)), "{err:?}");
        assert!(err.to_string().contains("console.log.1"), "{err}");
        assert!(!path.exists(), "a failed start leaves no log");
    }

    /// A `tracing` writer that keeps what was logged.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn logged_while(f: impl FnOnce()) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_failed_rotation_drops_output_and_warns_once_then_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("vm");
        fs::create_dir(&sub).unwrap();
        let path = sub.join("console.log");
        let mut log = RotatingFile::create(&path, 4).unwrap();
        log.retry_interval = Duration::ZERO; // retry at every write, to show it stays quiet
        let logged = logged_while(|| {
            write_bytewise(&mut log, b"full");
            fs::remove_dir_all(&sub).unwrap();
            write_bytewise(&mut log, &[b'x'; 100]);
        });
        assert_eq!(logged.matches("cannot rotate").count(), 1, "{logged}");
        assert_eq!(log.dropped, 100);
        fs::create_dir(&sub).unwrap();
        let logged = logged_while(|| write_bytewise(&mut log, b"back"));
        assert!(logged.contains("writable again"), "{logged}");
        assert!(logged.contains("dropped_bytes=100"), "{logged}");
        assert_eq!(read(&path).as_deref(), Some("back"));
    }

    #[test]
    fn after_a_failed_rotation_the_next_attempt_waits_for_the_retry_interval() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("vm");
        fs::create_dir(&sub).unwrap();
        let path = sub.join("console.log");
        let mut log = RotatingFile::create(&path, 4).unwrap();
        log.retry_interval = Duration::from_secs(3600);
        write_bytewise(&mut log, b"full");
        fs::remove_dir_all(&sub).unwrap();
        write_bytewise(&mut log, b"lost");
        fs::create_dir(&sub).unwrap();
        write_bytewise(&mut log, b"also lost");
        assert_eq!(read(&path), None, "no rotation attempt before the interval");
        log.retry_at = Some(Instant::now());
        write_bytewise(&mut log, b"kept");
        assert_eq!(read(&path).as_deref(), Some("kept"));
    }
}
