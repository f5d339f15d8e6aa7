//! An instance's console output as `GET /v1/instances/{id}/logs` streams it: the retained
//! output (`console.log.1` then `console.log`), optionally only its last lines, then, when
//! following, what herd-vmm appends, until the instance has ended and everything is read.
//!
//! herd-vmm rotates the log itself (it closes `console.log`, renames it to `console.log.1`
//! and starts a fresh `console.log`). The reader keeps the file it reads open, so a rename
//! does not lose its place: when `console.log` turns out to be another file, the open one is
//! read to its end (it is complete: herd-vmm closed it before renaming) and the new one is
//! read from its start. A log that shrinks in place is read again from its start. Output
//! rotated away twice between two polls is lost, as it is on disk.
//!
//! Both files are opened only beneath the instances directory (`crate::confine`): a symlink
//! in an instance's directory leading out of it is refused, naming the file.

use std::fs::File;
use std::future::Future;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use tokio::sync::mpsc;

use crate::confine::{Beneath, ConfineError};

/// How often a follower looks for new output.
pub const POLL: Duration = Duration::from_millis(150);
/// Most bytes read (and sent) at once.
const CHUNK: usize = 64 * 1024;

/// Why a console log cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Refused or failed opening: names the file and why (a symlink leading out, say).
    #[error(transparent)]
    Open(#[from] ConfineError),
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] io::Error),
}

/// The two files of an instance's console log, opened only beneath the instances directory:
/// the id is checked by shape where it arrives, and a symlink planted in an instance's
/// directory (or as the directory) still cannot lead the reader elsewhere.
#[derive(Clone, Debug)]
pub struct LogFiles {
    instances: Arc<Beneath>,
    /// `<id>/console.log`, relative to the instances directory.
    pub current: PathBuf,
    /// `<id>/console.log.1`.
    pub rotated: PathBuf,
}

impl LogFiles {
    /// The log files of instance `id` in the directory `instances`.
    pub fn of(instances: &Path, id: &str) -> Result<Self, LogError> {
        let id = Path::new(id);
        Ok(Self {
            instances: Arc::new(Beneath::open(instances)?),
            current: id.join("console.log"),
            rotated: id.join("console.log.1"),
        })
    }

    fn read_error(&self, rel: &Path) -> impl Fn(io::Error) -> LogError {
        let path = self.instances.path().join(rel);
        move |e| LogError::Read(path.clone(), e)
    }

