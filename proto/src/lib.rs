//! Wire types shared by the host (`herd build`, `herd run`, later the agent) and the guest's
//! `herd-init`: what an image runs by default (`/herd/image.json`) and what one instance adds
//! (`/herd/instance.json`, in the archive appended at boot). See `docs/image-format.md`.
//!
//! Both are parsed with unknown fields rejected: a guest must never run with half of the
//! configuration it was given.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Path of the image's default run settings inside its initramfs.
pub const IMAGE_RUNTIME_PATH: &str = "/herd/image.json";
/// Path of the instance configuration inside the appended archive.
pub const INSTANCE_CONFIG_PATH: &str = "/herd/instance.json";

/// Errors reading either document.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("{0} is not valid")]
    Parse(&'static str, #[source] serde_json::Error),
    #[error("{0}: {1}")]
    Invalid(&'static str, String),
}

/// What the image runs by default (`/herd/image.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRuntime {
    /// Program and its fixed leading arguments; `entrypoint[0]` is an absolute path.
    pub entrypoint: Vec<String>,
    /// Default arguments after the entrypoint, replaced by an instance's `args`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Default environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory of the app.
    #[serde(default = "root_dir")]
    pub workdir: String,
}

fn root_dir() -> String {
    "/".to_owned()
}

/// What one instance adds (`/herd/instance.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// Unique id of this instance.
    pub instance_id: String,
    /// Hostname the guest takes.
    pub hostname: String,
    /// Environment merged over the image's (instance wins).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Replaces the image's default args when present.
    #[serde(default)]
    pub args: Option<Vec<String>>,
}

/// Validates an environment variable name as a POSIX shell would accept it.
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn check_env(what: &'static str, env: &BTreeMap<String, String>) -> Result<(), ProtoError> {
    for (k, v) in env {
        if !valid_env_name(k) {
            return Err(ProtoError::Invalid(
                what,
                format!("bad environment variable name {k:?}"),
            ));
        }
        if v.contains('\0') {
            return Err(ProtoError::Invalid(
                what,
                format!("environment variable {k} contains NUL"),
            ));
        }
    }
    Ok(())
}

impl ImageRuntime {
    /// Parses and validates `/herd/image.json`.
    pub fn from_json(text: &str) -> Result<Self, ProtoError> {
        let rt: Self =
            serde_json::from_str(text).map_err(|e| ProtoError::Parse(IMAGE_RUNTIME_PATH, e))?;
        rt.validate()?;
        Ok(rt)
    }

    /// Checks the invariants documented on the fields.
    pub fn validate(&self) -> Result<(), ProtoError> {
        let what = IMAGE_RUNTIME_PATH;
        match self.entrypoint.first() {
            Some(p) if p.starts_with('/') => {}
            Some(p) => {
                return Err(ProtoError::Invalid(
                    what,
                    format!("entrypoint {p:?} is not an absolute path"),
                ));
            }
            None => return Err(ProtoError::Invalid(what, "entrypoint is empty".into())),
        }
        if !self.workdir.starts_with('/') {
            return Err(ProtoError::Invalid(
                what,
                format!("workdir {:?} is not absolute", self.workdir),
            ));
        }
        check_env(what, &self.env)
    }

    /// Serialises canonically (sorted keys, no whitespace), so images are reproducible.
    pub fn to_canonical_json(&self) -> String {
        serde_json::to_string(self).expect("plain data serialises")
    }
}

impl InstanceConfig {
    /// Parses and validates `/herd/instance.json`.
    pub fn from_json(text: &str) -> Result<Self, ProtoError> {
        let cfg: Self =
            serde_json::from_str(text).map_err(|e| ProtoError::Parse(INSTANCE_CONFIG_PATH, e))?;
        check_env(INSTANCE_CONFIG_PATH, &cfg.env)?;
        Ok(cfg)
    }

    /// Serialises canonically.
    pub fn to_canonical_json(&self) -> String {
        serde_json::to_string(self).expect("plain data serialises")
    }
}

/// What init runs: the image's defaults with the instance's settings applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: String,
}

/// Merges instance settings over image defaults.
pub fn launch(image: &ImageRuntime, instance: Option<&InstanceConfig>) -> Launch {
    let mut env = image.env.clone();
    let mut args = image.args.clone();
    if let Some(inst) = instance {
        env.extend(inst.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(a) = &inst.args {
            args = a.clone();
        }
    }
    let mut argv = image.entrypoint.clone();
    argv.extend(args);
    Launch {
        argv,
        env,
        workdir: image.workdir.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageRuntime {
        ImageRuntime {
            entrypoint: vec!["/app/hello".into(), "--fixed".into()],
            args: vec!["default".into()],
            env: [("A".into(), "image".into()), ("B".into(), "image".into())].into(),
            workdir: "/".into(),
        }
    }

    #[test]
    fn instance_env_wins_and_args_replace_defaults() {
        let inst = InstanceConfig {
            instance_id: "i".into(),
            hostname: "h".into(),
            env: [("B".into(), "inst".into()), ("C".into(), "inst".into())].into(),
            args: Some(vec!["x".into()]),
        };
        let l = launch(&image(), Some(&inst));
        assert_eq!(l.argv, ["/app/hello", "--fixed", "x"]);
        assert_eq!(l.env["A"], "image");
        assert_eq!(l.env["B"], "inst");
        assert_eq!(l.env["C"], "inst");
        let l = launch(&image(), None);
        assert_eq!(l.argv, ["/app/hello", "--fixed", "default"]);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        assert!(
            InstanceConfig::from_json(r#"{"instance_id":"i","hostname":"h","extra":1}"#).is_err()
        );
        assert!(
            InstanceConfig::from_json(r#"{"instance_id":"i","hostname":"h","env":{"1A":"x"}}"#)
                .is_err()
        );
        assert!(ImageRuntime::from_json(r#"{"entrypoint":["app"]}"#).is_err());
        assert!(ImageRuntime::from_json(r#"{"entrypoint":[]}"#).is_err());
        let rt = ImageRuntime::from_json(r#"{"entrypoint":["/app"]}"#).unwrap();
        assert_eq!(rt.workdir, "/");
    }

    #[test]
    fn canonical_json_round_trips_with_sorted_env() {
        let rt = image();
        let text = rt.to_canonical_json();
        assert!(text.find("\"A\"").unwrap() < text.find("\"B\"").unwrap());
        assert_eq!(ImageRuntime::from_json(&text).unwrap(), rt);
    }

    #[test]
    fn env_names_follow_posix_rules() {
        assert!(valid_env_name("PATH") && valid_env_name("_x1"));
        assert!(
            !valid_env_name("")
                && !valid_env_name("1x")
                && !valid_env_name("A-B")
                && !valid_env_name("A=B")
        );
    }
}
