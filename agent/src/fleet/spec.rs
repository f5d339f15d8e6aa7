//! A service's desired state as the API receives it, and the validated form the supervisor
//! works with. The wire type rejects unknown fields; `ServiceSpec::validate` checks every value
//! and names the field that is wrong, so nothing half-understood reaches the fleet.

use std::collections::BTreeMap;

use herd_proto::valid_env_name;
use serde::{Deserialize, Serialize};

/// Why a service spec was refused; `field` is the JSON path of the culprit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct SpecError {
    pub field: String,
    pub why: String,
}

fn bad(field: &str, why: impl Into<String>) -> SpecError {
    SpecError {
        field: field.to_owned(),
        why: why.into(),
    }
}

/// Most instances one service may ask for on one host.
pub const MAX_REPLICAS: u32 = 1024;

/// How the agent checks that an instance serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum ProbeKind {
    /// Connect to the guest's vsock `port` through herd-vmm's socket, send `health\n`, expect a
    /// line starting with `ok`.
    Vsock { port: u32 },
    /// A TCP connection to the instance's address is accepted.
    Tcp { port: u16 },
    /// `GET path` on the instance's address answers 2xx or 3xx.
    Http { port: u16, path: String },
}

/// A health check: the probe, how often, and how many failures in a row kill the instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(flatten)]
    pub probe: ProbeKind,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive failed checks after which the instance is killed and replaced.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// Failures during this time after boot do not count (the app is starting).
    #[serde(default = "default_grace_ms")]
    pub grace_ms: u64,
}

fn default_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    500
}
fn default_failure_threshold() -> u32 {
    3
}
fn default_grace_ms() -> u64 {
    5000
}

/// Crash-loop back-off: the first failure is replaced at once, then the delay doubles from
/// `initial_ms` up to `max_ms`; a failure more than `reset_after_ms` after the previous one
/// starts over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    #[serde(default = "default_initial_ms")]
    pub initial_ms: u64,
    #[serde(default = "default_max_ms")]
    pub max_ms: u64,
    #[serde(default = "default_reset_after_ms")]
    pub reset_after_ms: u64,
}

fn default_initial_ms() -> u64 {
    100
}
fn default_max_ms() -> u64 {
    30_000
}
fn default_reset_after_ms() -> u64 {
    60_000
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_ms: default_initial_ms(),
            max_ms: default_max_ms(),
            reset_after_ms: default_reset_after_ms(),
        }
    }
}

/// Rolling update limits, as in a Kubernetes Deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutPolicy {
    /// Instances above `replicas` allowed while rolling out.
    #[serde(default = "one")]
    pub max_surge: u32,
    /// Instances below `replicas` healthy allowed while rolling out.
    #[serde(default)]
    pub max_unavailable: u32,
    /// Failures of new-version instances (exit or killed unhealthy) before the service rolls
    /// back to its previous image.
    #[serde(default = "three")]
    pub rollback_after_failures: u32,
}

fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        Self {
            max_surge: 1,
            max_unavailable: 0,
            rollback_after_failures: 3,
        }
    }
}

/// Whether instances get a network interface on the agent's bridge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// A TAP on the agent's bridge and an address from its range.
    #[default]
    Bridge,
    /// No network device.
    None,
}

/// A service: identical instances of one image. `image` is a reference on the wire; the
/// supervisor resolves it to a digest when the spec is accepted, and instances only ever run
/// that digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub image: String,
    #[serde(default = "one")]
    pub replicas: u32,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Arguments replacing the image's default args.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// vCPUs; the image's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u8>,
    /// Memory in MiB; the image's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    #[serde(default)]
    pub network: NetworkMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub rollout: RolloutPolicy,
    /// Time the app gets after SIGTERM before its VM is powered off.
    #[serde(default = "default_stop_timeout_ms")]
    pub stop_timeout_ms: u64,
    /// Start instances from a snapshot: once an instance that booted passes its health
    /// check, the agent snapshots it, and later instances (scale-ups, replacements) are
    /// restored from that snapshot instead of booting. Needs a health check, which says
    /// when the app is ready to be snapshotted.
    #[serde(default)]
    pub snapshot_starts: bool,
}

