//! The image commands as the user sees them: clap argument structs, one handler per command
//! (`build`, `images`, `image inspect`, `image rm`, `save`, `load`) that prints its result, and
//! the mapping from errors to exit statuses used by `main`.
//!
//! Output convention: human-oriented progress goes to stderr; stdout carries what scripts use
//! (the digest as the last line of `build`, `save` and `load`; the table; the inspect JSON).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::build::{self, AppSource, BuildError, BuildInputs};
use super::config::{
    ConfigError, DEFAULT_CMDLINE, Healthcheck, HttpCheck, ImageConfig, KernelConfig, KernelFormat,
    TcpCheck, valid_name,
};
use super::exit;
use crate::store::{Store, StoreError};

/// Errors of the image commands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot build {0}")]
    Build(String, #[source] Box<BuildError>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
}

impl CliError {
    /// The exit status this error should end `herd` with.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => exit::USAGE,
            Self::Build(_, e) => e.exit_code(),
            Self::Store(e) => e.exit_code(),
            Self::Output(_) => exit::SOFTWARE,
        }
    }
}

/// The exit status for one error of a cause chain, if it is one of ours. `main` uses the
/// first error of the chain that has one, so errors wrapping ours (e.g. `herd run`'s) keep
/// our statuses.
pub fn exit_code_of(err: &(dyn std::error::Error + 'static)) -> Option<u8> {
    if let Some(e) = err.downcast_ref::<CliError>() {
        Some(e.exit_code())
    } else if let Some(e) = err.downcast_ref::<StoreError>() {
        Some(e.exit_code())
    } else if let Some(e) = err.downcast_ref::<BuildError>() {
        Some(e.exit_code())
    } else if let Some(e) = err.downcast_ref::<crate::run::RunError>() {
        Some(e.exit_code())
    } else if err.downcast_ref::<ConfigError>().is_some() {
        Some(exit::DATA)
    } else {
        None
    }
}

pub(crate) fn parse_env(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    if !herd_proto::valid_env_name(key) {
        return Err(format!("{key:?} is not a valid environment variable name"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

pub(crate) fn parse_health_http(s: &str) -> Result<HttpCheck, String> {
    let (port, path) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not PORT/PATH"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| format!("{port:?} is not a port (1-65535)"))?;
    Ok(HttpCheck {
        port,
        path: format!("/{path}"),
    })
}

/// Options of `herd build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The app as one ELF executable, stored at /app/<file name> with its ELF interpreter
    /// and shared libraries.
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "dir",
        conflicts_with = "dir"
    )]
    pub binary: Option<PathBuf>,
    /// The app as a directory tree that becomes the image's root.
    #[arg(long, value_name = "DIR", requires = "entrypoint")]
    pub dir: Option<PathBuf>,
    /// With --dir: the program to run, an absolute path inside DIR.
    #[arg(long, value_name = "PATH", requires = "dir")]
    pub entrypoint: Option<String>,
    /// Image name (a-z 0-9 . _ -) [default: the --binary file name].
    #[arg(long)]
    pub name: Option<String>,
    /// Image version (A-Z a-z 0-9 . _ + -); the image's ref is NAME:VERSION.
    #[arg(long)]
    pub version: String,
    /// Default argument for the app (repeatable).
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Default environment variable (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory of the app.
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub workdir: String,
    /// Default number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=32))]
    pub vcpus: u8,
    /// Default guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 128, value_parser = clap::value_parser!(u32).range(32..))]
    pub memory: u32,
    /// TCP port the app listens on (repeatable).
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// Health check: HTTP GET of PATH on PORT answers 2xx.
    #[arg(long, value_name = "PORT/PATH", value_parser = parse_health_http, conflicts_with = "health_tcp")]
    pub health_http: Option<HttpCheck>,
    /// Health check: TCP connect to PORT succeeds.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub health_tcp: Option<u16>,
    /// Guest kernel (ELF vmlinux or bzImage) [default: $HERD_KERNEL, else the newest
    /// ${HERD_CACHE:-~/.cache/herd}/kernel/*/vmlinux from guest-kernel/build.sh].
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Kernel command line stored in the image.
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// Use this file as /init instead of the herd-init built into herd.
    #[arg(long, value_name = "PATH")]
    pub init: Option<PathBuf>,
    /// Put the app on a read-only ext4 or erofs filesystem image (attached as /dev/vda at
    /// run time) instead of in the initramfs; for large apps. Needs mkfs.ext4 and debugfs
    /// (e2fsprogs) or mkfs.erofs (erofs-utils).
    #[arg(long, value_name = "ext4|erofs", value_parser = parse_fstype)]
    pub rootfs: Option<herd_proto::Fstype>,
}

fn parse_fstype(s: &str) -> Result<herd_proto::Fstype, String> {
    match s {
        "ext4" => Ok(herd_proto::Fstype::Ext4),
        "erofs" => Ok(herd_proto::Fstype::Erofs),
        _ => Err(format!("{s:?} is not ext4 or erofs")),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The app source, its entrypoint and the image name from `--binary`/`--dir` and `--name`.
fn app_source(args: &BuildArgs) -> Result<(AppSource, String, String), CliError> {
    let (app, entrypoint, default_name) = match (&args.binary, &args.dir, &args.entrypoint) {
        (Some(binary), None, None) => {
            let entrypoint = build::binary_entrypoint(binary)
                .map_err(|e| CliError::Build(binary.display().to_string(), Box::new(e)))?;
            let name = binary
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_owned);
            (AppSource::Binary(binary.clone()), entrypoint, name)
        }
        (None, Some(dir), Some(entrypoint)) => {
            (AppSource::Dir(dir.clone()), entrypoint.clone(), None)
        }
        _ => {
            let usage = "pass either --binary PATH or --dir DIR --entrypoint PATH";
            return Err(CliError::Usage(usage.into()));
        }
    };
    let name = match (&args.name, default_name) {
        (Some(name), _) => name.clone(),
        (None, Some(name)) if valid_name(&name) => name,
        _ => return Err(CliError::Usage("pass --name NAME (a-z 0-9 . _ -)".into())),
    };
    Ok((app, entrypoint, name))
}

/// The image config the build options describe.
fn image_config(
    args: BuildArgs,
    name: String,
    entrypoint: String,
    format: KernelFormat,
) -> ImageConfig {
    let healthcheck = match (args.health_http, args.health_tcp) {
        (None, None) => None,
        (http, tcp) => Some(Healthcheck::new(http, tcp.map(|port| TcpCheck { port }))),
    };
    ImageConfig {
        name,
        version: args.version,
        entrypoint: vec![entrypoint],
        args: args.args,
        env: args.env.into_iter().collect(),
        workdir: args.workdir,
        vcpus: args.vcpus,
        memory_mib: args.memory,
        ports: args.ports,
        healthcheck,
        kernel: KernelConfig {
            format,
            cmdline: args.cmdline,
        },
    }
}

/// `herd build`: builds the image, stores it, prints its digest last.
pub fn build(home: &Path, args: BuildArgs) -> Result<(), CliError> {
    let started = Instant::now();
    let (app, entrypoint, name) = app_source(&args)?;
    let (version, reference) = (args.version.clone(), format!("{name}:{}", args.version));
    let fail = |e| CliError::Build(reference.clone(), Box::new(e));
    let kernel_path =
        build::find_kernel(args.kernel.as_deref(), |k| std::env::var_os(k)).map_err(fail)?;
    let (kernel, format) = build::read_kernel(&kernel_path).map_err(fail)?;
    let init = build::init_binary(args.init.as_deref()).map_err(fail)?;
    let rootfs = args.rootfs;
    let config = image_config(args, name.clone(), entrypoint, format);
    let built = build::build(BuildInputs {
        config,
        app,
        kernel,
        init,
        rootfs,
    })
    .map_err(fail)?;
    let store = Store::open(home)?;
    let mut blobs: Vec<&[u8]> = vec![&built.config_blob, &built.kernel, &built.initramfs];
    blobs.extend(built.rootfs.as_ref().map(|(_, b)| b.as_slice()));
    let digest = store.add(&name, &version, &built.manifest, &blobs)?;
    let rootfs = built.rootfs.as_ref().map_or_else(String::new, |(t, b)| {
        format!(", rootfs {} {}", t.name(), mib(b.len() as u64))
    });
    eprintln!(
        "herd: built {reference}: kernel {} ({}), initramfs {} ({} entries){rootfs}, in {} ms",
        mib(built.kernel.len() as u64),
        kernel_path.display(),
        mib(built.initramfs.len() as u64),
        built.entries,
        started.elapsed().as_millis()
    );
    writeln!(std::io::stdout(), "{digest}").map_err(CliError::Output)
}

/// Options of `herd images`.
#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    /// Print only the digests.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `herd images`: a table of every ref, by name then newest first.
pub fn images(home: &Path, args: ImagesArgs) -> Result<(), CliError> {
    let list = Store::open(home)?.list()?;
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for image in &list {
            writeln!(out, "{}", image.entry.digest).map_err(CliError::Output)?;
        }
        return Ok(());
    }
    let mut rows = vec![[
        "NAME".to_owned(),
        "VERSION".into(),
        "DIGEST".into(),
        "SIZE".into(),
    ]];
    for image in &list {
        let e = &image.entry;
        let size = image.size.map_or_else(|| "corrupt".to_owned(), mib);
        rows.push([
            e.name.clone(),
            e.version.clone(),
            e.digest[7..19].to_owned(),
            size,
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line = format!(
            "{:w0$}  {:w1$}  {:w2$}  {:>w3$}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
        writeln!(out, "{}", line.trim_end()).map_err(CliError::Output)?;
    }
    Ok(())
}

/// Options of `herd image inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Image: NAME:VERSION, NAME (newest), or a digest prefix.
    pub image: String,
}

/// `herd image inspect`: the verified image as JSON.
pub fn inspect(home: &Path, args: InspectArgs) -> Result<(), CliError> {
    let store = Store::open(home)?;
    let image = store.resolve(&args.image)?;
    let manifest: serde_json::Value = serde_json::from_slice(&image.manifest).unwrap_or_default();
    let blob = |layer: usize, path: &Path| {
        let d = &manifest["layers"][layer];
        serde_json::json!({"digest": d["digest"], "size": d["size"], "path": path})
    };
    let size = image.manifest.len() as u64
        + manifest["config"]["size"].as_u64().unwrap_or(0)
        + (0..3)
            .map(|i| manifest["layers"][i]["size"].as_u64().unwrap_or(0))
            .sum::<u64>();
    let mut doc = serde_json::json!({
        "digest": image.digest,
        "refs": image.refs,
        "size": size,
        "config": image.config,
        "kernel": blob(0, &image.kernel),
        "initramfs": blob(1, &image.initramfs),
        "manifest": manifest,
    });
    if let Some((fstype, path)) = &image.rootfs {
        let mut layer = blob(2, path);
        layer["fstype"] = fstype.name().into();
        layer["media_type"] = manifest["layers"][2]["mediaType"].clone();
        doc["rootfs"] = layer;
    }
    let text = serde_json::to_string_pretty(&doc).expect("JSON values serialise");
    writeln!(std::io::stdout(), "{text}").map_err(CliError::Output)
}

/// Options of `herd image rm`.
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Image: NAME:VERSION, NAME (newest), or a digest prefix (removes all its refs).
    pub image: String,
}

/// `herd image rm`: removes refs, then blobs nothing uses any more.
pub fn rm(home: &Path, args: RmArgs) -> Result<(), CliError> {
    let removal = Store::open(home)?.remove(&args.image)?;
    let mut out = std::io::stdout().lock();
    for r in &removal.untagged {
        writeln!(out, "untagged: {r}").map_err(CliError::Output)?;
    }
    for d in &removal.deleted {
        writeln!(out, "deleted: {d}").map_err(CliError::Output)?;
    }
    Ok(())
}

/// Options of `herd save`.
#[derive(Debug, clap::Args)]
pub struct SaveArgs {
    /// Image: NAME:VERSION, NAME (newest), or a digest prefix.
    pub image: String,
    /// The tarball to write (an OCI image layout).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}

/// `herd save`: writes the image as an OCI layout tarball; prints its digest.
pub fn save(home: &Path, args: SaveArgs) -> Result<(), CliError> {
    let digest = Store::open(home)?.save(&args.image, &args.output)?;
    eprintln!("herd: saved {} to {}", args.image, args.output.display());
    writeln!(std::io::stdout(), "{digest}").map_err(CliError::Output)
}

/// Options of `herd load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// A tarball written by `herd save` (or any OCI layout tarball of herd images).
    pub file: PathBuf,
}

/// `herd load`: verifies and imports the images of a tarball; prints each digest.
pub fn load(home: &Path, args: LoadArgs) -> Result<(), CliError> {
    let loaded = Store::open(home)?.load(&args.file)?;
    let mut out = std::io::stdout().lock();
    for image in &loaded {
        match &image.replaced {
            Some(old) => eprintln!("herd: loaded {} (was {old})", image.reference),
            None => eprintln!("herd: loaded {}", image.reference),
        }
        writeln!(out, "{}", image.digest).map_err(CliError::Output)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_and_health_values_parse_or_explain() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(parse_env("A=").unwrap(), ("A".into(), "".into()));
        assert!(parse_env("A").unwrap_err().contains("KEY=VALUE"));
        assert!(
            parse_env("1A=x")
                .unwrap_err()
                .contains("not a valid environment variable name")
        );
        assert_eq!(
            parse_health_http("8080/healthz").unwrap(),
            HttpCheck {
                port: 8080,
                path: "/healthz".into()
            }
        );
        assert_eq!(parse_health_http("80/").unwrap().path, "/");
        assert!(
            parse_health_http("8080").is_err()
                && parse_health_http("0/x").is_err()
                && parse_health_http("x/y").is_err()
        );
    }

    #[test]
    fn exit_codes_follow_the_error_kind() {
        let not_found = StoreError::NotFound("x".into());
        assert_eq!(exit_code_of(&not_found), Some(exit::NO_INPUT));
        assert_eq!(
            exit_code_of(&CliError::Usage("u".into())),
            Some(exit::USAGE)
        );
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        let read = BuildError::Read {
            what: "app binary",
            path: "/x".into(),
            source: missing,
        };
        assert_eq!(
            exit_code_of(&CliError::Build("a:1".into(), Box::new(read))),
            Some(exit::NO_INPUT)
        );
        assert_eq!(exit_code_of(&BuildError::NoInit), Some(exit::NO_INPUT));
        assert_eq!(exit_code_of(&BuildError::KernelMismatch), Some(exit::DATA));
        assert_eq!(exit_code_of(&std::io::Error::other("x")), None);
    }
}
