//! Feeds herd-vmm's reader of a snapshot's `state` file, which a restore believes only after
//! its checks: the input is read as a whole state file (header and body), and its bytes are
//! also wrapped in a valid header, so the JSON decoder sees them as a checksummed body. A
//! state that decodes is then applied to flags as a restore would (`apply_snapshot`) and
//! checked against this host's CPU and devices (`check_host`).
//!
//! Must hold: no panic, whatever the bytes; a state that is accepted has as many vCPU states
//! as its machine has vCPUs (or `check_host` refuses it).
#![no_main]

use std::path::Path;

use herd_vmm::config::RawVmConfig;
use herd_vmm::restore::{apply_snapshot, check_host};
use herd_vmm::snapshot::file::{parse_state, state_file_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("snap/state");
    let _ = parse_state(path, data);
    let Ok(snapshot) = parse_state(path, &state_file_bytes(data)) else {
        return;
    };
    let mut raw = RawVmConfig::default();
    let _ = apply_snapshot(&mut raw, &snapshot);
    let cpuid = kvm_bindings::CpuId::new(0).expect("an empty CPUID");
    if check_host(&snapshot, &cpuid, &[]).is_ok() {
        assert_eq!(snapshot.vcpus.len(), usize::from(snapshot.machine.vcpus));
    }
});
