//! The image config (`application/vnd.herd.image.config.v1+json`): what an image is called,
//! what it runs and with which defaults, and how its kernel boots. It is one blob of the
//! image, so its canonical JSON is part of the image's identity.
//!
//! Parsing rejects unknown fields and [`ImageConfig::validate`] checks every documented
//! invariant, both when `herd build` writes a config and whenever the store reads one back.

use std::collections::BTreeMap;

use herd_proto::{ImageRuntime, ProtoError};
use serde::{Deserialize, Serialize};

/// Kernel command line stored when `--cmdline` is not given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off nomodule quiet";
/// Most vCPUs an image may ask for (herd-vmm's limit).
pub const MAX_VCPUS: u8 = 32;
/// Least guest memory an image may ask for, in MiB (herd-vmm's limit).
pub const MIN_MEMORY_MIB: u32 = 32;
/// Longest kernel command line (Linux x86's `COMMAND_LINE_SIZE` less the NUL).
pub const MAX_CMDLINE: usize = 2047;
const MAX_NAME: usize = 128;

/// What is wrong with an image config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("image config is not a valid herd config document")]
    Parse(#[source] serde_json::Error),
    #[error(
        "invalid image name {0:?}: use 1 to 128 of a-z 0-9 . _ -, starting with a letter or digit"
    )]
    Name(String),
    #[error(
        "invalid image version {0:?}: use 1 to 128 of A-Z a-z 0-9 . _ + -, starting with a letter or digit"
    )]
    Version(String),
    #[error("vcpus must be 1 to {MAX_VCPUS}, not {0}")]
    Vcpus(u8),
    #[error("memory must be at least {MIN_MEMORY_MIB} MiB, not {0}")]
    Memory(u32),
    #[error("port 0 is not a valid port (use 1 to 65535)")]
    PortZero,
    #[error("port {0} is listed twice")]
    DuplicatePort(u16),
    #[error("a healthcheck has exactly one of \"http\" or \"tcp\"")]
    HealthShape,
    #[error("healthcheck path {0:?} must start with / and hold no spaces or control characters")]
    HealthPath(String),
    #[error("healthcheck interval_ms and retries must be at least 1")]
    HealthTiming,
    #[error("kernel command line must be 1 to {MAX_CMDLINE} printable ASCII characters")]
    Cmdline,
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    #[error("the default run settings are invalid")]
    Runtime(#[source] ProtoError),
}

/// The image config document (see `docs/image-format.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// Image name: the first half of the `name:version` reference.
    pub name: String,
    /// Image version: the second half of the reference.
    pub version: String,
    /// Program and fixed leading arguments; `entrypoint[0]` is an absolute guest path.
    pub entrypoint: Vec<String>,
    /// Default arguments after the entrypoint, replaced by an instance's args.
    #[serde(default)]
    pub args: Vec<String>,
    /// Default environment; an instance's env is merged over it.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory of the app.
    #[serde(default = "root_dir")]
    pub workdir: String,
    /// Default vCPUs, 1 to 32.
    #[serde(default = "one")]
    pub vcpus: u8,
    /// Default guest memory in MiB, at least 32.
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// TCP ports the app listens on.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// How to tell the app is healthy; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// The guest kernel's format and command line.
    pub kernel: KernelConfig,
}

/// A health check: exactly one of `http` or `tcp`, with its timing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Healthcheck {
    /// Healthy when `GET path` on `port` answers 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    /// Healthy when a TCP connection to `port` is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    /// Time between probes.
    #[serde(default = "default_interval")]
    pub interval_ms: u32,
    /// Failed probes in a row before the app counts as unhealthy.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

/// `{"port": 8080, "path": "/healthz"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub port: u16,
    pub path: String,
}

/// `{"port": 5432}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpCheck {
    pub port: u16,
}

/// How the image's kernel boots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelConfig {
    /// ELF vmlinux or bzImage, detected from the kernel file at build time.
    pub format: KernelFormat,
    /// Kernel command line.
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
}

