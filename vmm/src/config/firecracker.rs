//! Firecracker's `--config-file` schema, the subset herd-vmm runs, so one file boots on both.
//!
//! The wire types mirror Firecracker's field names and reject unknown fields. Sections that
//! Firecracker knows but herd-vmm does not run yet are refused by name rather than ignored: a
//! config that silently lost its disk would boot into something else.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::drive::FirecrackerDrive;
use super::{ConfigError, RawNetConfig, RawVmConfig, VsockConfig};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FirecrackerConfig {
    boot_source: BootSource,
    machine_config: Option<MachineConfig>,
    drives: Option<Vec<FirecrackerDrive>>,
    network_interfaces: Option<Vec<NetworkInterface>>,
    vsock: Option<FirecrackerVsock>,
    entropy: Option<Entropy>,
    balloon: Option<Value>,
    logger: Option<Value>,
    metrics: Option<Value>,
    mmds_config: Option<Value>,
    pmem: Option<Value>,
    cpu_config: Option<Value>,
    memory_hotplug: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BootSource {
    kernel_image_path: PathBuf,
    initrd_path: Option<PathBuf>,
    boot_args: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineConfig {
    vcpu_count: u64,
    mem_size_mib: u64,
    #[serde(default)]
    smt: bool,
    #[serde(default)]
    track_dirty_pages: bool,
    huge_pages: Option<HugePages>,
    cpu_template: Option<String>,
}

/// One of Firecracker's `network-interfaces`: a virtio-net device on an existing TAP (`mtu` is
/// ours; Firecracker has none).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkInterface {
    iface_id: String,
    host_dev_name: String,
    guest_mac: Option<String>,
    mtu: Option<u16>,
    rx_rate_limiter: Option<Value>,
    tx_rate_limiter: Option<Value>,
}

/// Firecracker's `vsock` section: a virtio-vsock device with its host-side Unix socket
/// (`vsock_id` is accepted and unused, as Firecracker only has one).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FirecrackerVsock {
    guest_cid: u64,
    uds_path: PathBuf,
    #[serde(default, rename = "vsock_id")]
    _vsock_id: Option<String>,
}

/// Firecracker's `entropy` section: a virtio-rng device, optionally rate-limited.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entropy {
    rate_limiter: Option<Value>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
enum HugePages {
    None,
    #[serde(rename = "2M")]
    TwoMiB,
}

/// Parses `text` (the contents of `file`) into unvalidated VM settings.
pub fn parse_firecracker_config(text: &str, file: &Path) -> Result<RawVmConfig, ConfigError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let parsed: FirecrackerConfig =
        serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Field {
            file: file.to_owned(),
            field: field_name(e.path()),
            source: e.into_inner(),
        })?;
    reject_unsupported(&parsed, file)?;
    let drives = parsed.drives.into_iter().flatten();
    let drives = drives
        .map(FirecrackerDrive::into_config)
        .collect::<Result<_, _>>()?;
    let machine = parsed.machine_config;
    let net = parsed.network_interfaces.unwrap_or_default();
    Ok(RawVmConfig {
        kernel: parsed.boot_source.kernel_image_path,
        initrds: parsed.boot_source.initrd_path.into_iter().collect(),
        cmdline: parsed.boot_source.boot_args,
        vcpus: machine.as_ref().map(|m| m.vcpu_count),
        memory_mib: machine.as_ref().map(|m| m.mem_size_mib),
        console_log: None,
        console_log_max_bytes: None,
        stop_grace_ms: None,
        entropy: parsed.entropy.is_some(),
        net: net.into_iter().map(raw_net).collect(),
        drives,
        vsock: parsed.vsock.map(|v| VsockConfig {
            guest_cid: v.guest_cid,
            uds_path: v.uds_path,
        }),
        ..RawVmConfig::default()
    })
}

