//! The Intel MultiProcessor Specification 1.4 table that tells a guest without ACPI how many
//! CPUs it has and how ISA interrupts reach the IOAPIC.
//!
//! The table is built as bytes (pure, tested on its own) and then copied to `MPTABLE_ADDR`.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{HIMEM_ADDR, IOAPIC_ADDR, IOAPIC_PINS, LAPIC_ADDR, MPTABLE_ADDR};

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("MP table for {0} vCPUs does not fit below 1 MiB")]
    TooLarge(u8),
    #[error("cannot write the MP table to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const SPEC_REV: u8 = 4;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOT_PROCESSOR: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;
/// CPU signature: family 6, as a modern CPU reports; guests only print it.
const CPU_SIGNATURE: u32 = 0x600;
/// Feature flags: FPU and APIC present.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

/// The IOAPIC's MP id: one past the last CPU's APIC id.
pub fn ioapic_id(vcpus: u8) -> u8 {
    vcpus
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_sub(*b))
}

fn entries(vcpus: u8) -> (Vec<u8>, u16) {
    let mut out = Vec::new();
    let mut count = 0u16;
    for cpu in 0..vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        out.extend_from_slice(&[ENTRY_PROCESSOR, cpu, LAPIC_VERSION, flags]);
        out.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        out.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        count += 1;
    }
    out.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID, b'I', b'S', b'A', b' ', b' ', b' ']);
    out.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id(vcpus), IOAPIC_VERSION, 1]);
    out.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    count += 2;
    for pin in 0..IOAPIC_PINS {
        let kind = INT_TYPE_INT;
        out.extend_from_slice(&[ENTRY_IO_INTERRUPT, kind, 0, 0, ISA_BUS_ID, pin]);
        out.extend_from_slice(&[ioapic_id(vcpus), pin]);
        count += 1;
    }
    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1)] {
        out.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0, ISA_BUS_ID, 0, 0xff, lint]);
        count += 1;
    }
    (out, count)
}

/// The floating pointer followed by the configuration table, as placed at `base`.
pub fn build(vcpus: u8, base: u64) -> Vec<u8> {
    let (body, count) = entries(vcpus);
    let table_len = HEADER_LEN + body.len();
    let table_addr = base + FLOATING_POINTER_LEN as u64;

    let mut fp = Vec::with_capacity(FLOATING_POINTER_LEN);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);

    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.extend_from_slice(&[SPEC_REV, 0]);
    table.extend_from_slice(b"HERD    ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&[0; 6]); // no OEM table
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    table.extend_from_slice(&[0; 4]); // no extended table
    table.extend_from_slice(&body);
    table[7] = checksum(&table);

    fp.extend_from_slice(&table);
    fp
}

/// Writes the MP table for `vcpus` CPUs at `MPTABLE_ADDR`.
pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), MptableError> {
    let bytes = build(vcpus, MPTABLE_ADDR);
    if MPTABLE_ADDR + bytes.len() as u64 > HIMEM_ADDR {
        return Err(MptableError::TooLarge(vcpus));
    }
    mem.write_slice(&bytes, GuestAddress(MPTABLE_ADDR))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROCESSOR_ENTRY_LEN: usize = 20;
    const SMALL_ENTRY_LEN: usize = 8;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn floating_pointer_and_table_checksums_are_zero() {
        for vcpus in [1, 4, 32] {
            let t = build(vcpus, MPTABLE_ADDR);
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0);
            let table = &t[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0);
        }
    }

    #[test]
    fn one_enabled_processor_entry_per_vcpu_with_cpu0_as_boot_processor() {
        let t = build(4, MPTABLE_ADDR);
        let table = &t[16..];
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 4 + 2 + 24 + 2);
        let mut off = HEADER_LEN;
        for cpu in 0..4u8 {
            let e = &table[off..off + PROCESSOR_ENTRY_LEN];
            assert_eq!((e[0], e[1]), (ENTRY_PROCESSOR, cpu));
            assert_eq!(e[3] & CPU_ENABLED, CPU_ENABLED);
            assert_eq!(e[3] & CPU_BOOT_PROCESSOR != 0, cpu == 0);
            off += PROCESSOR_ENTRY_LEN;
        }
        assert_eq!(table[off], ENTRY_BUS);
        assert_eq!(&table[off + SMALL_ENTRY_LEN..][..2], &[ENTRY_IOAPIC, 4]);
    }

    #[test]
    fn floating_pointer_points_at_the_table() {
        let t = build(2, MPTABLE_ADDR);
        let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
        assert_eq!(ptr, MPTABLE_ADDR + 16);
    }

    #[test]
    fn largest_table_fits_below_1_mib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        write(&mem, 32).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_ADDR))
            .unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}
