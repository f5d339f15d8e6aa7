//! The root filesystem image of `herd build --rootfs ext4|erofs`: the app's tree written to a
//! staging directory and turned into a filesystem image by `mkfs.ext4 -d` or `mkfs.erofs`.
//!
//! Reproducible like the rest of the image: the UUID (and ext4's directory hash seed) derive
//! from the tree's content, every inode timestamp is 0 (ext4's superblock times 1) and every
//! owner 0:0. `mkfs.ext4` copies the
//! staged files' ctime, crtime and owners, so a `debugfs -w` pass resets them afterwards; ext4
//! is made without a journal (a read-only root needs none) and sized from the tree with
//! headroom.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use herd_proto::Fstype;

use super::tree::Node;

/// Errors making the filesystem image.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("cannot stage the root filesystem's files in {0}")]
    Stage(String, #[source] std::io::Error),
    #[error("cannot run {0} (install {1})")]
    Spawn(&'static str, &'static str, #[source] std::io::Error),
    #[error("{0} failed: {1}")]
    Tool(&'static str, String),
    #[error("ext4 root filesystems cannot hold the path {0:?} (a quote or line break)")]
    Path(String),
}

/// Builds the filesystem image of `nodes` (absolute paths, as [`super::tree::Tree`] keeps them).
pub fn make(fstype: Fstype, nodes: BTreeMap<String, Node>) -> Result<Vec<u8>, RootfsError> {
    let uuid = content_uuid(&nodes);
    let work =
        tempfile::tempdir().map_err(|e| RootfsError::Stage("a temporary directory".into(), e))?;
    let root = work.path().join("root");
    let paths = stage(&root, &nodes)?;
    let image = work.path().join(format!("rootfs.{}", fstype.name()));
    match fstype {
        Fstype::Ext4 => {
            mkfs_ext4(&root, &image, &uuid, size_kib(&nodes))?;
            reset_ext4_inodes(&image, &paths)?;
        }
        Fstype::Erofs => mkfs_erofs(&root, &image, &uuid)?,
    }
    std::fs::read(&image).map_err(|e| RootfsError::Stage(image.display().to_string(), e))
}

/// A version-4-shaped UUID from the sha256 of the tree.
fn content_uuid(nodes: &BTreeMap<String, Node>) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for (path, node) in nodes {
        h.update(path.as_bytes());
        h.update(format!("\0{node:?}", node = NodeKey(node)).as_bytes());
        if let Node::File { data, .. } = node {
            h.update(data);
        }
    }
    let mut b: [u8; 16] = h.finalize()[..16].try_into().expect("16 of 32 bytes");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

/// A node's kind and metadata without file data (hashed separately, unformatted).
struct NodeKey<'a>(&'a Node);

impl std::fmt::Debug for NodeKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Node::Dir { mode } => write!(f, "d{mode:o}"),
            Node::File { mode, data } => write!(f, "f{mode:o}:{}", data.len()),
            Node::Symlink { target } => write!(f, "l{target}"),
            Node::CharDev { mode, major, minor } => write!(f, "c{mode:o}:{major}:{minor}"),
        }
    }
}

/// Filesystem size: data and metadata rounded to 4 KiB blocks, plus a quarter and 4 MiB.
fn size_kib(nodes: &BTreeMap<String, Node>) -> u64 {
    let blocks: u64 = nodes
        .values()
        .map(|n| match n {
            Node::File { data, .. } => (data.len() as u64).div_ceil(4096) + 1,
            _ => 1,
        })
        .sum();
    let inode_tables = (nodes.len() as u64 + 64) * 256 / 4096 + 1;
    let kib = (blocks + inode_tables) * 4;
    kib + kib / 4 + 4096
}