fn raw_net(n: NetworkInterface) -> RawNetConfig {
    RawNetConfig {
        iface_id: n.iface_id,
        host_dev_name: n.host_dev_name,
        guest_mac: n.guest_mac,
        mtu: n.mtu,
    }
}

/// serde_path_to_error names the top level `.`; an unknown field at the top is more useful
/// named as the document root.
fn field_name(path: &serde_path_to_error::Path) -> String {
    let s = path.to_string();
    if s == "." {
        "(top level)".to_owned()
    } else {
        s
    }
}

fn unsupported(file: &Path, field: &str, why: &str) -> ConfigError {
    ConfigError::Unsupported {
        file: file.to_owned(),
        field: field.to_owned(),
        why: why.to_owned(),
    }
}

fn reject_net_limiters(cfg: &FirecrackerConfig, file: &Path) -> Result<(), ConfigError> {
    let nets = cfg.network_interfaces.iter().flatten().enumerate();
    for (i, n) in nets {
        for (name, limiter) in [("rx", &n.rx_rate_limiter), ("tx", &n.tx_rate_limiter)] {
            if limiter.as_ref().is_some_and(|v| !v.is_null()) {
                let field = format!("network-interfaces[{i}].{name}_rate_limiter");
                return Err(unsupported(
                    file,
                    &field,
                    "rate limiters are not supported yet",
                ));
            }
        }
    }
    Ok(())
}

