//! What init runs: `/herd/image.json` (required) and `/herd/instance.json` (optional) parsed
//! with `herd-proto` and merged with [`herd_proto::launch`], plus the checks that the kernel
//! would otherwise fail on later (NUL bytes, hostname length), so that any bad configuration
//! is one clear error before anything starts. Pure: the caller reads the files.

use herd_proto::{
    IMAGE_RUNTIME_PATH, INSTANCE_CONFIG_PATH, ImageRuntime, InstanceConfig, Launch, Network,
    ProtoError,
};

/// Longest hostname Linux accepts (`HOST_NAME_MAX`).
pub const HOSTNAME_MAX: usize = 64;

/// A configuration init refuses to run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{IMAGE_RUNTIME_PATH} is missing")]
    MissingImage,
    #[error("cannot read {path}")]
    Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Rejected by herd-proto (its message names the file).
    #[error(transparent)]
    Invalid(ProtoError),
    #[error("{what} contains a NUL byte")]
    Nul { what: &'static str },
    #[error("{INSTANCE_CONFIG_PATH}: hostname {0:?} must be 1 to {HOSTNAME_MAX} bytes")]
    Hostname(String),
}

/// Everything init needs from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The app's argv, environment and working directory.
    pub launch: Launch,
    /// The instance's id; `None` without an instance configuration.
    pub instance_id: Option<String>,
    /// The instance's hostname; `None` without an instance configuration.
    pub hostname: Option<String>,
    /// The instance's network settings, if it has any.
    pub network: Option<Network>,
    /// The image's root filesystem device, to switch root to.
    pub rootfs: Option<herd_proto::Rootfs>,
}

/// Builds the plan from the two documents' text (`None`: the file does not exist).
pub fn plan(image: Option<&str>, instance: Option<&str>) -> Result<Plan, ConfigError> {
    let image = ImageRuntime::from_json(image.ok_or(ConfigError::MissingImage)?)
        .map_err(ConfigError::Invalid)?;
    let instance = instance
        .map(InstanceConfig::from_json)
        .transpose()
        .map_err(ConfigError::Invalid)?;
    let launch = herd_proto::launch(&image, instance.as_ref());
    let rootfs = image.rootfs.clone();
    check_launch(&launch)?;
    let network = instance
        .as_ref()
        .and_then(|i| i.network.as_ref())
        .map(|n| n.parse())
        .transpose()
        .map_err(|why| ConfigError::Invalid(ProtoError::Invalid(INSTANCE_CONFIG_PATH, why)))?;
    let instance_id = instance.as_ref().map(|i| i.instance_id.clone());
    let hostname = instance.map(|i| i.hostname);
    if let Some(name) = &hostname {
        if name.is_empty() || name.len() > HOSTNAME_MAX {
            return Err(ConfigError::Hostname(name.clone()));
        }
        if name.contains('\0') {
            return Err(ConfigError::Nul { what: "hostname" });
        }
    }
    Ok(Plan {
        launch,
        instance_id,
        hostname,
        network,
        rootfs,
    })
}

/// Argument and directory strings become C strings: a NUL would cut them short.
fn check_launch(launch: &Launch) -> Result<(), ConfigError> {
    if launch.argv.iter().any(|a| a.contains('\0')) {
        return Err(ConfigError::Nul {
            what: "an argument",
        });
    }
    if launch.workdir.contains('\0') {
        return Err(ConfigError::Nul { what: "workdir" });
    }
    // Env values are checked by herd-proto, names are valid identifiers.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: &str =
        r#"{"entrypoint":["/app/hello","-v"],"args":["a"],"env":{"A":"1","B":"2"},"workdir":"/w"}"#;

    #[test]
    fn image_alone_runs_its_defaults_without_hostname() {
        let p = plan(Some(IMAGE), None).unwrap();
        assert_eq!(p.launch.argv, ["/app/hello", "-v", "a"]);
        assert_eq!(p.launch.env.len(), 2);
        assert_eq!(p.launch.workdir, "/w");
        assert_eq!((p.instance_id, p.hostname), (None, None));
    }

    #[test]
    fn instance_overrides_env_and_args_and_names_the_host() {
        let inst =
            r#"{"instance_id":"i-1","hostname":"web-1","env":{"B":"x","C":"y"},"args":["b","c"]}"#;
        let p = plan(Some(IMAGE), Some(inst)).unwrap();
        assert_eq!(p.launch.argv, ["/app/hello", "-v", "b", "c"]);
        let env: Vec<_> = p
            .launch
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(env, ["A=1", "B=x", "C=y"]);
        assert_eq!(p.hostname.as_deref(), Some("web-1"));
        assert_eq!(p.instance_id.as_deref(), Some("i-1"));
        let null_args = r#"{"instance_id":"i","hostname":"h","args":null}"#;
        assert_eq!(
            plan(Some(IMAGE), Some(null_args)).unwrap().launch.argv[2],
            "a"
        );
    }

    #[test]
    fn missing_or_bad_documents_are_refused() {
        assert!(matches!(plan(None, None), Err(ConfigError::MissingImage)));
        assert!(matches!(
            plan(Some("{"), None),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            plan(Some(r#"{"entrypoint":[]}"#), None),
            Err(ConfigError::Invalid(_))
        ));
        let unknown = r#"{"instance_id":"i","hostname":"h","extra":true}"#;
        assert!(matches!(
            plan(Some(IMAGE), Some(unknown)),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            plan(Some(IMAGE), Some("")),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn values_the_kernel_would_reject_are_refused_up_front() {
        let long = format!(r#"{{"instance_id":"i","hostname":"{}"}}"#, "h".repeat(65));
        assert!(matches!(
            plan(Some(IMAGE), Some(&long)),
            Err(ConfigError::Hostname(_))
        ));
        let empty = r#"{"instance_id":"i","hostname":""}"#;
        assert!(matches!(
            plan(Some(IMAGE), Some(empty)),
            Err(ConfigError::Hostname(_))
        ));
        let nul_arg = r#"{"instance_id":"i","hostname":"h","args":["a\u0000b"]}"#;
        assert!(matches!(
            plan(Some(IMAGE), Some(nul_arg)),
            Err(ConfigError::Nul { .. })
        ));
        let ok = format!(r#"{{"instance_id":"i","hostname":"{}"}}"#, "h".repeat(64));
        assert!(plan(Some(IMAGE), Some(&ok)).is_ok());
    }
}
