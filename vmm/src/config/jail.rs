//! `--jail`: the checked description of where and as whom herd-vmm confines itself (see
//! [`crate::jail`] for how). Paths herd-vmm still uses by name once jailed (the console log,
//! the vsock socket) must lie inside the jail directory; they are rewritten to the names
//! they have from inside it.

use std::path::{Component, Path, PathBuf};

/// Open files a jailed herd-vmm may hold when none is asked for: each vsock connection
/// holds one, so this bounds host connections too.
pub const DEFAULT_MAX_OPEN_FILES: u64 = 4096;

/// Errors in the jail settings.
#[derive(Debug, thiserror::Error)]
pub enum JailConfigError {
    #[error("--jail {0}: must be an absolute path to a directory other than /")]
    Root(PathBuf),
    #[error("--jail {0}")]
    RootMissing(PathBuf, #[source] std::io::Error),
    #[error("--jail-uid and --jail-gid must not be 0 (root)")]
    RootIds,
    #[error("--jail-cgroup {0}: not a cgroup directory (no cgroup.procs)")]
    Cgroup(PathBuf),
    #[error("--jail-max-open-files {0}: must be 64 to 1048576")]
    MaxOpenFiles(u64),
    #[error("{what} {path} is outside the jail directory {root}")]
    Outside {
        what: &'static str,
        path: PathBuf,
        root: PathBuf,
    },
}

/// Unchecked jail settings, from flags.
#[derive(Clone, Debug, Default)]
pub struct RawJailConfig {
    pub root: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub cgroups: Vec<PathBuf>,
    pub max_open_files: Option<u64>,
}

/// Checked jail settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailConfig {
    /// The directory that becomes `/`.
    pub root: PathBuf,
    /// The unprivileged ids herd-vmm runs as.
    pub uid: u32,
    pub gid: u32,
    /// Cgroup directories to join (one for cgroup v2; one per controller for v1).
    pub cgroups: Vec<PathBuf>,
    pub max_open_files: u64,
}

impl RawJailConfig {
    /// Checks the settings against the host (the directories must exist).
    pub fn validate(self) -> Result<JailConfig, JailConfigError> {
        if !self.root.is_absolute() || self.root.parent().is_none() {
            return Err(JailConfigError::Root(self.root));
        }
        match std::fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(JailConfigError::Root(self.root)),
            Err(e) => return Err(JailConfigError::RootMissing(self.root, e)),
        }
        if self.uid == 0 || self.gid == 0 {
            return Err(JailConfigError::RootIds);
        }
        if let Some(bad) = self
            .cgroups
            .iter()
            .find(|c| !c.join("cgroup.procs").is_file())
        {
            return Err(JailConfigError::Cgroup(bad.clone()));
        }
        let max_open_files = self.max_open_files.unwrap_or(DEFAULT_MAX_OPEN_FILES);
        if !(64..=1 << 20).contains(&max_open_files) {
            return Err(JailConfigError::MaxOpenFiles(max_open_files));
        }
        Ok(JailConfig {
            root: self.root,
            uid: self.uid,
            gid: self.gid,
            cgroups: self.cgroups,
            max_open_files,
        })
    }
}

impl JailConfig {
    /// `path` (a host path inside the jail directory) as seen from inside the jail.
    pub fn inside(&self, what: &'static str, path: &Path) -> Result<PathBuf, JailConfigError> {
        let outside = || JailConfigError::Outside {
            what,
            path: path.to_owned(),
            root: self.root.clone(),
        };
        let rest = path.strip_prefix(&self.root).map_err(|_| outside())?;
        let plain = rest.components().all(|c| matches!(c, Component::Normal(_)));
        if !plain || rest.as_os_str().is_empty() {
            return Err(outside());
        }
        Ok(Path::new("/").join(rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(root: &Path) -> RawJailConfig {
        RawJailConfig {
            root: root.to_owned(),
            uid: 1000,
            gid: 1000,
            ..RawJailConfig::default()
        }
    }

    #[test]
    fn a_jail_needs_an_existing_directory_and_unprivileged_ids() {
        let dir = tempfile::tempdir().unwrap();
        let jail = raw(dir.path()).validate().unwrap();
        assert_eq!(jail.max_open_files, DEFAULT_MAX_OPEN_FILES);
        let bad_root = |root: &str| raw(Path::new(root)).validate().unwrap_err();
        assert!(matches!(bad_root("/"), JailConfigError::Root(_)));
        assert!(matches!(bad_root("relative"), JailConfigError::Root(_)));
        assert!(matches!(
            bad_root("/nonexistent/herd-jail"),
            JailConfigError::RootMissing(..)
        ));
        let as_root = RawJailConfig {
            uid: 0,
            ..raw(dir.path())
        };
        assert!(matches!(as_root.validate(), Err(JailConfigError::RootIds)));
        let no_cgroup = RawJailConfig {
            cgroups: vec![dir.path().to_owned()],
            ..raw(dir.path())
        };
        assert!(matches!(
            no_cgroup.validate(),
            Err(JailConfigError::Cgroup(_))
        ));
        let few_files = RawJailConfig {
            max_open_files: Some(3),
            ..raw(dir.path())
        };
        assert!(matches!(
            few_files.validate(),
            Err(JailConfigError::MaxOpenFiles(3))
        ));
    }

    #[test]
    fn paths_used_inside_are_rewritten_and_must_not_leave_the_jail() {
        let dir = tempfile::tempdir().unwrap();
        let jail = raw(dir.path()).validate().unwrap();
        let inside = jail.inside("console log", &dir.path().join("logs/console.log"));
        assert_eq!(inside.unwrap(), Path::new("/logs/console.log"));
        for bad in [
            dir.path().to_owned(),
            dir.path().join("../escape.log"),
            PathBuf::from("/tmp/elsewhere.sock"),
        ] {
            let err = jail.inside("vsock socket", &bad).unwrap_err();
            assert!(err.to_string().contains("outside the jail"), "{err}");
        }
    }
}
