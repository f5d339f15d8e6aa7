//! Opening files whose names come from requests without ever leaving the directory they are
//! meant to be in. Names are checked by shape where they enter (ids, names, digests), but a
//! shape check cannot see the file system: a symlink in an instance's directory (an
//! operator's mistake, a restored backup, any other process that can write there) would
//! still lead a lexically clean path elsewhere. So the open itself is confined, by the
//! kernel: `openat2(2)` beneath a directory descriptor with `RESOLVE_BENEATH` (no absolute
//! paths, no `..` above the directory, no symlink resolving outside it) and
//! `RESOLVE_NO_MAGICLINKS` (no `/proc/self/fd/N`-style jumps). Absolute paths and `..`
//! components are refused before the kernel is asked, so the error says why.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags, openat2};

/// Why a confined open failed. Every variant names the path as asked, relative to the
/// directory, and the directory.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("{path} is absolute; only paths relative to {dir} are opened")]
    Absolute { dir: PathBuf, path: PathBuf },
    #[error("{path} has a `..` component; only paths beneath {dir} are opened")]
    ParentDir { dir: PathBuf, path: PathBuf },
    #[error("{path} leads outside {dir} (through a symlink); refused")]
    Escapes { dir: PathBuf, path: PathBuf },
    #[error("cannot open {path} in {dir}")]
    Open {
        dir: PathBuf,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ConfineError {
    /// Whether the file (or a directory on its way) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// A directory that files are opened beneath, held open so that renaming or replacing its
/// path afterwards does not change what it confines to.
#[derive(Debug)]
pub struct Beneath {
    fd: OwnedFd,
    path: PathBuf,
}

impl Beneath {
    /// Opens the directory `dir` itself (trusted: it comes from the agent's configuration).
    pub fn open(dir: &Path) -> Result<Self, ConfineError> {
        let fd = rustix::fs::open(
            dir,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ConfineError::Open {
            dir: dir.to_owned(),
            path: PathBuf::from("."),
            source: e.into(),
        })?;
        Ok(Self {
            fd,
            path: dir.to_owned(),
        })
    }

    /// The directory's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the file `rel` beneath this directory for reading.
    pub fn open_file(&self, rel: &Path) -> Result<File, ConfineError> {
        self.open_with(rel, OFlags::RDONLY | OFlags::NOCTTY)
            .map(File::from)
    }

    /// The file `rel` names now, as (device, inode), without following a last symlink: a
    /// symlink is not the file it points to.
    pub fn identity(&self, rel: &Path) -> Result<(u64, u64), ConfineError> {
        let fd = self.open_with(rel, OFlags::PATH | OFlags::NOFOLLOW)?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| self.error(rel, e))?;
        Ok((stat.st_dev, stat.st_ino))
    }

    fn open_with(&self, rel: &Path, flags: OFlags) -> Result<OwnedFd, ConfineError> {
        self.check(rel)?;
        openat2(
            &self.fd,
            rel,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| self.error(rel, e))
    }

    /// Refuses what can be refused by looking at the path, with the reason in the error.
    fn check(&self, rel: &Path) -> Result<(), ConfineError> {
        let (dir, path) = (self.path.clone(), rel.to_owned());
        for component in rel.components() {
            match component {
                Component::RootDir | Component::Prefix(_) => {
                    return Err(ConfineError::Absolute { dir, path });
                }
                Component::ParentDir => return Err(ConfineError::ParentDir { dir, path }),
                Component::CurDir | Component::Normal(_) => {}
            }
        }
        if rel.as_os_str().is_empty() {
            let source = io::Error::new(io::ErrorKind::InvalidInput, "empty path");
            return Err(ConfineError::Open { dir, path, source });
        }
        Ok(())
    }

    fn error(&self, rel: &Path, e: rustix::io::Errno) -> ConfineError {
        let (dir, path) = (self.path.clone(), rel.to_owned());
        // EXDEV: resolution would leave the directory; ELOOP: a magic link (or a loop).
        if e == rustix::io::Errno::XDEV || e == rustix::io::Errno::LOOP {
            ConfineError::Escapes { dir, path }
        } else {
            ConfineError::Open {
                dir,
                path,
                source: e.into(),
            }
        }
    }
}

/// Opens `rel` beneath `dir` for reading (see [`Beneath`]).
pub fn open_beneath(dir: &Path, rel: &Path) -> Result<File, ConfineError> {
    Beneath::open(dir)?.open_file(rel)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::os::unix::fs::symlink;

    use super::*;

    fn read(file: File) -> String {
        let mut text = String::new();
        let mut file = file;
        file.read_to_string(&mut text).unwrap();
        text
    }

    /// A directory with `inner/ok` in it, and a secret file outside it.
    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("dir");
        std::fs::create_dir_all(dir.join("inner")).unwrap();
        std::fs::write(dir.join("inner/ok"), "fine").unwrap();
        let secret = top.path().join("secret");
        std::fs::write(&secret, "outside").unwrap();
        (top, dir, secret)
    }

    #[test]
    fn files_beneath_the_directory_open_also_through_symlinks_that_stay_inside() {
        let (_top, dir, _) = setup();
        assert_eq!(
            read(open_beneath(&dir, Path::new("inner/ok")).unwrap()),
            "fine"
        );
        symlink("inner/ok", dir.join("link")).unwrap();
        assert_eq!(read(open_beneath(&dir, Path::new("link")).unwrap()), "fine");
        assert!(
            open_beneath(&dir, Path::new("inner/missing"))
                .unwrap_err()
                .is_not_found()
        );
    }

    #[test]
    fn a_symlink_leading_outside_is_refused_naming_the_path() {
        let (_top, dir, secret) = setup();
        symlink(&secret, dir.join("inner/console.log")).unwrap();
        symlink("../../secret", dir.join("relative")).unwrap();
        symlink(secret.parent().unwrap(), dir.join("updir")).unwrap();
        for rel in ["inner/console.log", "relative", "updir/secret"] {
            let err = open_beneath(&dir, Path::new(rel)).unwrap_err();
            assert!(
                matches!(err, ConfineError::Escapes { .. }),
                "{rel}: {err:?}"
            );
            assert!(err.to_string().contains(rel), "{rel}: {err}");
        }
    }

    #[test]
    fn absolute_paths_and_dot_dot_are_refused_naming_the_path() {
        let (_top, dir, secret) = setup();
        let err = open_beneath(&dir, &secret).unwrap_err();
        assert!(matches!(err, ConfineError::Absolute { .. }), "{err:?}");
        assert!(err.to_string().contains(secret.to_str().unwrap()), "{err}");
        // `..` is refused even where it would come back inside.
        for rel in ["../secret", "inner/../inner/ok", "inner/../../secret"] {
            let err = open_beneath(&dir, Path::new(rel)).unwrap_err();
            assert!(
                matches!(err, ConfineError::ParentDir { .. }),
                "{rel}: {err:?}"
            );
            assert!(err.to_string().contains(rel), "{rel}: {err}");
        }
    }

    #[test]
    fn magic_links_are_refused_even_beneath_the_directory() {
        // /proc/self/fd/N is beneath /proc/self, but the kernel would jump from it to
        // whatever file descriptor N is: refused all the same.
        let outside = File::open("/proc/self/exe").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&outside);
        let proc_self = Beneath::open(Path::new("/proc/self")).unwrap();
        let rel = format!("fd/{fd}");
        let err = proc_self.open_file(Path::new(&rel)).unwrap_err();
        assert!(matches!(err, ConfineError::Escapes { .. }), "{err:?}");
    }

    #[test]
    fn identity_does_not_follow_a_last_symlink() {
        let (_top, dir, _) = setup();
        symlink("inner/ok", dir.join("link")).unwrap();
        let beneath = Beneath::open(&dir).unwrap();
        let file = beneath.identity(Path::new("inner/ok")).unwrap();
        let link = beneath.identity(Path::new("link")).unwrap();
        assert_ne!(file, link);
    }
}