fn default_stop_timeout_ms() -> u64 {
    10_000
}

/// A service name: what instance ids, TAP names and URLs are built from.
pub fn valid_service_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// What an instance id can look like: its service's name, `-`, 8 hex digits (see
/// `run::new_instance_id`); anything else names no instance. Checked where an id arrives,
/// since an id becomes the name of the instance's directory.
pub const INSTANCE_ID_SHAPE: &str = "a service name, '-' and 8 hex digits";

/// Whether `id` has the shape of an instance id (see [`INSTANCE_ID_SHAPE`]). The alphabet is
/// what matters for paths: no `/`, no `.`, so never `..` and never absolute.
pub fn valid_instance_id(id: &str) -> bool {
    id.rsplit_once('-').is_some_and(|(service, random)| {
        valid_service_name(service)
            && random.len() == 8
            && random
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl ServiceSpec {
    /// Checks every value; the error names the first bad field.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !valid_service_name(&self.name) {
            return Err(bad(
                "name",
                "1 to 32 characters: lowercase letters, digits and '-', starting with a letter",
            ));
        }
        if self.image.trim().is_empty() {
            return Err(bad("image", "must name an image"));
        }
        if self.replicas > MAX_REPLICAS {
            return Err(bad("replicas", format!("at most {MAX_REPLICAS}")));
        }
        for (k, v) in &self.env {
            if !valid_env_name(k) || v.contains('\0') {
                return Err(bad(
                    &format!("env.{k}"),
                    "not a valid variable name or value",
                ));
            }
        }
        if self.vcpus.is_some_and(|n| !(1..=32).contains(&n)) {
            return Err(bad("vcpus", "1 to 32"));
        }
        if self.memory_mib.is_some_and(|m| m < 32) {
            return Err(bad("memory_mib", "at least 32"));
        }
        if let Some(h) = &self.health_check {
            validate_health(h)?;
        }
        validate_policies(&self.restart, &self.rollout)?;
        if self.stop_timeout_ms > 3_600_000 {
            return Err(bad("stop_timeout_ms", "at most one hour"));
        }
        if self.snapshot_starts && self.health_check.is_none() {
            return Err(bad(
                "snapshot_starts",
                "needs a health_check: the snapshot is taken once an instance passes it",
            ));
        }
        Ok(())
    }
}

fn validate_health(h: &HealthCheck) -> Result<(), SpecError> {
    match &h.probe {
        ProbeKind::Vsock { port } if *port == 0 || *port == u32::MAX => {
            return Err(bad("health_check.vsock.port", "1 to 4294967294"));
        }
        ProbeKind::Tcp { port: 0 } => return Err(bad("health_check.tcp.port", "1 to 65535")),
        ProbeKind::Http { port: 0, .. } => {
            return Err(bad("health_check.http.port", "1 to 65535"));
        }
        ProbeKind::Http { path, .. }
            if !path.starts_with('/') || path.contains(char::is_whitespace) =>
        {
            return Err(bad(
                "health_check.http.path",
                "an absolute path without spaces",
            ));
        }
        _ => {}
    }
    if h.interval_ms < 10 {
        return Err(bad("health_check.interval_ms", "at least 10"));
    }
    if h.timeout_ms == 0 || h.timeout_ms > h.interval_ms {
        return Err(bad("health_check.timeout_ms", "1 up to interval_ms"));
    }
    if h.failure_threshold == 0 {
        return Err(bad("health_check.failure_threshold", "at least 1"));
    }
    Ok(())
}

fn validate_policies(restart: &RestartPolicy, rollout: &RolloutPolicy) -> Result<(), SpecError> {
    if restart.initial_ms == 0 || restart.initial_ms > restart.max_ms {
        return Err(bad("restart.initial_ms", "1 up to restart.max_ms"));
    }
    if restart.max_ms > 3_600_000 {
        return Err(bad("restart.max_ms", "at most one hour"));
    }
    if rollout.max_surge == 0 && rollout.max_unavailable == 0 {
        return Err(bad(
            "rollout.max_surge",
            "max_surge and max_unavailable cannot both be 0 (a rollout could never progress)",
        ));
    }
    if rollout.rollback_after_failures == 0 {
        return Err(bad("rollout.rollback_after_failures", "at least 1"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ServiceSpec, String> {
        let spec: ServiceSpec = serde_json::from_str(json).map_err(|e| e.to_string())?;
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }

    #[test]
    fn a_minimal_spec_gets_defaults() {
        let s = parse(r#"{"name":"web","image":"hello:1"}"#).unwrap();
        assert_eq!(s.replicas, 1);
        assert_eq!(s.network, NetworkMode::Bridge);
        assert_eq!(s.rollout, RolloutPolicy::default());
        assert_eq!(s.restart, RestartPolicy::default());
        assert_eq!(s.health_check, None);
        assert!(!s.snapshot_starts);
    }

    #[test]
    fn snapshot_starts_need_a_health_check() {
        let check = r#""health_check":{"vsock":{"port":5000}}"#;
        let s = parse(&format!(
            r#"{{"name":"a","image":"i","snapshot_starts":true,{check}}}"#
        ))
        .unwrap();
        assert!(s.snapshot_starts);
        let err = parse(r#"{"name":"a","image":"i","snapshot_starts":true}"#).unwrap_err();
        assert!(err.starts_with("snapshot_starts: "), "{err}");
        let err = parse(r#"{"name":"a","image":"i","snapshot_starts":"yes"}"#).unwrap_err();
        assert!(err.contains("invalid type"), "{err}");
    }

    #[test]
    fn health_checks_of_each_kind_parse() {
        let s = parse(
            r#"{"name":"a","image":"i","health_check":{"vsock":{"port":5000},"interval_ms":200,"timeout_ms":100}}"#,
        )
        .unwrap();
        let h = s.health_check.unwrap();
        assert_eq!(h.probe, ProbeKind::Vsock { port: 5000 });
        assert_eq!((h.interval_ms, h.failure_threshold), (200, 3));
        let s =
            parse(r#"{"name":"a","image":"i","health_check":{"http":{"port":80,"path":"/h"}}}"#)
                .unwrap();
        assert!(matches!(
            s.health_check.unwrap().probe,
            ProbeKind::Http { port: 80, .. }
        ));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = parse(r#"{"name":"a","image":"i","replica":3}"#).unwrap_err();
        assert!(err.contains("replica"), "{err}");
        let err = parse(r#"{"name":"a","image":"i","restart":{"initial":1}}"#).unwrap_err();
        assert!(err.contains("initial"), "{err}");
    }

    #[test]
    fn bad_values_name_their_field() {
        for (json, field) in [
            (r#"{"name":"Web","image":"i"}"#, "name"),
            (r#"{"name":"a","image":" "}"#, "image"),
            (r#"{"name":"a","image":"i","replicas":5000}"#, "replicas"),
            (r#"{"name":"a","image":"i","env":{"A-B":"1"}}"#, "env.A-B"),
            (r#"{"name":"a","image":"i","vcpus":0}"#, "vcpus"),
            (r#"{"name":"a","image":"i","memory_mib":8}"#, "memory_mib"),
            (
                r#"{"name":"a","image":"i","health_check":{"tcp":{"port":0}}}"#,
                "health_check.tcp.port",
            ),
            (
                r#"{"name":"a","image":"i","health_check":{"http":{"port":1,"path":"x"}}}"#,
                "health_check.http.path",
            ),
            (
                r#"{"name":"a","image":"i","health_check":{"tcp":{"port":1},"timeout_ms":5000}}"#,
                "health_check.timeout_ms",
            ),
            (
                r#"{"name":"a","image":"i","restart":{"initial_ms":0}}"#,
                "restart.initial_ms",
            ),
            (
                r#"{"name":"a","image":"i","rollout":{"max_surge":0,"max_unavailable":0}}"#,
                "rollout.max_surge",
            ),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.starts_with(&format!("{field}: ")), "{json}: {err}");
        }
    }
}
