//! The agent's Unix socket: taking the path over safely (a socket left by an agent that died
//! is replaced, one a live agent answers on is not, and anything that is not a socket is never
//! deleted), its mode and group, and removing it on the way out only if it is still ours.

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

use super::ApiError;

/// Mode of the socket: the owner and its group may connect (and then must pass the peer
/// policy, see `peer`).
pub const SOCKET_MODE: u32 = 0o660;

/// A bound socket, and which file it is, to remove it only if still ours.
#[derive(Debug)]
pub struct Bound {
    listener: UnixListener,
    path: PathBuf,
    inode: (u64, u64),
}

impl Bound {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn into_parts(self) -> (UnixListener, PathBuf, (u64, u64)) {
        (self.listener, self.path, self.inode)
    }
}

/// Binds `path`: creates its directory, replaces a stale socket, refuses a live one; gives
/// the socket to `group` (its owner stays the agent's user), then mode [`SOCKET_MODE`].
pub async fn bind(path: &Path, group: Option<u32>) -> Result<Bound, ApiError> {
    let at = || path.to_owned();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ApiError::Dir {
            path: dir.to_owned(),
            source,
        })?;
    }
    remove_if_stale(path).await?;
    let listener =
        UnixListener::bind(path).map_err(|source| ApiError::Bind { path: at(), source })?;
    // The group first: until the mode is set, the new group has only what the umask left it.
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|source| ApiError::Group {
            path: at(),
            gid,
            source,
        })?;
    }
    let perms = std::fs::Permissions::from_mode(SOCKET_MODE);
    std::fs::set_permissions(path, perms)
        .map_err(|source| ApiError::Mode { path: at(), source })?;
    let meta =
        std::fs::symlink_metadata(path).map_err(|source| ApiError::Mode { path: at(), source })?;
    Ok(Bound {
        listener,
        path: at(),
        inode: (meta.dev(), meta.ino()),
    })
}

/// Removes a socket nothing answers on; refuses a live socket or a file of another kind.
async fn remove_if_stale(path: &Path) -> Result<(), ApiError> {
    let at = || path.to_owned();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(ApiError::Probe { path: at(), source }),
    };
    if !meta.file_type().is_socket() {
        return Err(ApiError::NotSocket { path: at() });
    }
    match UnixStream::connect(path).await {
        Ok(_) => Err(ApiError::InUse { path: at() }),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
            .map_err(|source| ApiError::RemoveStale { path: at(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ApiError::Probe { path: at(), source }),
    }
}

/// Removes the socket file if it is still the file `inode` names (a newer agent may have
/// replaced it).
pub(super) fn remove(path: &Path, inode: (u64, u64)) {
    let ours = std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == inode);
    if ours {
        let _ = std::fs::remove_file(path);
    }
}