/// Writes the tree under `root`; returns every path written (parents before children).
fn stage(root: &Path, nodes: &BTreeMap<String, Node>) -> Result<Vec<String>, RootfsError> {
    let err = |p: &Path| {
        let p = p.display().to_string();
        move |e| RootfsError::Stage(p, e)
    };
    std::fs::create_dir(root).map_err(err(root))?;
    let mut paths = Vec::with_capacity(nodes.len());
    // Directory modes last: a read-only directory must still take its children first.
    let mut dirs = Vec::new();
    for (path, node) in nodes {
        let host = root.join(path.trim_start_matches('/'));
        if let Some(parent) = host.parent() {
            std::fs::create_dir_all(parent).map_err(err(parent))?;
        }
        match node {
            Node::Dir { mode } => {
                std::fs::create_dir_all(&host).map_err(err(&host))?;
                dirs.push((host, *mode));
            }
            Node::File { mode, data } => {
                std::fs::write(&host, data).map_err(err(&host))?;
                let perms = std::fs::Permissions::from_mode(*mode);
                std::fs::set_permissions(&host, perms).map_err(err(&host))?;
            }
            Node::Symlink { target } => {
                std::os::unix::fs::symlink(target, &host).map_err(err(&host))?;
            }
            // Device nodes live on devtmpfs; the root filesystem gets none.
            Node::CharDev { .. } => continue,
        }
        paths.push(path.clone());
    }
    for (host, mode) in dirs.into_iter().rev() {
        let perms = std::fs::Permissions::from_mode(mode);
        std::fs::set_permissions(&host, perms).map_err(err(&host))?;
    }
    // Implicit parents (made by create_dir_all) are on the filesystem too.
    let mut all: Vec<String> = paths
        .iter()
        .flat_map(|p| {
            let mut ancestors: Vec<String> = Path::new(p)
                .ancestors()
                .map(|a| a.display().to_string())
                .collect();
            ancestors.pop(); // "/" is reset on its own.
            ancestors
        })
        .collect();
    all.sort();
    all.dedup();
    Ok(all)
}

/// Runs `cmd`; returns its stderr.
fn run(
    tool: &'static str,
    package: &'static str,
    cmd: &mut Command,
) -> Result<String, RootfsError> {
    let out = cmd
        // e2fsprogs reads a fake time of 0 as "not set"; 1 is the nearest fixed time.
        .env("E2FSPROGS_FAKE_TIME", "1")
        .env("SOURCE_DATE_EPOCH", "0")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| RootfsError::Spawn(tool, package, e))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', "; ");
        return Err(RootfsError::Tool(tool, format!("{} ({text})", out.status)));
    }
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

fn mkfs_ext4(root: &Path, image: &Path, uuid: &str, kib: u64) -> Result<(), RootfsError> {
    let inodes = (kib / 4).max(128).to_string();
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args([
        "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0",
    ])
    .args(["-N", &inodes, "-L", "herd-rootfs", "-U", uuid])
    .args(["-O", "^has_journal,^resize_inode"])
    .arg("-E")
    .arg(format!(
        "hash_seed={uuid},root_owner=0:0,lazy_itable_init=0"
    ))
    .arg("-d")
    .arg(root)
    .arg(image)
    .arg(format!("{kib}k"));
    run("mkfs.ext4", "e2fsprogs", &mut cmd).map(drop)
}

/// Sets every inode's times to 0 and owner to 0:0 (mkfs.ext4 -d copies them from the
/// staging files).
fn reset_ext4_inodes(image: &Path, paths: &[String]) -> Result<(), RootfsError> {
    let mut script = Vec::new();
    let fixed = ["/", "/lost+found"];
    for path in fixed.into_iter().chain(paths.iter().map(String::as_str)) {
        if path.contains(['"', '\n']) {
            return Err(RootfsError::Path(path.to_owned()));
        }
        for field in ["atime", "ctime", "mtime", "crtime", "uid", "gid"] {
            writeln!(script, "sif \"{path}\" {field} 0").expect("writing to a Vec");
        }
    }
    let file = image.with_extension("debugfs");
    std::fs::write(&file, script).map_err(|e| RootfsError::Stage(file.display().to_string(), e))?;
    let mut cmd = Command::new("debugfs");
    cmd.arg("-w").arg("-f").arg(&file).arg(image);
    // debugfs exits 0 whatever its commands did; anything but its banner is an error.
    let stderr = run("debugfs", "e2fsprogs", &mut cmd)?;
    match stderr.lines().find(|l| !l.starts_with("debugfs ")) {
        Some(line) => Err(RootfsError::Tool("debugfs", line.to_owned())),
        None => Ok(()),
    }
}

