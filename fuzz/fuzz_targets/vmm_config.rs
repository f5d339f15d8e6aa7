//! Feeds herd-vmm's configuration parsers: the input is the text of a `--config-file`
//! (Firecracker's schema, `parse_firecracker_config`), and is also read as a command line, one
//! `--flag VALUE` per line: `--disk` (`DriveConfig::from_flag`), `--net` (`parse_net_flag`),
//! `--vsock` (`parse_vsock_flag`), `--cmdline` (`KernelCmdline`), `--vcpus`, `--memory` and
//! the console-log flags. Both resulting configs are validated.
//!
//! Must hold: no panic, whatever the bytes; a config that validates keeps the invariants
//! `Vmm::build` relies on (vCPUs and memory in range, a command line that fits and still fits
//! or is refused once the root device's words are added, unique drive ids with the root first).
#![no_main]

use std::path::Path;

use herd_vmm::config::drive::root_words;
use herd_vmm::config::{
    DriveConfig, KernelCmdline, MAX_CMDLINE_LEN, MAX_VCPUS, MIN_MEMORY_MIB, MIN_VCPUS, RawVmConfig,
    VmConfig, parse_firecracker_config, parse_net_flag, parse_vsock_flag,
};
use libfuzzer_sys::fuzz_target;

/// The host memory the validator checks against (MiB): large, so size checks are reached.
const HOST_MIB: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(raw) = parse_firecracker_config(text, Path::new("fuzz.json")) {
        check(raw);
    }
    if let Some(raw) = from_flags(text) {
        check(raw);
    }
});

/// A config from flags: `text` read as a command line, one `--flag VALUE` per line (other
/// lines are ignored), assembled as `herd-vmm`'s `resolve_config` does; `None` when a flag is
/// refused.
fn from_flags(text: &str) -> Option<RawVmConfig> {
    let mut raw = RawVmConfig {
        kernel: "vmlinux".into(),
        ..RawVmConfig::default()
    };
    for (flag, value) in text.lines().filter_map(|l| l.split_once(' ')) {
        match flag {
            "--disk" => raw
                .drives
                .push(DriveConfig::from_flag(value, raw.drives.len()).ok()?),
            "--net" => raw.net.push(parse_net_flag(raw.net.len(), value).ok()?),
            "--vsock" => raw.vsock = Some(parse_vsock_flag(value).ok()?),
            "--cmdline" => raw.cmdline = Some(value.to_owned()),
            "--vcpus" => raw.vcpus = Some(value.parse().ok()?),
            "--memory" => raw.memory_mib = Some(value.parse().ok()?),
            "--console-log" => raw.console_log = Some(value.into()),
            "--console-log-max-bytes" => raw.console_log_max_bytes = Some(value.parse().ok()?),
            _ => {}
        }
    }
    Some(raw)
}

fn check(raw: RawVmConfig) {
    if let Ok(cfg) = raw.validate(HOST_MIB) {
        check_valid(&cfg);
    }
}

fn check_valid(cfg: &VmConfig) {
    assert!((MIN_VCPUS..=MAX_VCPUS).contains(&cfg.vcpus.get()));
    assert!(cfg.memory.mib() >= u64::from(MIN_MEMORY_MIB) && cfg.memory.mib() <= HOST_MIB);
    let line = cfg.cmdline.as_str();
    assert!(line.len() < MAX_CMDLINE_LEN && !line.contains('\0'));
    // What `Vmm::build` does next: append the root device's words, checked again.
    if let Ok(full) = cfg.cmdline.with_words(&root_words(&cfg.drives)) {
        assert!(full.as_str().len() < MAX_CMDLINE_LEN);
        assert_eq!(KernelCmdline::new(full.as_str()).ok().as_ref(), Some(&full));
    }
    let roots = cfg.drives.iter().filter(|d| d.root).count();
    assert!(roots <= 1 && (roots == 0 || cfg.drives[0].root));
    for (i, d) in cfg.drives.iter().enumerate() {
        assert!(cfg.drives[..i].iter().all(|o| o.id != d.id));
    }
}
