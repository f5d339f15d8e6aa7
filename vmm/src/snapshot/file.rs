//! The snapshot directory on disk. The state file is a fixed header (magic, format version,
//! body length, SHA-256 of the body) and a JSON body, so a truncated, extended or altered
//! file is refused before its body is believed, and a snapshot from another format version is
//! refused by number rather than by a confusing parse error.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use vm_memory::GuestMemoryMmap;

use super::memory::{self, MemoryFileError};
use super::{FORMAT_VERSION, MEMORY_FILE, STATE_FILE, Snapshot};

const MAGIC: &[u8; 8] = b"HERDSNAP";
/// Magic, version (u32), body length (u64), SHA-256.
const HEADER_LEN: usize = 8 + 4 + 8 + 32;
/// No VM's state comes near this; a bigger body means a damaged or foreign file.
const BODY_MAX: u64 = 64 << 20;

/// Errors writing or reading a snapshot directory.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot directory {0} already exists")]
    Exists(PathBuf),
    #[error("cannot create {0}")]
    Create(PathBuf, #[source] io::Error),
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] io::Error),
    #[error("cannot write guest memory to {0}")]
    Memory(PathBuf, #[source] MemoryFileError),
    #[error("cannot encode the VM state")]
    Encode(#[source] serde_json::Error),
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] io::Error),
    #[error("{0} is not a herd snapshot state file (bad magic)")]
    Magic(PathBuf),
    #[error(
        "{path} has snapshot format version {found}; this herd-vmm reads version {FORMAT_VERSION}"
    )]
    Version { path: PathBuf, found: u32 },
    #[error("{path} is truncated or extended: {found} bytes, the header says {expected}")]
    Length {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("{0} is damaged: its checksum does not match")]
    Checksum(PathBuf),
    #[error("{0} holds a state this herd-vmm cannot read")]
    Decode(
        PathBuf,
        #[source] serde_path_to_error::Error<serde_json::Error>,
    ),
}

/// Writes `snapshot` and the memory of its (paused) VM into the new directory `dir`;
/// returns the memory bytes written. On failure nothing is left at `dir`.
pub fn write(
    dir: &Path,
    snapshot: &Snapshot,
    mem: &GuestMemoryMmap,
    untouched_is_zero: bool,
) -> Result<u64, SnapshotError> {
    if dir.symlink_metadata().is_ok() {
        return Err(SnapshotError::Exists(dir.to_owned()));
    }
    let partial = partial_name(dir);
    // A partial directory is only ever left by a herd-vmm that died writing it.
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir(&partial).map_err(|e| SnapshotError::Create(partial.clone(), e))?;
    let result = write_files(&partial, snapshot, mem, untouched_is_zero).and_then(|bytes| {
        fs::rename(&partial, dir).map_err(|e| SnapshotError::Create(dir.to_owned(), e))?;
        sync_parent(dir);
        Ok(bytes)
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&partial);
    }
    result
}

fn partial_name(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dir.with_file_name(name)
}

fn create(path: &Path) -> Result<File, SnapshotError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| SnapshotError::Create(path.to_owned(), e))
}

fn write_files(
    dir: &Path,
    snapshot: &Snapshot,
    mem: &GuestMemoryMmap,
    untouched_is_zero: bool,
) -> Result<u64, SnapshotError> {
    let body = serde_json::to_vec(snapshot).map_err(SnapshotError::Encode)?;
    let state_path = dir.join(STATE_FILE);
    let mut state = create(&state_path)?;
    let write_err = |e| SnapshotError::Write(state_path.clone(), e);
    state.write_all(&header(&body)).map_err(write_err)?;
    state.write_all(&body).map_err(write_err)?;
    state.sync_all().map_err(write_err)?;
    let mem_path = dir.join(MEMORY_FILE);
    let mem_file = create(&mem_path)?;
    let bytes = memory::save(mem, &mem_file, untouched_is_zero)
        .map_err(|e| SnapshotError::Memory(mem_path.clone(), e))?;
    mem_file
        .sync_all()
        .map_err(|e| SnapshotError::Write(mem_path.clone(), e))?;
    Ok(bytes)
}

/// Makes the rename durable; a failure only risks the snapshot after a host crash.
fn sync_parent(dir: &Path) {
    if let Some(parent) = dir.parent()
        && let Ok(d) = File::open(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        })
        && let Err(e) = d.sync_all()
    {
        tracing::debug!("cannot sync the snapshot's parent directory: {e}");
    }
}

/// A state file's bytes for `body` (header then body), as [`write`] writes them.
pub fn state_file_bytes(body: &[u8]) -> Vec<u8> {
    let mut bytes = header(body);
    bytes.extend_from_slice(body);
    bytes
}

fn header(body: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&(body.len() as u64).to_le_bytes());
    h.extend_from_slice(&Sha256::digest(body));
    h
}

