//! Assembling an image from its inputs: the initramfs (herd-init as `/init`,
//! `/herd/image.json`, `/dev/console`, mount points and the app), the config blob and the OCI
//! manifest tying them to the kernel. Pure of any store: the result is a set of byte blobs
//! that the store writes.
//!
//! Everything here is deterministic: the tree is sorted, owners are 0:0, mtimes 0 and modes
//! keep only rwx bits, so the same inputs always give the same manifest digest.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, Digest, ImageManifestBuilder, MediaType};

use super::config::{ConfigError, ImageConfig, KernelFormat};
use super::elf::{ElfError, ElfInfo};
use super::exit;
use super::ldso::{LdsoError, Resolver};
use super::rootfs::{self, RootfsError};
use super::tree::{Node, Tree, TreeError};
use super::{
    ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, INITRAMFS_MEDIA_TYPE, KERNEL_MEDIA_TYPE, canonical_json,
    rootfs_media_type, sha256_digest,
};
use herd_proto::{Fstype, ROOTFS_DEVICE, Rootfs};

/// Directories the initramfs always has, where init mounts the kernel's filesystems.
pub const MOUNT_POINTS: [&str; 5] = ["/dev", "/proc", "/sys", "/tmp", "/run"];
/// Where `--binary` apps go in the image.
pub const APP_DIR: &str = "/app";
/// Where init mounts the root filesystem image before switching to it.
pub const NEWROOT: &str = "/newroot";
/// Created empty in a root filesystem image that lacks it: init bind-mounts over it.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Errors building an image.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("kernel {0} is neither an ELF vmlinux nor a bzImage")]
    KernelFormat(PathBuf),
    #[error("kernel format in the config does not match the kernel file")]
    KernelMismatch,
    #[error(
        "no guest kernel found: pass --kernel PATH, set HERD_KERNEL, or run guest-kernel/build.sh to build ours into {0}"
    )]
    NoKernel(PathBuf),
    #[error("this herd binary has no herd-init built in; pass --init PATH")]
    NoInit,
    #[error("invalid image config")]
    Config(#[source] ConfigError),
    #[error("app binary {0} is unusable")]
    Binary(PathBuf, #[source] ElfError),
    #[error("app binary {0} cannot be bundled")]
    Bundle(PathBuf, #[source] LdsoError),
    #[error("{0} is not executable")]
    NotExecutable(String),
    #[error("entrypoint {entrypoint} is not a file in {dir}")]
    NoEntrypoint { entrypoint: String, dir: PathBuf },
    #[error("ELF interpreter {interp} of entrypoint {entrypoint} is not in {dir}")]
    NoInterpreter {
        interp: String,
        entrypoint: String,
        dir: PathBuf,
    },
    #[error("{0} is neither a regular file, a directory nor a symlink")]
    FileType(PathBuf),
    #[error("{0} is not a UTF-8 path")]
    NonUtf8(PathBuf),
    #[error("{dir} must not contain {path}: herd puts its own file there")]
    Reserved { dir: PathBuf, path: &'static str },
    #[error("staging the image's files")]
    Tree(#[source] TreeError),
    #[error("making the root filesystem image")]
    Rootfs(#[source] RootfsError),
}

impl BuildError {
    /// The exit status this error should end `herd` with.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Read { source, .. } => exit::io_input(source),
            Self::Bundle(_, e) => ldso_exit_code(e),
            Self::NoKernel(_)
            | Self::NoInit
            | Self::NoEntrypoint { .. }
            | Self::NoInterpreter { .. } => exit::NO_INPUT,
            _ => exit::DATA,
        }
    }
}

fn ldso_exit_code(e: &LdsoError) -> u8 {
    match e {
        LdsoError::MissingInterpreter { .. } | LdsoError::MissingLibrary { .. } => exit::NO_INPUT,
        LdsoError::Read(_, source) => exit::io_input(source),
        LdsoError::Path(..) | LdsoError::Interpreter(..) => exit::DATA,
    }
}

/// Where the app comes from.
#[derive(Clone, Debug)]
pub enum AppSource {
    /// One ELF executable, stored at `/app/<file name>` with what it needs to load.
    Binary(PathBuf),
    /// A directory tree that becomes the image's `/`.
    Dir(PathBuf),
}

/// Everything an image is made of.
#[derive(Clone, Debug)]
pub struct BuildInputs {
    /// The config; `kernel.format` must match the kernel bytes.
    pub config: ImageConfig,
    pub app: AppSource,
    pub kernel: Vec<u8>,
    /// herd-init, stored as `/init`.
    pub init: Vec<u8>,
    /// Put the app on a filesystem image of this type (a third layer) instead of in the
    /// initramfs.
    pub rootfs: Option<Fstype>,
}

/// The blobs of a built image.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub config: ImageConfig,
    pub config_blob: Vec<u8>,
    pub kernel: Vec<u8>,
    pub initramfs: Vec<u8>,
    /// The root filesystem image, with `--rootfs`.
    pub rootfs: Option<(Fstype, Vec<u8>)>,
    pub manifest: Vec<u8>,
    /// `sha256:<hex>` of the manifest: the image's identity.
    pub digest: String,
    /// Entries in the initramfs.
    pub entries: usize,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|source| BuildError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Reads a kernel file and detects its format.
pub fn read_kernel(path: &Path) -> Result<(Vec<u8>, KernelFormat), BuildError> {
    let bytes = read("kernel", path)?;
    let format =
        KernelFormat::detect(&bytes).ok_or_else(|| BuildError::KernelFormat(path.to_owned()))?;
    Ok((bytes, format))
}

/// The kernel to use: `explicit`, else `$HERD_KERNEL`, else the most recently modified
/// `${HERD_CACHE:-$HOME/.cache/herd}/kernel/*/vmlinux`. `env` reads the environment.
pub fn find_kernel(
    explicit: Option<&Path>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<PathBuf, BuildError> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    if let Some(path) = env("HERD_KERNEL").filter(|p| !p.is_empty()) {
        return Ok(path.into());
    }
    let cache = match env("HERD_CACHE").filter(|p| !p.is_empty()) {
        Some(cache) => PathBuf::from(cache),
        None => PathBuf::from(env("HOME").unwrap_or_default()).join(".cache/herd"),
    };
    let kernels = cache.join("kernel");
    let newest = std::fs::read_dir(&kernels)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let path = entry.ok()?.path().join("vmlinux");
            Some((std::fs::metadata(&path).ok()?.modified().ok()?, path))
        })
        .max();
    newest
        .map(|(_, path)| path)
        .ok_or(BuildError::NoKernel(kernels))
}

/// herd-init: the file at `explicit`, else the copy built into this binary.
pub fn init_binary(explicit: Option<&Path>) -> Result<Vec<u8>, BuildError> {
    match explicit {
        Some(path) => read("herd-init", path),
        None if crate::embedded::herd_init().is_empty() => Err(BuildError::NoInit),
        None => Ok(crate::embedded::herd_init().to_vec()),
    }
}

/// The entrypoint of a `--binary` app: `/app/<file name>`.
pub fn binary_entrypoint(binary: &Path) -> Result<String, BuildError> {
    let name = binary
        .file_name()
        .ok_or_else(|| BuildError::NotExecutable(binary.display().to_string()))?;
    let name = name
        .to_str()
        .ok_or_else(|| BuildError::NonUtf8(binary.to_owned()))?;
    Ok(format!("{APP_DIR}/{name}"))
}

/// Builds the image: stages and checks the app's tree, makes the initramfs (and with
/// `rootfs`, the filesystem image), then the config and manifest.
pub fn build(inputs: BuildInputs) -> Result<BuiltImage, BuildError> {
    let BuildInputs {
        config,
        app,
        kernel,
        init,
        rootfs,
    } = inputs;
    config.validate().map_err(BuildError::Config)?;
    if KernelFormat::detect(&kernel) != Some(config.kernel.format) {
        return Err(BuildError::KernelMismatch);
    }
    let mut tree = Tree::new();
    match &app {
        AppSource::Binary(path) => add_binary(&mut tree, path, &config.entrypoint[0])?,
        AppSource::Dir(dir) => {
            add_dir_tree(&mut tree, dir, "")?;
            check_dir_app(&tree, dir, &config.entrypoint[0])?;
        }
    }
    let mut runtime = config.runtime();
    let rootfs = match rootfs {
        None => None,
        Some(fstype) => {
            add_rootfs_files(&mut tree)?;
            let image = rootfs::make(fstype, tree.into_nodes()).map_err(BuildError::Rootfs)?;
            tree = Tree::new();
            tree.ensure_dir(NEWROOT).map_err(BuildError::Tree)?;
            runtime.rootfs = Some(Rootfs {
                device: ROOTFS_DEVICE.into(),
                fstype,
            });
            Some((fstype, image))
        }
    };
    add_herd_files(&mut tree, &runtime, init)?;
    let entries = tree.len();
    let initramfs = tree.into_cpio().map_err(BuildError::Tree)?;
    let config_blob = config.to_canonical_json();
    let rootfs_layer = rootfs.as_ref().map(|(t, b)| (*t, b.as_slice()));
    let manifest = manifest(&config_blob, &kernel, &initramfs, rootfs_layer);
    let digest = sha256_digest(&manifest);
    Ok(BuiltImage {
        config,
        config_blob,
        kernel,
        initramfs,
        rootfs,
        manifest,
        digest,
        entries,
    })
}

/// The image manifest (canonical JSON) for the blobs.
pub fn manifest(
    config: &[u8],
    kernel: &[u8],
    initramfs: &[u8],
    rootfs: Option<(Fstype, &[u8])>,
) -> Vec<u8> {
    let descriptor = |media_type: &str, bytes: &[u8]| {
        let digest: Digest = sha256_digest(bytes)
            .parse()
            .expect("sha256 digests are valid");
        Descriptor::new(MediaType::from(media_type), bytes.len() as u64, digest)
    };
    let mut layers = vec![
        descriptor(KERNEL_MEDIA_TYPE, kernel),
        descriptor(INITRAMFS_MEDIA_TYPE, initramfs),
    ];
    if let Some((fstype, bytes)) = rootfs {
        layers.push(descriptor(&rootfs_media_type(fstype), bytes));
    }
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .artifact_type(MediaType::from(ARTIFACT_TYPE))
        .config(descriptor(CONFIG_MEDIA_TYPE, config))
        .layers(layers)
        .build()
        .expect("every required manifest field is set");
    canonical_json(&manifest)
}

/// What a root filesystem image needs besides the app: the mount points init moves its
/// mounts to, and an `/etc/resolv.conf` to bind-mount name servers over.
fn add_rootfs_files(tree: &mut Tree) -> Result<(), BuildError> {
    for dir in MOUNT_POINTS {
        tree.ensure_dir(dir).map_err(BuildError::Tree)?;
    }
    if tree
        .lookup(RESOLV_CONF)
        .map_err(BuildError::Tree)?
        .is_none()
    {
        tree.ensure_dir("/etc").map_err(BuildError::Tree)?;
        tree.add_file(RESOLV_CONF, 0o644, Vec::new())
            .map_err(BuildError::Tree)?;
    }
    Ok(())
}

fn add_herd_files(
    tree: &mut Tree,
    runtime: &herd_proto::ImageRuntime,
    init: Vec<u8>,
) -> Result<(), BuildError> {
    let runtime = runtime.to_canonical_json().into_bytes();
    tree.add_file("/init", 0o755, init)
        .map_err(BuildError::Tree)?;
    tree.add_file(herd_proto::IMAGE_RUNTIME_PATH, 0o644, runtime)
        .map_err(BuildError::Tree)?;
    for dir in MOUNT_POINTS {
        tree.ensure_dir(dir).map_err(BuildError::Tree)?;
    }
    tree.add_char_dev("/dev/console", 0o600, 5, 1)
        .map_err(BuildError::Tree)
}

fn add_binary(tree: &mut Tree, path: &Path, guest: &str) -> Result<(), BuildError> {
    let real = std::fs::canonicalize(path).map_err(|source| BuildError::Read {
        what: "app binary",
        path: path.to_owned(),
        source,
    })?;
    let data = read("app binary", &real)?;
    let mode = std::fs::metadata(&real)
        .map(|m| m.permissions().mode())
        .unwrap_or(0);
    if !real.is_file() || mode & 0o111 == 0 {
        return Err(BuildError::NotExecutable(path.display().to_string()));
    }
    let real_str = real
        .to_str()
        .ok_or_else(|| BuildError::NonUtf8(real.clone()))?;
    let elf_err = |e| BuildError::Binary(path.to_owned(), e);
    let info = ElfInfo::parse(real_str, &data).map_err(elf_err)?;
    info.check_executable(real_str).map_err(elf_err)?;
    let bundle = Resolver::new(Path::new("/"))
        .bundle(real_str, guest, &info)
        .map_err(|e| BuildError::Bundle(path.to_owned(), e))?;
    for (link, target) in &bundle.symlinks {
        tree.add_symlink(link, target).map_err(BuildError::Tree)?;
    }
    for file in bundle.files {
        tree.add_file(&file.guest, file.mode, file.data)
            .map_err(BuildError::Tree)?;
    }
    tree.add_file(guest, mode, data).map_err(BuildError::Tree)?;
    for (link, target) in &bundle.fallback_symlinks {
        tree.add_symlink_if_absent(link, target)
            .map_err(BuildError::Tree)?;
    }
    Ok(())
}

/// Adds the tree under host directory `dir` at image path `guest` (`""` for the root).
fn add_dir_tree(tree: &mut Tree, dir: &Path, guest: &str) -> Result<(), BuildError> {
    let what = "app directory";
    let entries = std::fs::read_dir(dir).map_err(|source| BuildError::Read {
        what,
        path: dir.to_owned(),
        source,
    })?;
    let mut entries: Vec<_> =
        entries
            .collect::<Result<_, _>>()
            .map_err(|source| BuildError::Read {
                what,
                path: dir.to_owned(),
                source,
            })?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let host = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| BuildError::NonUtf8(host.clone()))?;
        let path = format!("{guest}/{name}");
        let meta = std::fs::symlink_metadata(&host).map_err(|source| BuildError::Read {
            what,
            path: host.clone(),
            source,
        })?;
        let mode = meta.permissions().mode();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&host).map_err(|source| BuildError::Read {
                what,
                path: host.clone(),
                source,
            })?;
            let target = target
                .to_str()
                .ok_or_else(|| BuildError::NonUtf8(host.clone()))?;
            tree.add_symlink(&path, target).map_err(BuildError::Tree)?;
        } else if meta.is_dir() {
            tree.add_dir(&path, mode).map_err(BuildError::Tree)?;
            add_dir_tree(tree, &host, &path)?;
        } else if meta.is_file() {
            tree.add_file(&path, mode, read(what, &host)?)
                .map_err(BuildError::Tree)?;
        } else {
            return Err(BuildError::FileType(host));
        }
    }
    Ok(())
}

