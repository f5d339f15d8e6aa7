//! Segment descriptors for the flat GDTs the boot protocols expect, and the matching
//! `kvm_segment` values for the vCPU's hidden segment state.
//!
//! KVM enters the guest with the hidden (cached) parts of the segment registers, not by
//! reading the GDT, so both must agree: the guest will reload segments from the table.

use kvm_bindings::kvm_segment;

/// Access byte: present, ring 0, code, execute/read, accessed.
pub const ACCESS_CODE: u8 = 0x9b;
/// Access byte: present, ring 0, data, read/write, accessed.
pub const ACCESS_DATA: u8 = 0x93;
/// Access byte: present, 64-bit TSS (busy).
pub const ACCESS_TSS: u8 = 0x8b;
/// Flags nibble: 4 KiB granularity, 64-bit code.
pub const FLAGS_LONG_CODE: u8 = 0xa;
/// Flags nibble: 4 KiB granularity, 32-bit operands.
pub const FLAGS_32: u8 = 0xc;
/// Flags nibble: byte granularity.
pub const FLAGS_BYTE: u8 = 0x0;

/// Encodes one 8-byte descriptor.
pub fn descriptor(access: u8, flags: u8, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (u64::from(access) << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (u64::from(flags & 0xf) << 52)
        | (((base >> 24) & 0xff) << 56)
}

/// The hidden segment state matching descriptor `desc` loaded through GDT slot `index`.
pub fn segment(desc: u64, index: u16) -> kvm_segment {
    let access = ((desc >> 40) & 0xff) as u8;
    let flags = ((desc >> 52) & 0xf) as u8;
    let raw_limit = ((desc & 0xffff) | ((desc >> 32) & 0xf_0000)) as u32;
    let granular = flags & 0x8 != 0;
    kvm_segment {
        base: (((desc >> 16) & 0xff_ffff) | ((desc >> 32) & 0xff00_0000)),
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: access & 0xf,
        present: (access >> 7) & 1,
        dpl: (access >> 5) & 3,
        db: (flags >> 2) & 1,
        s: (access >> 4) & 1,
        l: (flags >> 1) & 1,
        g: (flags >> 3) & 1,
        avl: flags & 1,
        unusable: 0,
        padding: 0,
    }
}

/// GDT for the Linux 64-bit boot protocol: null, 64-bit code (0x08), data (0x10), TSS (0x18).
pub fn long_mode_gdt() -> [u64; 4] {
    [
        0,
        descriptor(ACCESS_CODE, FLAGS_LONG_CODE, 0, 0xfffff),
        descriptor(ACCESS_DATA, FLAGS_32, 0, 0xfffff),
        descriptor(ACCESS_TSS, FLAGS_BYTE, 0, 0xfffff),
    ]
}

/// GDT for PVH's 32-bit entry: null, flat 32-bit code (0x08), flat data (0x10), TSS (0x18).
pub fn protected_mode_gdt() -> [u64; 4] {
    [
        0,
        descriptor(ACCESS_CODE, FLAGS_32, 0, 0xfffff),
        descriptor(ACCESS_DATA, FLAGS_32, 0, 0xfffff),
        descriptor(ACCESS_TSS, FLAGS_BYTE, 0, 0x67),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_long_mode_code_descriptor_has_the_well_known_encoding() {
        assert_eq!(long_mode_gdt()[1], 0x00af_9b00_0000_ffff);
        assert_eq!(long_mode_gdt()[2], 0x00cf_9300_0000_ffff);
        assert_eq!(protected_mode_gdt()[1], 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn segment_decodes_base_limit_and_flags_back() {
        let desc = descriptor(ACCESS_DATA, FLAGS_32, 0x1234_5678, 0xabcde);
        let seg = segment(desc, 2);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0xabcd_efff);
        assert_eq!(seg.selector, 0x10);
        assert_eq!((seg.type_, seg.present, seg.dpl, seg.s), (3, 1, 0, 1));
        assert_eq!((seg.db, seg.l, seg.g), (1, 0, 1));
        let code = segment(long_mode_gdt()[1], 1);
        assert_eq!((code.l, code.db, code.type_), (1, 0, 0xb));
        let tss = segment(protected_mode_gdt()[3], 3);
        assert_eq!((tss.limit, tss.g, tss.s), (0x67, 0, 0));
    }
}