/// Reads and checks `dir/state` (see the module doc).
pub fn read_state(dir: &Path) -> Result<Snapshot, SnapshotError> {
    let path = dir.join(STATE_FILE);
    let read_err = |e| SnapshotError::Read(path.clone(), e);
    let file = File::open(&path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(HEADER_LEN as u64 + BODY_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    parse_state(&path, &bytes)
}

/// Checks and decodes the bytes of the state file at `path` (named in errors).
pub fn parse_state(path: &Path, bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    let body = check_header(path, bytes)?;
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| SnapshotError::Decode(path.to_owned(), e))
}

/// The body of a state file whose header checks out.
fn check_header<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u8], SnapshotError> {
    let short = || SnapshotError::Length {
        path: path.to_owned(),
        found: bytes.len() as u64,
        expected: HEADER_LEN as u64,
    };
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(if bytes.len() < MAGIC.len() {
            short()
        } else {
            SnapshotError::Magic(path.to_owned())
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(short());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version {
            path: path.to_owned(),
            found: version,
        });
    }
    let body_len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let expected = (HEADER_LEN as u64).saturating_add(body_len);
    if bytes.len() as u64 != expected {
        return Err(SnapshotError::Length {
            path: path.to_owned(),
            found: bytes.len() as u64,
            expected,
        });
    }
    let body = &bytes[HEADER_LEN..];
    if Sha256::digest(body).as_slice() != &bytes[20..HEADER_LEN] {
        return Err(SnapshotError::Checksum(path.to_owned()));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_file(body: &[u8]) -> Vec<u8> {
        state_file_bytes(body)
    }

    #[test]
    fn a_whole_state_file_passes_its_header_check() {
        let f = state_file(b"{}");
        assert_eq!(check_header(Path::new("s"), &f).unwrap(), b"{}");
    }

    #[test]
    fn truncated_extended_altered_foreign_and_other_version_files_are_refused() {
        let p = Path::new("snap/state");
        let f = state_file(b"{\"a\":1}");
        let cut = &f[..f.len() - 1];
        assert!(
            matches!(check_header(p, cut), Err(SnapshotError::Length { found, expected, .. }) if found + 1 == expected)
        );
        assert!(matches!(
            check_header(p, &f[..30]),
            Err(SnapshotError::Length { .. })
        ));
        assert!(matches!(
            check_header(p, &f[..3]),
            Err(SnapshotError::Length { .. })
        ));
        let mut longer = f.clone();
        longer.push(b' ');
        assert!(matches!(
            check_header(p, &longer),
            Err(SnapshotError::Length { .. })
        ));
        let mut altered = f.clone();
        *altered.last_mut().unwrap() = b']';
        assert!(matches!(
            check_header(p, &altered),
            Err(SnapshotError::Checksum(_))
        ));
        let mut foreign = f.clone();
        foreign[0] = b'X';
        assert!(matches!(
            check_header(p, &foreign),
            Err(SnapshotError::Magic(_))
        ));
        let mut newer = f.clone();
        newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let err = check_header(p, &newer).unwrap_err();
        assert!(matches!(err, SnapshotError::Version { found, .. } if found == FORMAT_VERSION + 1));
        assert!(
            err.to_string()
                .contains("snap/state has snapshot format version 2"),
            "{err}"
        );
    }

    #[test]
    fn a_written_snapshot_reads_back_and_is_never_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("snap");
        let mem = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
        write(&dir, &sample(), &mem, false).unwrap();
        let back = read_state(&dir).unwrap();
        assert_eq!(back.machine, sample().machine);
        assert_eq!(fs::metadata(dir.join(MEMORY_FILE)).unwrap().len(), 1 << 20);
        assert!(!partial_name(&dir).exists());
        assert!(matches!(
            write(&dir, &sample(), &mem, false),
            Err(SnapshotError::Exists(_))
        ));
        let missing_parent = tmp.path().join("no/such/snap");
        assert!(matches!(
            write(&missing_parent, &sample(), &mem, false),
            Err(SnapshotError::Create(..))
        ));
        assert!(!tmp.path().join("no").exists());
    }

    fn sample() -> Snapshot {
        Snapshot {
            written_by: "test".into(),
            machine: super::super::Machine {
                vcpus: 1,
                memory_mib: 1,
                cmdline: "console=ttyS0".into(),
            },
            cpu: super::super::CpuModel {
                vendor: "GenuineIntel".into(),
                family: 6,
                model: 0x55,
                stepping: 7,
            },
            vm: crate::vstate::vm_state::VmState {
                pic_master: Default::default(),
                pic_slave: Default::default(),
                ioapic: Default::default(),
                pit: Default::default(),
                clock: Default::default(),
            },
            vcpus: Vec::new(),
            console: Default::default(),
            control: Default::default(),
            devices: Vec::new(),
        }
    }
}