/// Checks a `--dir` tree: herd's own paths are free, the entrypoint is an executable file and,
/// if it is a dynamic ELF, its interpreter is in the tree too.
fn check_dir_app(tree: &Tree, dir: &Path, entrypoint: &str) -> Result<(), BuildError> {
    for path in ["/init", herd_proto::IMAGE_RUNTIME_PATH] {
        if tree.lookup(path).map_err(BuildError::Tree)?.is_some() {
            return Err(BuildError::Reserved {
                dir: dir.to_owned(),
                path,
            });
        }
    }
    let missing = || BuildError::NoEntrypoint {
        entrypoint: entrypoint.to_owned(),
        dir: dir.to_owned(),
    };
    let Some(Node::File { mode, data }) = tree.lookup(entrypoint).map_err(|_| missing())? else {
        return Err(missing());
    };
    if mode & 0o111 == 0 {
        return Err(BuildError::NotExecutable(format!(
            "entrypoint {entrypoint}"
        )));
    }
    if let Ok(ElfInfo {
        interp: Some(interp),
        ..
    }) = ElfInfo::parse(entrypoint, data)
        && !matches!(tree.lookup(&interp), Ok(Some(Node::File { .. })))
    {
        let (entrypoint, dir) = (entrypoint.to_owned(), dir.to_owned());
        return Err(BuildError::NoInterpreter {
            interp,
            entrypoint,
            dir,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::config::{DEFAULT_CMDLINE, KernelConfig};

    fn config(entrypoint: &str) -> ImageConfig {
        ImageConfig {
            name: "t".into(),
            version: "1".into(),
            entrypoint: vec![entrypoint.into()],
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
        }
    }

    fn inputs(app: AppSource, entrypoint: &str) -> BuildInputs {
        BuildInputs {
            config: config(entrypoint),
            app,
            kernel: b"\x7fELF-kernel".to_vec(),
            init: b"init".to_vec(),
            rootfs: None,
        }
    }

    #[test]
    fn dir_builds_are_reproducible_and_hold_herd_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/app"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            dir.path().join("bin/app"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        std::os::unix::fs::symlink("bin/app", dir.path().join("start")).unwrap();
        let a = build(inputs(AppSource::Dir(dir.path().into()), "/start")).unwrap();
        let b = build(inputs(AppSource::Dir(dir.path().into()), "/start")).unwrap();
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.initramfs, b.initramfs);
        assert_eq!(a.digest, sha256_digest(&a.manifest));
        let text = String::from_utf8(a.manifest.clone()).unwrap();
        assert!(
            text.starts_with(
                r#"{"artifactType":"application/vnd.herd.image.v1","config":{"digest":"sha256:"#
            ),
            "{text}"
        );
        for needle in [
            "init\0",
            "herd/image.json\0",
            "dev/console\0",
            "proc\0",
            "bin/app\0",
            "start\0",
        ] {
            assert!(
                a.initramfs
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes()),
                "{needle}"
            );
        }
        // The setuid bit is dropped: mode 100755 for bin/app.
        assert!(a.initramfs.windows(8).any(|w| w == b"000081ed"));
    }

    #[test]
    fn bad_dir_apps_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("data"), b"x").unwrap();
        let err = build(inputs(AppSource::Dir(dir.path().into()), "/bin/app")).unwrap_err();
        assert!(matches!(err, BuildError::NoEntrypoint { .. }), "{err}");
        let err = build(inputs(AppSource::Dir(dir.path().into()), "/data")).unwrap_err();
        assert_eq!(err.to_string(), "entrypoint /data is not executable");
        std::fs::write(dir.path().join("init"), b"x").unwrap();
        let err = build(inputs(AppSource::Dir(dir.path().into()), "/data")).unwrap_err();
        assert!(
            matches!(err, BuildError::Reserved { path: "/init", .. }),
            "{err}"
        );
        let mut bad = inputs(AppSource::Dir(dir.path().into()), "/data");
        bad.kernel = b"MZ".to_vec();
        assert!(matches!(build(bad), Err(BuildError::KernelMismatch)));
    }

    #[test]
    fn kernel_is_found_explicitly_by_env_or_in_the_cache() {
        let cache = tempfile::tempdir().unwrap();
        let env = |k: &str| (k == "HERD_CACHE").then(|| cache.path().as_os_str().to_owned());
        let err = find_kernel(None, env).unwrap_err();
        assert!(err.to_string().contains("guest-kernel/build.sh"), "{err}");
        for (i, version) in ["6.1.1", "6.1.2"].iter().enumerate() {
            let d = cache.path().join("kernel").join(version);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("vmlinux"), b"k").unwrap();
            let t = std::time::SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(1000 * (2 - i as u64));
            std::fs::File::options()
                .write(true)
                .open(d.join("vmlinux"))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        assert_eq!(
            find_kernel(None, env).unwrap(),
            cache.path().join("kernel/6.1.1/vmlinux")
        );
        let env2 = |k: &str| (k == "HERD_KERNEL").then(|| OsString::from("/k"));
        assert_eq!(find_kernel(None, env2).unwrap(), PathBuf::from("/k"));
        assert_eq!(
            find_kernel(Some(Path::new("/x")), env2).unwrap(),
            PathBuf::from("/x")
        );
    }
}
