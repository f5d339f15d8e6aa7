//! The VM-wide state KVM emulates in the kernel: both 8259 PICs, the IOAPIC, the PIT and the
//! KVM clock. Read from a paused VM, written into a fresh one (after its irqchip and PIT
//! exist) on restore.

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, kvm_clock_data, kvm_irqchip,
    kvm_pit_state2,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

/// Errors saving or restoring the VM-wide state.
#[derive(Debug, thiserror::Error)]
pub enum VmStateError {
    #[error("cannot read the {0}")]
    Get(&'static str, #[source] kvm_ioctls::Error),
    #[error("cannot write the {0}")]
    Set(&'static str, #[source] kvm_ioctls::Error),
}

/// The in-kernel devices' state.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

const CHIPS: [(u32, &str); 3] = [
    (KVM_IRQCHIP_PIC_MASTER, "master PIC"),
    (KVM_IRQCHIP_PIC_SLAVE, "slave PIC"),
    (KVM_IRQCHIP_IOAPIC, "IOAPIC"),
];

fn read_chip(vm: &VmFd, chip_id: u32, what: &'static str) -> Result<kvm_irqchip, VmStateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(|e| VmStateError::Get(what, e))?;
    Ok(chip)
}

/// Reads the state of a VM whose vCPUs are paused.
pub fn save(vm: &VmFd) -> Result<VmState, VmStateError> {
    let [master, slave, ioapic] = CHIPS;
    let mut clock = vm
        .get_clock()
        .map_err(|e| VmStateError::Get("KVM clock", e))?;
    // Only the value is restored; the flags describe this host's clock source.
    clock.flags = 0;
    Ok(VmState {
        pic_master: read_chip(vm, master.0, master.1)?,
        pic_slave: read_chip(vm, slave.0, slave.1)?,
        ioapic: read_chip(vm, ioapic.0, ioapic.1)?,
        pit: vm.get_pit2().map_err(|e| VmStateError::Get("PIT", e))?,
        clock,
    })
}

/// Writes `state` into a VM that has its irqchip and PIT but has not run.
pub fn restore(vm: &VmFd, state: &VmState) -> Result<(), VmStateError> {
    let chips = [&state.pic_master, &state.pic_slave, &state.ioapic];
    for (chip, (_, what)) in chips.into_iter().zip(CHIPS) {
        vm.set_irqchip(chip)
            .map_err(|e| VmStateError::Set(what, e))?;
    }
    vm.set_pit2(&state.pit)
        .map_err(|e| VmStateError::Set("PIT", e))?;
    vm.set_clock(&state.clock)
        .map_err(|e| VmStateError::Set("KVM clock", e))?;
    Ok(())
}