    fn open_if_there(&self, rel: &Path) -> Result<Option<File>, LogError> {
        match self.instances.open_file(rel) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Which file an open file is: (device, inode).
fn identity(file: &File) -> io::Result<(u64, u64)> {
    let meta = file.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

/// Reads a console log in order across rotations.
#[derive(Debug)]
pub struct LogCursor {
    files: LogFiles,
    /// The rotated file, read first, once.
    older: Option<File>,
    /// The file `current` named when it was opened.
    file: Option<File>,
}

impl LogCursor {
    /// A cursor at the start of the retained output.
    pub fn open(files: LogFiles) -> Result<Self, LogError> {
        // `console.log` first: if a rotation happens before `console.log.1` is opened, that
        // is the same file, read once through `file`.
        let file = files.open_if_there(&files.current)?;
        let same = |a: &File, b: &File| -> Result<bool, LogError> {
            let err = files.read_error(&files.rotated);
            Ok(identity(a).map_err(&err)? == identity(b).map_err(&err)?)
        };
        let older = match (files.open_if_there(&files.rotated)?, &file) {
            (Some(old), Some(cur)) if same(&old, cur)? => None,
            (old, _) => old,
        };
        Ok(Self { files, older, file })
    }

    /// The next output, up to 64 KiB; `None` when there is none right now.
    pub fn read_chunk(&mut self) -> Result<Option<Vec<u8>>, LogError> {
        if let Some(old) = &mut self.older {
            let read = read_some(old).map_err(self.files.read_error(&self.files.rotated))?;
            if let Some(chunk) = read {
                return Ok(Some(chunk));
            }
            self.older = None;
        }
        let err = self.files.read_error(&self.files.current);
        // At most twice: the open file, then (after a rotation) the new one.
        for _ in 0..2 {
            let Some(file) = &mut self.file else {
                self.file = self.files.open_if_there(&self.files.current)?;
                return match &mut self.file {
                    Some(f) => read_some(f).map_err(err),
                    None => Ok(None),
                };
            };
            if file.metadata().map_err(&err)?.len() < file.stream_position().map_err(&err)? {
                file.seek(SeekFrom::Start(0)).map_err(&err)?;
            }
            if let Some(chunk) = read_some(file).map_err(&err)? {
                return Ok(Some(chunk));
            }
            if !self.rotated_away()? {
                return Ok(None);
            }
            // Complete now (herd-vmm closed it before the rename): finish it, then move on.
            let rest = self
                .file
                .as_mut()
                .map(read_some)
                .transpose()
                .map_err(&err)?;
            if let Some(chunk) = rest.flatten() {
                return Ok(Some(chunk));
            }
            self.file = None;
        }
        Ok(None)
    }

    /// Whether `console.log` is no longer the open file.
    fn rotated_away(&self) -> Result<bool, LogError> {
        let Some(file) = &self.file else {
            return Ok(false);
        };
        let now = match self.files.instances.identity(&self.files.current) {
            Ok(id) => id,
            Err(e) if e.is_not_found() => return Ok(true),
            Err(e) => return Err(e.into()),
        };
        let open = identity(file).map_err(self.files.read_error(&self.files.current))?;
        Ok(now != open)
    }
}

fn read_some(file: &mut File) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0; CHUNK];
    let n = file.read(&mut buf)?;
    buf.truncate(n);
    Ok((n > 0).then_some(buf))
}

/// Where the last `n` lines of `text` start, as `tail -n` counts them: a line ends at a
/// newline, and a last line without one counts too.
pub fn tail_start(text: &[u8], n: usize) -> usize {
    if n == 0 {
        return text.len();
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    body.iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(n - 1)
        .map_or(0, |(i, _)| i + 1)
}

/// The last `n` lines of everything pushed, keeping no more than those in memory.
#[derive(Debug)]
pub struct Tail {
    n: usize,
    kept: Vec<u8>,
}

impl Tail {
    pub fn new(n: usize) -> Self {
        Self {
            n,
            kept: Vec::new(),
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.kept.extend_from_slice(chunk);
        let start = tail_start(&self.kept, self.n);
        self.kept.drain(..start);
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.kept
    }
}

/// What to stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogsQuery {
    /// Only the last this many lines of the retained output.
    pub tail: Option<usize>,
    /// Keep streaming new output until the instance has ended.
    pub follow: bool,
}

/// Streams the log to `out`: the retained output (or its tail), then, with `until`, new
/// output every [`POLL`] until `until` completes (the instance ended) and the rest is read.
/// Returns when done, when `out` is closed (the client left) or reading fails.
pub async fn stream(
    mut cursor: LogCursor,
    tail: Option<usize>,
    until: Option<impl Future<Output = ()>>,
    out: mpsc::Sender<Bytes>,
) {
    let result = async {
        match tail {
            Some(n) => {
                let mut t = Tail::new(n);
                while let Some(chunk) = cursor.read_chunk()? {
                    t.push(&chunk);
                }
                send(&out, t.into_bytes()).await?;
            }
            None => drain(&mut cursor, &out).await?,
        }
        let Some(until) = until else {
            return Ok(());
        };
        tokio::pin!(until);
        loop {
            let ended = tokio::select! {
                () = &mut until => true,
                () = tokio::time::sleep(POLL) => false,
            };
            drain(&mut cursor, &out).await?;
            if ended {
                return Ok(());
            }
        }
    };
    if let Err(Failed::Read(e)) = result.await {
        tracing::warn!(error = %super::supervisor::chain(&e), "cannot read a console log");
    }
}

/// Why a stream stopped early.
enum Failed {
    Read(LogError),
    ClientGone,
}

impl From<LogError> for Failed {
    fn from(e: LogError) -> Self {
        Self::Read(e)
    }
}

async fn send(out: &mpsc::Sender<Bytes>, bytes: Vec<u8>) -> Result<(), Failed> {
    if bytes.is_empty() {
        return Ok(());
    }
    out.send(Bytes::from(bytes))
        .await
        .map_err(|_| Failed::ClientGone)
}

/// Sends everything there is to read now.
async fn drain(cursor: &mut LogCursor, out: &mpsc::Sender<Bytes>) -> Result<(), Failed> {
    while let Some(chunk) = cursor.read_chunk()? {
        send(out, chunk).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn read_all(cursor: &mut LogCursor) -> String {
        let mut out = Vec::new();
        while let Some(chunk) = cursor.read_chunk().unwrap() {
            out.extend(chunk);
        }
        String::from_utf8(out).unwrap()
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    /// An instance `i` in a temporary instances directory: its log files and their paths.
    struct Logs {
        _dir: tempfile::TempDir,
        files: LogFiles,
        current: PathBuf,
        rotated: PathBuf,
    }

    fn logs() -> Logs {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("i")).unwrap();
        let files = LogFiles::of(dir.path(), "i").unwrap();
        Logs {
            current: dir.path().join(&files.current),
            rotated: dir.path().join(&files.rotated),
            files,
            _dir: dir,
        }
    }

    impl Logs {
        fn cursor(&self) -> LogCursor {
            LogCursor::open(self.files.clone()).unwrap()
        }

        /// What herd-vmm does when the log is full.
        fn rotate(&self) {
            std::fs::rename(&self.current, &self.rotated).unwrap();
            std::fs::File::create(&self.current).unwrap();
        }
    }

    #[test]
    fn tail_counts_lines_like_tail_n() {
        fn t(text: &str, n: usize) -> &str {
            &text[tail_start(text.as_bytes(), n)..]
        }
        assert_eq!(t("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(t("a\nb\nc", 2), "b\nc");
        assert_eq!(t("a\nb\nc\n", 5), "a\nb\nc\n");
        assert_eq!(t("a\nb\n", 0), "");
        assert_eq!(t("", 3), "");
        assert_eq!(t("\n\n\n", 1), "\n");
    }

    #[test]
    fn a_tail_fed_in_pieces_keeps_only_the_last_lines() {
        let mut tail = Tail::new(2);
        for piece in ["one\ntw", "o\nthree", "\nfo", "ur"] {
            tail.push(piece.as_bytes());
        }
        assert_eq!(tail.into_bytes(), b"three\nfour");
    }

    #[test]
    fn the_rotated_file_comes_first_then_the_current_one() {
        let l = logs();
        append(&l.rotated, "old\n");
        append(&l.current, "new\n");
        let mut cursor = l.cursor();
        assert_eq!(read_all(&mut cursor), "old\nnew\n");
    }

    #[test]
    fn following_continues_across_a_rotation_without_losing_or_repeating_output() {
        let l = logs();
        let mut cursor = l.cursor();
        assert_eq!(read_all(&mut cursor), "", "no log yet");
        append(&l.current, "1\n");
        assert_eq!(read_all(&mut cursor), "1\n");
        // Written after the last read, then rotated away before the next one.
        append(&l.current, "2\n");
        l.rotate();
        append(&l.current, "3\n");
        assert_eq!(read_all(&mut cursor), "2\n3\n");
        append(&l.current, "4\n");
        assert_eq!(read_all(&mut cursor), "4\n");
    }

    #[test]
    fn a_log_symlinked_out_of_the_instances_directory_is_refused_naming_it() {
        let secret = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(secret.path(), "secret\n").unwrap();
        let refused = |e: LogError| {
            assert!(
                matches!(e, LogError::Open(ConfineError::Escapes { .. })),
                "{e:?}"
            );
            assert!(e.to_string().contains("i/console.log"), "{e}");
        };
        for planted in ["current", "rotated"] {
            let l = logs();
            let link = if planted == "current" {
                &l.current
            } else {
                &l.rotated
            };
            std::os::unix::fs::symlink(secret.path(), link).unwrap();
            refused(LogCursor::open(l.files.clone()).unwrap_err());
        }
        // Swapped in while a follower reads: refused on the next read.
        let l = logs();
        append(&l.current, "a\n");
        let mut cursor = l.cursor();
        assert_eq!(read_all(&mut cursor), "a\n");
        std::fs::remove_file(&l.current).unwrap();
        std::os::unix::fs::symlink(secret.path(), &l.current).unwrap();
        refused(cursor.read_chunk().unwrap_err());
    }

    #[test]
    fn a_log_that_shrinks_in_place_is_read_from_its_start() {
        let l = logs();
        append(&l.current, "long line of output\n");
        let mut cursor = l.cursor();
        read_all(&mut cursor);
        std::fs::write(&l.current, "short\n").unwrap();
        assert_eq!(read_all(&mut cursor), "short\n");
    }

    #[tokio::test]
    async fn a_follower_streams_new_output_and_ends_after_the_instance_does() {
        let l = logs();
        append(&l.current, "a\nb\nc\n");
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
        let (tx, mut rx) = mpsc::channel(16);
        let until = async {
            let _ = ended_rx.await;
        };
        let task = tokio::spawn(stream(l.cursor(), Some(1), Some(until), tx));
        assert_eq!(&rx.recv().await.unwrap()[..], b"c\n");
        append(&l.current, "d\n");
        assert_eq!(&rx.recv().await.unwrap()[..], b"d\n");
        // The last output is written just before the exit: it still arrives.
        append(&l.current, "bye\n");
        ended_tx.send(()).unwrap();
        let mut rest = Vec::new();
        while let Some(chunk) = rx.recv().await {
            rest.extend_from_slice(&chunk);
        }
        assert_eq!(rest, b"bye\n");
        task.await.unwrap();
    }

    #[tokio::test]
    async fn without_follow_the_stream_ends_after_the_retained_output() {
        let l = logs();
        append(&l.current, "x\n");
        let (tx, mut rx) = mpsc::channel(16);
        stream(l.cursor(), None, None::<std::future::Ready<()>>, tx).await;
        assert_eq!(&rx.recv().await.unwrap()[..], b"x\n");
        assert!(rx.recv().await.is_none());
    }
}