/// The guest kernel's file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelFormat {
    /// An ELF vmlinux (booted through PVH or its 64-bit entry).
    Elf,
    /// A Linux bzImage.
    Bzimage,
}

fn root_dir() -> String {
    "/".to_owned()
}
fn one() -> u8 {
    1
}
fn default_memory() -> u32 {
    128
}
fn default_interval() -> u32 {
    1000
}
fn default_retries() -> u32 {
    3
}
fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_owned()
}

impl KernelFormat {
    /// Detects the format from the file's first bytes: the ELF magic, or a bzImage's `HdrS`
    /// setup-header signature at 0x202. `None` for anything else.
    pub fn detect(kernel: &[u8]) -> Option<Self> {
        if kernel.starts_with(b"\x7fELF") {
            Some(Self::Elf)
        } else if kernel.get(0x202..0x206) == Some(b"HdrS") {
            Some(Self::Bzimage)
        } else {
            None
        }
    }
}

impl Healthcheck {
    /// A check with the default timing (every 1000 ms, unhealthy after 3 failures).
    pub fn new(http: Option<HttpCheck>, tcp: Option<TcpCheck>) -> Self {
        Self {
            http,
            tcp,
            interval_ms: default_interval(),
            retries: default_retries(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        match (&self.http, &self.tcp) {
            (Some(http), None) => {
                check_port(http.port)?;
                let bad = |c: char| c.is_ascii_control() || c == ' ' || !c.is_ascii();
                if !http.path.starts_with('/') || http.path.chars().any(bad) {
                    return Err(ConfigError::HealthPath(http.path.clone()));
                }
            }
            (None, Some(tcp)) => check_port(tcp.port)?,
            _ => return Err(ConfigError::HealthShape),
        }
        if self.interval_ms == 0 || self.retries == 0 {
            return Err(ConfigError::HealthTiming);
        }
        Ok(())
    }
}

fn check_port(port: u16) -> Result<(), ConfigError> {
    if port == 0 {
        Err(ConfigError::PortZero)
    } else {
        Ok(())
    }
}

/// Whether `name` is a valid image name: 1-128 of `a-z 0-9 . _ -`, starting alphanumeric.
pub fn valid_name(name: &str) -> bool {
    valid_token(name, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)
    })
}

/// Whether `version` is a valid image version: 1-128 of `A-Z a-z 0-9 . _ + -`, starting
/// alphanumeric.
pub fn valid_version(version: &str) -> bool {
    valid_token(version, |c| c.is_ascii_alphanumeric() || "._+-".contains(c))
}

fn valid_token(s: &str, allowed: impl Fn(char) -> bool) -> bool {
    s.len() <= MAX_NAME
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().all(allowed)
}

