//! x86-64 machine: where things live in guest memory, the memory map, the MP table, the
//! tables and registers each boot protocol expects, and CPUID.
//!
//! Everything here writes plain bytes into guest memory or fills KVM structs; nothing touches
//! a file descriptor, so all of it is unit-tested against an anonymous guest memory.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod memory_map;
pub mod mptable;
pub mod paging;
pub mod regs;
