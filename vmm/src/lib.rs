//! herd-vmm: a minimal KVM virtual machine monitor, one process per microVM.
//!
//! `config` turns flags or a Firecracker config file into a validated [`config::VmConfig`];
//! [`vmm::Vmm::build`] turns that into a VM (memory, kernel, devices, vCPUs) and
//! [`vmm::Vmm::run`] runs it until the guest exits, resets, crashes or we are signalled.

pub mod api;
pub mod arch;
pub mod boot_files;
pub mod bus;
pub mod config;
pub mod console_log;
pub mod control;
pub mod devices;
pub mod event_loop;
pub mod host;
pub mod inputs;
pub mod jail;
pub mod logging;
pub mod restore;
pub mod seccomp;
pub mod snapshot;
pub mod stop;
pub mod sys;
pub mod vmm;
pub mod vstate;