impl ImageConfig {
    /// Parses and validates a config blob.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let config: Self = serde_json::from_slice(bytes).map_err(ConfigError::Parse)?;
        config.validate()?;
        Ok(config)
    }

    /// The canonical JSON of this config: the bytes of its blob.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        super::canonical_json(self)
    }

    /// `name:version`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.name, self.version)
    }

    /// What `/herd/image.json` holds: the defaults init runs the app with.
    pub fn runtime(&self) -> ImageRuntime {
        ImageRuntime {
            entrypoint: self.entrypoint.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            workdir: self.workdir.clone(),
            rootfs: None,
        }
    }

    /// Checks every invariant of the format.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !valid_name(&self.name) {
            return Err(ConfigError::Name(self.name.clone()));
        }
        if !valid_version(&self.version) {
            return Err(ConfigError::Version(self.version.clone()));
        }
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        let mut seen = std::collections::BTreeSet::new();
        for &port in &self.ports {
            check_port(port)?;
            if !seen.insert(port) {
                return Err(ConfigError::DuplicatePort(port));
            }
        }
        if let Some(check) = &self.healthcheck {
            check.validate()?;
        }
        let cmdline = &self.kernel.cmdline;
        if cmdline.is_empty()
            || cmdline.len() > MAX_CMDLINE
            || !cmdline
                .chars()
                .all(|c| c.is_ascii() && !c.is_ascii_control())
        {
            return Err(ConfigError::Cmdline);
        }
        if self.entrypoint.iter().any(|a| a.contains('\0')) {
            return Err(ConfigError::Nul("entrypoint"));
        }
        if self.args.iter().any(|a| a.contains('\0')) {
            return Err(ConfigError::Nul("args"));
        }
        if self.workdir.contains('\0') {
            return Err(ConfigError::Nul("workdir"));
        }
        self.runtime().validate().map_err(ConfigError::Runtime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ImageConfig {
        ImageConfig {
            name: "hello".into(),
            version: "1.0.0".into(),
            entrypoint: vec!["/app/hello".into()],
            args: vec!["--greeting".into(), "hi".into()],
            env: [("LANG".into(), "C.UTF-8".into())].into(),
            workdir: "/".into(),
            vcpus: 1,
            memory_mib: 128,
            ports: vec![8080],
            healthcheck: Some(Healthcheck::new(
                Some(HttpCheck {
                    port: 8080,
                    path: "/healthz".into(),
                }),
                None,
            )),
            kernel: KernelConfig {
                format: KernelFormat::Elf,
                cmdline: DEFAULT_CMDLINE.into(),
            },
        }
    }

    #[test]
    fn the_documented_example_parses_and_round_trips_canonically() {
        let doc = r#"{
          "name": "hello", "version": "1.0.0",
          "entrypoint": ["/app/hello"], "args": ["--greeting", "hi"],
          "env": {"LANG": "C.UTF-8"}, "workdir": "/",
          "vcpus": 1, "memory_mib": 128,
          "ports": [8080],
          "healthcheck": {"http": {"port": 8080, "path": "/healthz"}, "interval_ms": 1000, "retries": 3},
          "kernel": {"format": "elf", "cmdline": "console=ttyS0 reboot=k panic=-1 pci=off nomodule quiet"}
        }"#;
        let config = ImageConfig::from_json(doc.as_bytes()).unwrap();
        assert_eq!(config, sample());
        let canonical = config.to_canonical_json();
        let text = String::from_utf8(canonical.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"args":["--greeting","hi"],"entrypoint":"#),
            "{text}"
        );
        assert_eq!(ImageConfig::from_json(&canonical).unwrap(), config);
        assert_eq!(config.reference(), "hello:1.0.0");
    }

    #[test]
    fn defaults_fill_optional_fields() {
        let doc = r#"{"name":"a","version":"1","entrypoint":["/a"],"kernel":{"format":"bzimage"}}"#;
        let c = ImageConfig::from_json(doc.as_bytes()).unwrap();
        assert_eq!((c.vcpus, c.memory_mib, c.workdir.as_str()), (1, 128, "/"));
        assert_eq!(c.kernel.cmdline, DEFAULT_CMDLINE);
        assert!(c.healthcheck.is_none() && c.ports.is_empty());
        let text = String::from_utf8(c.to_canonical_json()).unwrap();
        assert!(!text.contains("healthcheck"), "{text}");
    }

    #[test]
    fn unknown_fields_are_rejected_at_every_level() {
        for doc in [
            r#"{"name":"a","version":"1","entrypoint":["/a"],"kernel":{"format":"elf"},"x":1}"#,
            r#"{"name":"a","version":"1","entrypoint":["/a"],"kernel":{"format":"elf","x":1}}"#,
            r#"{"name":"a","version":"1","entrypoint":["/a"],"kernel":{"format":"pe"}}"#,
            r#"{"name":"a","version":"1","entrypoint":["/a"],"kernel":{"format":"elf"},"healthcheck":{"tcp":{"port":1,"x":2}}}"#,
            r#"{"name":"a","version":"1","entrypoint":["/a"],"kernel":{"format":"elf"},"ports":[65536]}"#,
            r#"{"name":"a","version":"1","entrypoint":["/a"]}"#,
        ] {
            assert!(
                matches!(
                    ImageConfig::from_json(doc.as_bytes()),
                    Err(ConfigError::Parse(_))
                ),
                "{doc}"
            );
        }
    }

    #[test]
    fn names_and_versions_follow_the_charset() {
        for good in ["a", "hello", "my-app.v2_x", "0abc"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "",
            "Hello",
            "-a",
            ".a",
            "a:b",
            "a/b",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
        for good in ["1", "1.0.0", "1.0.0-rc.1+build.5", "V2", "latest"] {
            assert!(valid_version(good), "{good}");
        }
        for bad in ["", "+1", "1:2", "1/2", "1 2"] {
            assert!(!valid_version(bad), "{bad}");
        }
    }

    #[test]
    fn every_invariant_is_checked() {
        type Case = (fn(&mut ImageConfig), &'static str);
        let cases: Vec<Case> = vec![
            (|c| c.name = "Bad".into(), "invalid image name"),
            (|c| c.version = "".into(), "invalid image version"),
            (|c| c.vcpus = 0, "vcpus must be 1 to 32"),
            (|c| c.vcpus = 33, "vcpus must be 1 to 32"),
            (|c| c.memory_mib = 31, "at least 32 MiB"),
            (|c| c.ports = vec![0], "port 0"),
            (|c| c.ports = vec![80, 80], "listed twice"),
            (
                |c| c.healthcheck.as_mut().unwrap().tcp = Some(TcpCheck { port: 1 }),
                "exactly one",
            ),
            (
                |c| c.healthcheck.as_mut().unwrap().http = None,
                "exactly one",
            ),
            (
                |c| c.healthcheck.as_mut().unwrap().http.as_mut().unwrap().path = "x".into(),
                "path",
            ),
            (
                |c| c.healthcheck.as_mut().unwrap().http.as_mut().unwrap().port = 0,
                "port 0",
            ),
            (
                |c| c.healthcheck.as_mut().unwrap().retries = 0,
                "at least 1",
            ),
            (|c| c.kernel.cmdline = String::new(), "command line"),
            (|c| c.kernel.cmdline = "a\nb".into(), "command line"),
            (|c| c.kernel.cmdline = "x".repeat(2048), "command line"),
            (|c| c.entrypoint = vec!["app".into()], "run settings"),
            (|c| c.entrypoint = vec![], "run settings"),
            (|c| c.workdir = "tmp".into(), "run settings"),
            (
                |c| c.env = [("1X".into(), "v".into())].into(),
                "run settings",
            ),
            (|c| c.args = vec!["a\0b".into()], "NUL"),
        ];
        for (mutate, expected) in cases {
            let mut c = sample();
            mutate(&mut c);
            let err = c.validate().expect_err(expected);
            let text = format!("{err}");
            assert!(
                text.contains(expected),
                "{text:?} should contain {expected:?}"
            );
        }
        let mut c = sample();
        c.vcpus = 32;
        c.memory_mib = 32;
        c.healthcheck = Some(Healthcheck::new(None, Some(TcpCheck { port: 65535 })));
        c.validate().unwrap();
    }

    #[test]
    fn kernel_format_is_detected_from_magic() {
        assert_eq!(
            KernelFormat::detect(b"\x7fELF\x02\x01\x01"),
            Some(KernelFormat::Elf)
        );
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(KernelFormat::detect(&bz), Some(KernelFormat::Bzimage));
        assert_eq!(KernelFormat::detect(b"MZ\x90\x00"), None);
        assert_eq!(KernelFormat::detect(b""), None);
        let probe = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/herd-probe/probe.bzImage");
        if let Ok(bytes) = std::fs::read(probe) {
            assert_eq!(KernelFormat::detect(&bytes), Some(KernelFormat::Bzimage));
        }
    }
}
