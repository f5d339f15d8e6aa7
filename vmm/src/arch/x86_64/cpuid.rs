//! CPUID as each vCPU sees it: KVM's supported set, with the per-vCPU topology filled in
//! (APIC ids, logical CPU count) and the hypervisor bit set.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// Adjusts `entries` (KVM's supported CPUID) for vCPU `id` of `count`.
pub fn patch_for_vcpu(entries: &mut [kvm_cpuid_entry2], id: u8, count: u8) {
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package.
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= EDX_HTT;
                }
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                // x2APIC id of this logical processor, on every sub-leaf.
                e.edx = u32::from(id);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0xdead_0800,
            ..Default::default()
        }
    }

    #[test]
    fn apic_id_and_cpu_count_are_written_into_leaf_1_and_topology_leaves() {
        let mut entries = vec![leaf(1, 0), leaf(0xb, 0), leaf(0xb, 1), leaf(0x8000_0001, 0)];
        patch_for_vcpu(&mut entries, 3, 4);
        assert_eq!(entries[0].ebx, 0x0304_0800);
        assert_ne!(entries[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(entries[0].edx & EDX_HTT, 0);
        assert_eq!((entries[1].edx, entries[2].edx), (3, 3));
        assert_eq!(entries[3].ebx, 0xdead_0800);
    }
}
