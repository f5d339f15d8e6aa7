use std::fs::File;
use std::os::unix::fs::FileExt as _;

use super::*;
use crate::fleet::starts::RETRY_MS;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn meta(memory_mib: u32) -> SnapshotMeta {
    let env = BTreeMap::new();
    let key = SnapshotKey::new(
        DIGEST,
        1,
        memory_mib,
        &Inherited {
            cmdline: "console=ttyS0",
            env: &env,
            args: None,
            network_interfaces: 1,
            disks_read_only: vec![],
            vsock_cid: GUEST_CID,
        },
    );
    SnapshotMeta {
        digest: key.digest,
        vcpus: 1,
        memory_mib,
        settings: key.settings,
        vsock_cid: GUEST_CID,
        network_interfaces: 1,
        host_cpu: store::host_cpu(),
        created_at_ms: 7,
        service: "web".into(),
        source_instance: "web-0000abcd".into(),
        memory_bytes: 4096,
    }
}

/// What herd-vmm leaves in an instance directory after a snapshot.
fn taken(instance: &Path) -> PathBuf {
    let taken = instance.join(TAKEN_DIR);
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join(store::STATE_FILE), b"HERDSNAP").unwrap();
    let memory = File::create(taken.join(store::MEMORY_FILE)).unwrap();
    memory.set_len(1 << 20).unwrap();
    memory.write_all_at(&[1; 4096], 8192).unwrap();
    taken
}

/// Takes `meta`'s snapshot through the catalog as the supervisor does: begin, seal, finish.
fn take(
    catalog: &mut Catalog,
    instance: &Path,
    meta: &SnapshotMeta,
    wanted: bool,
) -> Option<PathBuf> {
    let job = catalog.begin(
        meta.clone(),
        instance.join("api.sock"),
        instance.to_owned(),
        true,
    );
    assert!(catalog.is_taking(&meta.source_instance));
    assert!(!catalog.wants(&meta.key(), u64::MAX), "one take at a time");
    let sealed = job.store.seal(&taken(instance), job.meta).unwrap();
    let installed = catalog.finish(&meta.key(), sealed, wanted).unwrap();
    assert!(!catalog.is_taking(&meta.source_instance));
    installed
}

#[test]
fn a_snapshot_is_installed_only_while_wanted_and_found_again_after_a_restart() {
    let (root, instance) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dir = SnapshotDir::open(&root.path().join("snapshots")).unwrap();
    let mut catalog = Catalog::load(dir.clone(), &|_| true);
    let m = meta(64);
    assert!(catalog.wants(&m.key(), 0));
    assert_eq!(
        take(&mut catalog, instance.path(), &m, false),
        None,
        "no longer wanted"
    );
    assert!(catalog.ready(&m.key()).is_none() && catalog.wants(&m.key(), 0));
    let path = take(&mut catalog, instance.path(), &m, true).unwrap();
    assert_eq!(path, catalog.path_of(&m.key()));
    assert_eq!(catalog.ready(&m.key()), Some(&m));
    assert!(!catalog.wants(&m.key(), 0));
    assert_eq!(catalog.totals(), (1, 4096));
    let again = Catalog::load(dir.clone(), &|_| true);
    assert_eq!(again.ready(&m.key()), Some(&m));
    let gone = Catalog::load(dir, &|_| false);
    assert_eq!(gone.totals(), (0, 0), "its image left the store");
    assert!(!path.exists());
}

#[test]
fn a_refused_restore_removes_the_snapshot_and_waits_before_the_next_take() {
    let (root, instance) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dir = SnapshotDir::open(&root.path().join("snapshots")).unwrap();
    let mut catalog = Catalog::load(dir, &|_| true);
    let m = meta(64);
    let path = take(&mut catalog, instance.path(), &m, true).unwrap();
    assert!(!catalog.fail(&m.key(), true, 1000));
    assert!(catalog.ready(&m.key()).is_none() && !path.exists());
    assert_eq!(catalog.key_state(&m.key()).failures, 1);
    assert!(!catalog.wants(&m.key(), 1000));
    assert!(catalog.wants(&m.key(), 1000 + RETRY_MS));
    // A failed take counts the same, and the third failure gives the key up.
    assert!(!catalog.fail(&m.key(), false, 2000));
    assert!(catalog.fail(&m.key(), false, 3000));
    assert!(!catalog.wants(&m.key(), u64::MAX));
}

#[test]
fn snapshots_no_service_wants_and_those_of_a_removed_image_go() {
    let (root, instance) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dir = SnapshotDir::open(&root.path().join("snapshots")).unwrap();
    let mut catalog = Catalog::load(dir, &|_| true);
    let (small, big) = (meta(64), meta(128));
    let small_path = take(&mut catalog, instance.path(), &small, true).unwrap();
    take(&mut catalog, instance.path(), &big, true).unwrap();
    assert_eq!(catalog.digests(), [DIGEST]);
    let wanted = BTreeSet::from([big.key()]);
    assert_eq!(catalog.retain(&wanted), [small.key()]);
    assert!(!small_path.exists());
    assert_eq!(catalog.retain(&wanted), []);
    assert!(catalog.ready(&big.key()).is_some());
    catalog.forget_image(DIGEST);
    assert_eq!(catalog.totals(), (0, 0));
    assert!(catalog.digests().is_empty());
    let left: Vec<_> = std::fs::read_dir(root.path().join("snapshots"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
