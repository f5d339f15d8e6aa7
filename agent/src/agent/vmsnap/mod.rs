//! VM snapshots for `snapshot_starts` services: what a snapshot is kept under (`key`), the
//! snapshots directory (`store`), herd-vmm's control socket the snapshot is taken through
//! (`control`), and the `--restore` command line (`restore`). [`Catalog`] is what the
//! supervisor holds: the installed snapshots and the state of each key; [`take`] is the
//! task that takes one, off the supervisor's task. The rules (when, of which instance, what
//! a failure means) are in `fleet::starts`.
//!
//! Taking one: the instance's herd-vmm is paused, writes `snapshot/` in its instance
//! directory (its jail's `/snapshot`), and is resumed; the agent then seals and installs the
//! directory (see `store`). The supervisor ignores the instance's failed health checks
//! meanwhile: a large guest takes a while to write.

pub mod control;
pub mod key;
pub mod restore;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::fleet::KeyState;
pub use key::{GUEST_CID, Inherited, SnapshotKey};
pub use store::{Sealed, SnapshotDir, SnapshotMeta, SnapshotStoreError};

/// Where herd-vmm writes a snapshot, in its instance directory.
pub const TAKEN_DIR: &str = "snapshot";

/// Why a snapshot was not taken.
#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error("{0} is not UTF-8, which the control socket's JSON needs")]
    NotUtf8(PathBuf),
    #[error("cannot clear {0} for the snapshot")]
    Clear(PathBuf, #[source] std::io::Error),
    #[error("herd-vmm did not take the snapshot")]
    Control(#[source] control::ControlError),
    #[error("cannot keep the snapshot")]
    Store(#[source] SnapshotStoreError),
    #[error("the task sealing the snapshot failed")]
    Task(#[source] tokio::task::JoinError),
}

/// A snapshot to take of one instance.
#[derive(Clone, Debug)]
pub struct Job {
    /// What the snapshot will be recorded as (`memory_bytes` and `created_at_ms` are set
    /// once it is taken).
    pub meta: SnapshotMeta,
    /// The instance's herd-vmm control socket.
    pub socket: PathBuf,
    pub instance_dir: PathBuf,
    /// Whether its herd-vmm is jailed in `instance_dir` (paths it is told are inside).
    pub jailed: bool,
    pub store: SnapshotDir,
}

/// What became of a [`Job`].
#[derive(Debug)]
pub struct Outcome {
    pub key: SnapshotKey,
    pub instance: String,
    pub sealed: Result<Sealed, TakeError>,
    /// The instance's pause: resumed or not, and for how long.
    pub paused: control::Paused,
    /// From connecting to its control socket to the snapshot sealed (or the failure).
    pub elapsed_ms: u64,
}

/// How long herd-vmm may take to write a snapshot: a base plus 20 ms per MiB of guest
/// memory (a slow disk's 50 MiB/s), since every page may have been touched.
pub fn snapshot_timeout(memory_mib: u32) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(20 * u64::from(memory_mib))
}

/// Takes, seals and returns the snapshot of `job` (installing it is the supervisor's).
pub async fn take(job: Job) -> Outcome {
    let started = Instant::now();
    let (key, instance) = (job.meta.key(), job.meta.source_instance.clone());
    let (sealed, paused) = match take_and_seal(job).await {
        Ok((sealed, paused)) => (Ok(sealed), paused),
        Err((e, paused)) => (Err(e), paused),
    };
    Outcome {
        key,
        instance,
        sealed,
        paused,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

type Paused = control::Paused;

async fn take_and_seal(mut job: Job) -> Result<(Sealed, Paused), (TakeError, Paused)> {
    let taken = job.instance_dir.join(TAKEN_DIR);
    let seen_by_vmm = if job.jailed {
        Path::new("/").join(TAKEN_DIR)
    } else {
        taken.clone()
    };
    let fail = |e| (e, Paused::not());
    let dir = seen_by_vmm
        .to_str()
        .ok_or_else(|| fail(TakeError::NotUtf8(seen_by_vmm.clone())))?
        .to_owned();
    // A failed earlier attempt may have left one; herd-vmm wants to create it.
    match tokio::fs::remove_dir_all(&taken).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(TakeError::Clear(taken, e))),
    }
    let timeout = snapshot_timeout(job.meta.memory_mib);
    let result = control::take(&job.socket, &dir, timeout).await;
    let bytes = match result.snapshot {
        Ok(bytes) => bytes,
        Err(e) => return Err((TakeError::Control(e), result.paused)),
    };
    job.meta.memory_bytes = bytes;
    job.meta.created_at_ms = crate::agent::supervisor::unix_ms();
    let (store, meta) = (job.store, job.meta);
    let sealed = tokio::task::spawn_blocking(move || store.seal(&taken, meta)).await;
    match sealed {
        Ok(Ok(sealed)) => Ok((sealed, result.paused)),
        Ok(Err(e)) => Err((TakeError::Store(e), result.paused)),
        Err(e) => Err((TakeError::Task(e), result.paused)),
    }
}

/// The installed snapshots and what the supervisor knows of each key.
#[derive(Debug)]
pub struct Catalog {
    dir: SnapshotDir,
    host_cpu: String,
    ready: BTreeMap<SnapshotKey, SnapshotMeta>,
    keys: BTreeMap<SnapshotKey, KeyState>,
}

impl Catalog {
    /// The snapshots in `dir`, after removing those of images `keep` says are gone (see
    /// [`SnapshotDir::load`]).
    pub fn load(dir: SnapshotDir, keep: &dyn Fn(&str) -> bool) -> Self {
        let host_cpu = store::host_cpu();
        let ready = dir
            .load(keep, &host_cpu)
            .into_iter()
            .map(|m| (m.key(), m))
            .collect();
        Self {
            dir,
            host_cpu,
            ready,
            keys: BTreeMap::new(),
        }
    }

    /// The snapshot of `key`, if one is installed.
    pub fn ready(&self, key: &SnapshotKey) -> Option<&SnapshotMeta> {
        self.ready.get(key)
    }

    /// Where the snapshot of `key` is.
    pub fn path_of(&self, key: &SnapshotKey) -> PathBuf {
        self.dir.path_of(key)
    }

    /// The state of `key` (default when nothing happened to it yet).
    pub fn key_state(&self, key: &SnapshotKey) -> KeyState {
        self.keys.get(key).cloned().unwrap_or_default()
    }

    /// Whether a snapshot of `key` should be taken at `now`.
    pub fn wants(&self, key: &SnapshotKey, now_ms: u64) -> bool {
        self.key_state(key)
            .wants_snapshot(self.ready.contains_key(key), now_ms)
    }

    /// Whether a snapshot of instance `id` is being taken.
    pub fn is_taking(&self, id: &str) -> bool {
        self.keys.values().any(|k| k.taking.as_deref() == Some(id))
    }

    /// Records that a snapshot of `key` is being taken of `instance`; returns the job.
    pub fn begin(
        &mut self,
        meta: SnapshotMeta,
        socket: PathBuf,
        dir: PathBuf,
        jailed: bool,
    ) -> Job {
        let state = self.keys.entry(meta.key()).or_default();
        state.taking = Some(meta.source_instance.clone());
        Job {
            meta,
            socket,
            instance_dir: dir,
            jailed,
            store: self.dir.clone(),
        }
    }

    /// The CPU snapshots are taken on here.
    pub fn host_cpu(&self) -> &str {
        &self.host_cpu
    }

    /// A take finished: installs a sealed snapshot if `wanted` (some service still starts
    /// instances of its key), else drops it. Returns where it was installed.
    pub fn finish(
        &mut self,
        key: &SnapshotKey,
        sealed: Sealed,
        wanted: bool,
    ) -> Result<Option<PathBuf>, SnapshotStoreError> {
        if let Some(state) = self.keys.get_mut(key) {
            state.taking = None;
        }
        if !wanted {
            return Ok(None);
        }
        let meta = sealed.meta.clone();
        let path = self.dir.install(sealed)?;
        self.ready.insert(key.clone(), meta);
        Ok(Some(path))
    }

    /// Counts a failed take or a refused restore of `key` at `now`; a restore failure also
    /// removes the snapshot. Returns whether the key is now given up.
    pub fn fail(&mut self, key: &SnapshotKey, remove: bool, now_ms: u64) -> bool {
        let state = self.keys.entry(key.clone()).or_default();
        state.taking = None;
        let given_up = state.fail(now_ms);
        if remove && self.ready.remove(key).is_some() {
            log_removal(self.dir.remove(key), key);
        }
        given_up
    }

    /// Removes every snapshot of the image `digest` (it left the store).
    pub fn forget_image(&mut self, digest: &str) {
        self.ready.retain(|k, _| k.digest != digest);
        self.keys.retain(|k, _| k.digest != digest);
        if let Err(e) = self.dir.remove_image(digest) {
            tracing::warn!(digest, error = %crate::agent::supervisor::chain(&e), "cannot remove the image's snapshots");
        }
    }

    /// Removes the installed snapshots whose key is not in `wanted` (no service starts
    /// instances from them any more: its settings changed or it is gone); returns their keys.
    /// Without this, every change of a service's env would leave a snapshot behind until its
    /// image is removed.
    pub fn retain(&mut self, wanted: &BTreeSet<SnapshotKey>) -> Vec<SnapshotKey> {
        let unused: Vec<SnapshotKey> = (self.ready.keys())
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        for key in &unused {
            self.ready.remove(key);
            log_removal(self.dir.remove(key), key);
        }
        unused
    }

    /// Digests that have installed snapshots.
    pub fn digests(&self) -> Vec<String> {
        let mut d: Vec<String> = self.ready.keys().map(|k| k.digest.clone()).collect();
        d.dedup();
        d
    }

    /// How many snapshots are installed, and their memory bytes.
    pub fn totals(&self) -> (u64, u64) {
        let bytes = self.ready.values().map(|m| m.memory_bytes).sum();
        (self.ready.len() as u64, bytes)
    }
}

fn log_removal(result: Result<(), SnapshotStoreError>, key: &SnapshotKey) {
    match result {
        Ok(()) => tracing::info!(%key, "snapshot removed"),
        Err(e) => {
            tracing::warn!(%key, error = %crate::agent::supervisor::chain(&e), "cannot remove the snapshot")
        }
    }
}

#[cfg(test)]
mod tests;