fn mkfs_erofs(root: &Path, image: &Path, uuid: &str) -> Result<(), RootfsError> {
    let mut cmd = Command::new("mkfs.erofs");
    cmd.args(["--quiet", "-T0", "--all-root", "-U", uuid])
        .arg(image)
        .arg(root);
    run("mkfs.erofs", "erofs-utils", &mut cmd).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::build::{AppSource, BuildInputs, build};
    use crate::image::config::{DEFAULT_CMDLINE, ImageConfig, KernelConfig, KernelFormat};

    fn inputs(dir: &Path, fstype: Fstype) -> BuildInputs {
        BuildInputs {
            config: ImageConfig {
                name: "t".into(),
                version: "1".into(),
                entrypoint: vec!["/bin/app".into()],
                args: vec![],
                env: Default::default(),
                workdir: "/".into(),
                vcpus: 1,
                memory_mib: 64,
                ports: vec![],
                healthcheck: None,
                kernel: KernelConfig {
                    format: KernelFormat::Elf,
                    cmdline: DEFAULT_CMDLINE.into(),
                },
            },
            app: AppSource::Dir(dir.to_owned()),
            kernel: b"\x7fELF-kernel".to_vec(),
            init: b"init".to_vec(),
            rootfs: Some(fstype),
        }
    }

    fn app_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::create_dir_all(dir.path().join("ro/sub")).unwrap();
        std::fs::write(dir.path().join("bin/app"), b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::write(dir.path().join("ro/sub/data"), vec![7u8; 100_000]).unwrap();
        let exec = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(dir.path().join("bin/app"), exec).unwrap();
        let ro = std::fs::Permissions::from_mode(0o555);
        std::fs::set_permissions(dir.path().join("ro"), ro).unwrap();
        std::os::unix::fs::symlink("bin/app", dir.path().join("start")).unwrap();
        dir
    }

    fn have(tool: &str) -> bool {
        Command::new(tool).arg("-V").output().is_ok()
    }

    #[test]
    fn ext4_rootfs_is_reproducible_and_holds_the_tree() {
        if !have("mkfs.ext4") || !have("debugfs") {
            eprintln!("skipped: no mkfs.ext4/debugfs (e2fsprogs)");
            return;
        }
        let dir = app_dir();
        let a = build(inputs(dir.path(), Fstype::Ext4)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let b = build(inputs(dir.path(), Fstype::Ext4)).unwrap();
        assert_eq!(a.digest, b.digest, "two builds differ");
        let (fstype, image) = a.rootfs.as_ref().unwrap();
        assert_eq!(*fstype, Fstype::Ext4);
        let manifest = String::from_utf8(a.manifest.clone()).unwrap();
        assert!(manifest.contains("application/vnd.herd.rootfs.v1.ext4"));
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), image).unwrap();
        let ls = |dir: &str| {
            let out = Command::new("debugfs")
                .args(["-R", &format!("ls -l {dir}")])
                .arg(file.path())
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let root = ls("/");
        for name in [
            "bin", "ro", "start", "etc", "dev", "proc", "sys", "tmp", "run",
        ] {
            assert!(root.contains(&format!(" {name}")), "{name} missing: {root}");
        }
        assert!(
            ls("/bin").contains("100755 (1)      0      0"),
            "{}",
            ls("/bin")
        );
        assert!(ls("/etc").contains("resolv.conf"));
        assert!(ls("/ro/sub").contains("100000"), "{}", ls("/ro/sub"));
        // The initramfs has herd's files and the mount point, not the app.
        let has = |needle: &str| {
            a.initramfs
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        };
        assert!(has("newroot\0") && has("herd/image.json\0") && !has("bin/app\0"));
        assert!(has(r#""rootfs":{"device":"/dev/vda","fstype":"ext4"}"#));
    }

    #[test]
    fn erofs_rootfs_is_reproducible() {
        if !have("mkfs.erofs") {
            eprintln!("skipped: no mkfs.erofs (erofs-utils)");
            return;
        }
        let dir = app_dir();
        let a = build(inputs(dir.path(), Fstype::Erofs)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let b = build(inputs(dir.path(), Fstype::Erofs)).unwrap();
        assert_eq!(a.digest, b.digest, "two builds differ");
        let image = &a.rootfs.as_ref().unwrap().1;
        // The erofs superblock magic at offset 1024.
        assert_eq!(image[1024..1028], 0xE0F5_E1E2u32.to_le_bytes());
    }
}
