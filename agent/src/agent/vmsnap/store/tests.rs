use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;

use super::*;
use crate::agent::vmsnap::key::{GUEST_CID, Inherited};

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const CPU: &str = "GenuineIntel 6/85/7";

fn meta(vcpus: u8) -> SnapshotMeta {
    let env = BTreeMap::new();
    let key = SnapshotKey::new(
        DIGEST,
        vcpus,
        64,
        &Inherited {
            cmdline: "console=ttyS0",
            env: &env,
            args: None,
            network_interfaces: 0,
            disks_read_only: vec![],
            vsock_cid: GUEST_CID,
        },
    );
    SnapshotMeta {
        digest: key.digest,
        vcpus,
        memory_mib: 64,
        settings: key.settings,
        vsock_cid: GUEST_CID,
        network_interfaces: 0,
        host_cpu: CPU.into(),
        created_at_ms: 1,
        service: "web".into(),
        source_instance: "web-0000abcd".into(),
        memory_bytes: 4096,
    }
}

/// What herd-vmm leaves: `state`, and a sparse 8 MiB `memory` with one page of data at 1 MiB.
fn taken(dir: &Path) -> PathBuf {
    let taken = dir.join("snapshot");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join(STATE_FILE), b"HERDSNAP state").unwrap();
    let memory = File::create(taken.join(MEMORY_FILE)).unwrap();
    memory.set_len(8 << 20).unwrap();
    memory.write_all_at(&[0xa5; 4096], 1 << 20).unwrap();
    taken
}

#[test]
fn a_sealed_snapshot_is_a_copy_with_its_holes_installed_once() {
    let root = tempfile::tempdir().unwrap();
    let instance = tempfile::tempdir().unwrap();
    let store = SnapshotDir::open(&root.path().join("snapshots")).unwrap();
    let sealed = store.seal(&taken(instance.path()), meta(1)).unwrap();
    assert!(
        !instance.path().join("snapshot").exists(),
        "moved out of the instance"
    );
    let dir = store.install(sealed).unwrap();
    assert_eq!(dir, store.path_of(&meta(1).key()));
    assert_eq!(
        std::fs::read(dir.join(STATE_FILE)).unwrap(),
        b"HERDSNAP state"
    );
    let memory = std::fs::read(dir.join(MEMORY_FILE)).unwrap();
    assert_eq!(memory.len(), 8 << 20);
    assert!(
        memory[(1 << 20)..(1 << 20) + 4096]
            .iter()
            .all(|b| *b == 0xa5)
    );
    assert_eq!(memory.iter().filter(|b| **b != 0).count(), 4096);
    let blocks = std::fs::metadata(dir.join(MEMORY_FILE)).unwrap().blocks() * 512;
    assert!(
        blocks < 1 << 20,
        "the holes stayed holes: {blocks} bytes allocated"
    );
    let meta_read: SnapshotMeta =
        serde_json::from_slice(&std::fs::read(dir.join(META_FILE)).unwrap()).unwrap();
    assert_eq!(meta_read, meta(1));
    // A second snapshot of the same key does not replace the first, and leaves nothing.
    let again = store.seal(&taken(instance.path()), meta(1)).unwrap();
    assert!(matches!(
        store.install(again),
        Err(SnapshotStoreError::Exists(_))
    ));
    assert_eq!(
        std::fs::read(dir.join(STATE_FILE)).unwrap(),
        b"HERDSNAP state"
    );
    let names: Vec<String> = entries(store.root.as_path())
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(
        names,
        [meta(1).key().image_dir()],
        "no work directory is left"
    );
}