fn reject_unsupported(cfg: &FirecrackerConfig, file: &Path) -> Result<(), ConfigError> {
    let not_yet = "herd-vmm does not support this section yet";
    reject_net_limiters(cfg, file)?;
    let sections = [
        ("balloon", &cfg.balloon),
        ("logger", &cfg.logger),
        ("metrics", &cfg.metrics),
        ("mmds-config", &cfg.mmds_config),
        ("pmem", &cfg.pmem),
        ("cpu-config", &cfg.cpu_config),
        ("memory-hotplug", &cfg.memory_hotplug),
    ];
    if let Some((name, _)) = sections
        .iter()
        .find(|(_, v)| v.as_ref().is_some_and(|v| !v.is_null()))
    {
        return Err(unsupported(file, name, not_yet));
    }
    let limiter = cfg.entropy.as_ref().and_then(|e| e.rate_limiter.as_ref());
    if limiter.is_some_and(|v| !v.is_null()) {
        let why = "rate limiters are not supported yet";
        return Err(unsupported(file, "entropy.rate_limiter", why));
    }
    if let Some(m) = &cfg.machine_config {
        if m.smt {
            return Err(unsupported(
                file,
                "machine-config.smt",
                "SMT is not supported",
            ));
        }
        if m.track_dirty_pages {
            let why = "dirty page tracking comes with snapshots";
            return Err(unsupported(file, "machine-config.track_dirty_pages", why));
        }
        if m.huge_pages.as_ref().is_some_and(|h| *h != HugePages::None) {
            let why = "only \"None\" is supported";
            return Err(unsupported(file, "machine-config.huge_pages", why));
        }
        if m.cpu_template.as_ref().is_some_and(|t| t != "None") {
            let why = "CPU templates are not supported";
            return Err(unsupported(file, "machine-config.cpu_template", why));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RawVmConfig, ConfigError> {
        parse_firecracker_config(text, Path::new("vm.json"))
    }

    #[test]
    fn firecracker_example_config_is_accepted() {
        let raw = parse(
            r#"{
              "boot-source": {"kernel_image_path": "vmlinux", "initrd_path": "initrd.cpio",
                              "boot_args": "console=ttyS0 reboot=k"},
              "drives": [],
              "machine-config": {"vcpu_count": 2, "mem_size_mib": 1024, "smt": false,
                                 "track_dirty_pages": false, "huge_pages": "None"},
              "network-interfaces": []
            }"#,
        )
        .unwrap();
        assert_eq!(raw.kernel, PathBuf::from("vmlinux"));
        assert_eq!(raw.initrds, vec![PathBuf::from("initrd.cpio")]);
        assert_eq!(raw.cmdline.as_deref(), Some("console=ttyS0 reboot=k"));
        assert_eq!((raw.vcpus, raw.memory_mib), (Some(2), Some(1024)));
    }

    #[test]
    fn unknown_field_is_rejected_naming_its_path() {
        let err = parse(r#"{"boot-source": {"kernel_image_path": "k", "kernel_args": "x"}}"#)
            .unwrap_err();
        match &err {
            ConfigError::Field { field, source, .. } => {
                assert_eq!(field, "boot-source.kernel_args");
                assert!(source.to_string().contains("kernel_args"), "{source}");
            }
            other => panic!("unexpected {other}"),
        }
        let err = parse(r#"{"boot-source": {"kernel_image_path": "k"}, "bogus": 1}"#).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Field { source, .. } if source.to_string().contains("bogus"))
        );
    }

    #[test]
    fn wrong_type_is_rejected_naming_the_field() {
        let err = parse(
            r#"{"boot-source": {"kernel_image_path": "k"},
                "machine-config": {"vcpu_count": "two", "mem_size_mib": 128}}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&err, ConfigError::Field { field, .. } if field == "machine-config.vcpu_count"),
            "{err:?}"
        );
    }

    #[test]
    fn missing_boot_source_is_rejected() {
        let err =
            parse(r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}"#).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Field { source, .. } if source.to_string().contains("boot-source"))
        );
    }

    #[test]
    fn the_vsock_section_is_read_and_unknown_fields_or_a_low_cid_refused() {
        let boot = r#""boot-source": {"kernel_image_path": "k"}"#;
        let raw = parse(&format!(
            r#"{{{boot}, "vsock": {{"vsock_id": "v", "guest_cid": 3, "uds_path": "/tmp/v"}}}}"#
        ))
        .unwrap();
        let v = raw.vsock.clone().unwrap();
        assert_eq!((v.guest_cid, v.uds_path), (3, PathBuf::from("/tmp/v")));
        assert!(raw.validate(1 << 20).unwrap().vsock.is_some());
        let err = parse(&format!(
            r#"{{{boot}, "vsock": {{"guest_cid": 3, "uds_path": "/v", "port": 1}}}}"#
        ))
        .unwrap_err();
        assert!(err.to_string().contains("vsock"), "{err}");
        assert!(format!("{:?}", err).contains("port"), "{err:?}");
        let low = parse(&format!(
            r#"{{{boot}, "vsock": {{"guest_cid": 2, "uds_path": "/v"}}}}"#
        ))
        .unwrap();
        let err = low.validate(1 << 20).unwrap_err();
        assert!(err.to_string().contains("guest CID 2"), "{err}");
    }

    #[test]
    fn sections_not_supported_yet_are_refused_by_name() {
        let err =
            parse(r#"{"boot-source": {"kernel_image_path": "k"}, "balloon": {"amount_mib": 3}}"#)
                .unwrap_err();
        assert!(matches!(&err, ConfigError::Unsupported { field, .. } if field == "balloon"));
        let err = parse(
            r#"{"boot-source": {"kernel_image_path": "k"},
                "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "smt": true}}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&err, ConfigError::Unsupported { field, .. } if field == "machine-config.smt")
        );
    }

    #[test]
    fn entropy_section_adds_a_device_but_a_rate_limiter_is_refused() {
        let boot = r#""boot-source": {"kernel_image_path": "k"}"#;
        let raw = parse(&format!("{{{boot}, \"entropy\": {{}}}}")).unwrap();
        assert!(raw.entropy);
        assert!(!parse(&format!("{{{boot}}}")).unwrap().entropy);
        let limited = format!(
            r#"{{{boot}, "entropy": {{"rate_limiter": {{"bandwidth": {{"size": 1, "refill_time": 100}}}}}}}}"#
        );
        let err = parse(&limited).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Unsupported { field, .. } if field == "entropy.rate_limiter"),
            "{err}"
        );
        let err = parse(&format!(r#"{{{boot}, "entropy": {{"bogus": 1}}}}"#)).unwrap_err();
        assert!(matches!(&err, ConfigError::Field { .. }), "{err}");
    }

    #[test]
    fn network_interfaces_are_read_and_rate_limiters_or_unknown_fields_refused() {
        let boot = r#""boot-source": {"kernel_image_path": "k"}"#;
        let raw = parse(&format!(
            r#"{{{boot}, "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "tap0",
                "guest_mac": "02:00:00:00:00:01", "mtu": 1400}}]}}"#
        ))
        .unwrap();
        assert_eq!(raw.net[0].iface_id, "eth0");
        assert_eq!(raw.net[0].host_dev_name, "tap0");
        assert_eq!(raw.net[0].mtu, Some(1400));
        let cfg = raw.validate(1024).unwrap();
        assert_eq!(
            cfg.net[0].guest_mac.unwrap().to_string(),
            "02:00:00:00:00:01"
        );
        let limited = format!(
            r#"{{{boot}, "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "t",
                "tx_rate_limiter": {{"ops": {{"size": 1, "refill_time": 100}}}}}}]}}"#
        );
        let err = parse(&limited).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Unsupported { field, .. }
                if field == "network-interfaces[0].tx_rate_limiter"),
            "{err}"
        );
        let unknown = format!(
            r#"{{{boot}, "network-interfaces": [{{"iface_id": "e", "host_dev_name": "t",
                "allow_mmds_requests": true}}]}}"#
        );
        let err = parse(&unknown).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Field { field, source, .. }
                if field.starts_with("network-interfaces") && source.to_string().contains("allow_mmds_requests")),
            "{err:?}"
        );
        let bad_mac = format!(
            r#"{{{boot}, "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "t",
                "guest_mac": "nope"}}]}}"#
        );
        let err = parse(&bad_mac).unwrap().validate(1024).unwrap_err();
        assert!(err.to_string().contains("eth0"), "{err}");
    }

    #[test]
    fn values_are_validated_after_parsing() {
        let raw = parse(
            r#"{"boot-source": {"kernel_image_path": "k"},
                "machine-config": {"vcpu_count": 64, "mem_size_mib": 128}}"#,
        )
        .unwrap();
        assert!(matches!(
            raw.validate(1024),
            Err(ConfigError::VcpuCount(64))
        ));
    }

    #[test]
    fn drives_become_devices_and_unsupported_fields_are_refused_by_name() {
        let boot = r#""boot-source": {"kernel_image_path": "k"}"#;
        let drive = |extra: &str| {
            format!(
                r#"{{{boot}, "drives": [{{"drive_id": "rootfs", "path_on_host": "r.ext4",
                    "is_root_device": true, "is_read_only": true{extra}}}]}}"#
            )
        };
        let raw = parse(&drive(
            r#", "cache_type": "Writeback", "io_engine": "Sync""#,
        ))
        .unwrap();
        let d = &raw.drives[0];
        assert_eq!((d.id.as_str(), d.root, d.read_only), ("rootfs", true, true));
        assert_eq!(d.cache, super::super::drive::CacheMode::Writeback);
        let err = parse(&drive(r#", "io_engine": "Async""#)).unwrap_err();
        assert!(
            err.to_string().contains("drive rootfs: field `io_engine`"),
            "{err}"
        );
        let err = parse(&drive(r#", "rate_limiter": {}"#)).unwrap_err();
        assert!(err.to_string().contains("`rate_limiter`"), "{err}");
        let err = parse(&drive(r#", "bogus": 1"#)).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Field { field, .. } if field == "drives[0].bogus"),
            "{err:?}"
        );
    }
}