#[test]
fn sealing_follows_no_link_and_takes_only_regular_files() {
    let root = tempfile::tempdir().unwrap();
    let instance = tempfile::tempdir().unwrap();
    let store = SnapshotDir::open(&root.path().join("snapshots")).unwrap();
    // The directory itself a link to one that looks right.
    let elsewhere = taken(root.path());
    let link = instance.path().join("snapshot");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    assert!(matches!(
        store.seal(&link, meta(1)),
        Err(SnapshotStoreError::NotADirectory(_))
    ));
    assert!(
        elsewhere.join(STATE_FILE).exists(),
        "the link's target is untouched"
    );
    std::fs::remove_file(&link).unwrap();
    // `state` a link to a file the agent can read.
    let t = taken(instance.path());
    std::fs::remove_file(t.join(STATE_FILE)).unwrap();
    std::os::unix::fs::symlink(elsewhere.join(STATE_FILE), t.join(STATE_FILE)).unwrap();
    let err = store.seal(&t, meta(1)).unwrap_err();
    assert!(
        matches!(err, SnapshotStoreError::Io { what: "open", .. }),
        "{err:?}"
    );
    // `memory` a FIFO: refused without blocking.
    let t = taken(instance.path());
    std::fs::remove_file(t.join(MEMORY_FILE)).unwrap();
    rustix::fs::mknodat(
        CWD,
        t.join(MEMORY_FILE),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    assert!(matches!(
        store.seal(&t, meta(1)),
        Err(SnapshotStoreError::NotAFile(_))
    ));
    assert_eq!(store.load(&|_| true, CPU), []);
}

#[test]
fn loading_keeps_valid_snapshots_and_removes_everything_else() {
    let root = tempfile::tempdir().unwrap();
    let instance = tempfile::tempdir().unwrap();
    let store = SnapshotDir::open(&root.path().join("snapshots")).unwrap();
    for vcpus in [1, 2, 3] {
        let sealed = store.seal(&taken(instance.path()), meta(vcpus)).unwrap();
        store.install(sealed).unwrap();
    }
    // 2: incomplete; 3: taken on another CPU (its metadata says so).
    std::fs::remove_file(store.path_of(&meta(2).key()).join(MEMORY_FILE)).unwrap();
    let other_cpu = SnapshotMeta {
        host_cpu: "AuthenticAMD 25/1/1".into(),
        ..meta(3)
    };
    let meta3 = store.path_of(&meta(3).key()).join(META_FILE);
    std::fs::remove_file(&meta3).unwrap();
    std::fs::write(&meta3, serde_json::to_vec(&other_cpu).unwrap()).unwrap();
    // Leftovers and strangers.
    std::fs::create_dir(store.root.join(".tmp-abc")).unwrap();
    std::fs::create_dir(store.root.join("not-a-digest")).unwrap();
    let image_dir = store.root.join(meta(1).key().image_dir());
    std::fs::create_dir(image_dir.join("1x64-zzzz")).unwrap();
    assert_eq!(store.load(&|d| d == DIGEST, CPU), [meta(1)]);
    let names: Vec<String> = entries(&store.root).into_iter().map(|e| e.0).collect();
    assert_eq!(names, [meta(1).key().image_dir()]);
    assert_eq!(entries(&image_dir).len(), 1);
    // Gone from the store: every snapshot of the image goes.
    assert_eq!(store.load(&|_| false, CPU), []);
    assert!(entries(&store.root).is_empty());
}

#[test]
fn removal_takes_one_key_or_a_whole_image() {
    let root = tempfile::tempdir().unwrap();
    let instance = tempfile::tempdir().unwrap();
    let store = SnapshotDir::open(&root.path().join("snapshots")).unwrap();
    for vcpus in [1, 2] {
        let sealed = store.seal(&taken(instance.path()), meta(vcpus)).unwrap();
        store.install(sealed).unwrap();
    }
    store.remove(&meta(1).key()).unwrap();
    store.remove(&meta(1).key()).unwrap();
    assert!(!store.path_of(&meta(1).key()).exists());
    assert_eq!(store.load(&|_| true, CPU), [meta(2)]);
    store.remove_image(DIGEST).unwrap();
    store.remove_image("sha256:nothex").unwrap();
    assert!(entries(&store.root).is_empty());
}
