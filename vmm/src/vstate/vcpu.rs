//! vCPUs: per-vCPU set-up (CPUID, MSRs, LAPIC, FPU, boot registers, or a snapshot's state),
//! the run loop as an explicit state machine on its own thread (running, paused, stopping),
//! driven by requests over a channel plus a kick out of `KVM_RUN`, and exit dispatch as a
//! free function so it can be tested without KVM.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{CpuId, Msrs};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::signal::Killable;

use crate::arch::x86_64::cpuid::patch_for_vcpu;
use crate::arch::x86_64::regs::{self, BootEntry};
use crate::bus::IoBuses;
use crate::logging::RateLimit;
use crate::seccomp::{Filters, SeccompError, ThreadKind};
use crate::stop::{GuestFault, StopReason, StopRequester, VmStop};
use crate::sys::time::monotonic_ns;
use crate::vstate::vcpu_state::{self, VcpuStateError};

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot create vCPU {0}")]
    Create(u8, #[source] kvm_ioctls::Error),
    #[error("vCPU {0}: cannot set {1}")]
    Configure(u8, &'static str, #[source] kvm_ioctls::Error),
    #[error("vCPU {0}: cannot start its thread")]
    Spawn(u8, #[source] std::io::Error),
    #[error("vCPU {0}")]
    Seccomp(u8, #[source] SeccompError),
    #[error("vCPU {0}: cannot restore its state")]
    Restore(u8, #[source] VcpuStateError),
    #[error("vCPU {0}: its thread has ended")]
    Gone(u8),
    #[error("vCPU {0}: cannot signal its thread")]
    Kick(u8, #[source] vmm_sys_util::errno::Error),
    #[error("vCPU {0}: no answer from its thread")]
    NoResponse(u8),
}

/// What the run loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Re-enter the guest.
    Continue,
    /// End the VM for this reason.
    Stop(StopReason),
}

/// States of a vCPU thread.
#[derive(Debug, PartialEq, Eq)]
enum RunState {
    Running,
    Paused,
    Stopping(StopReason),
    Done,
}

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

static UNCLAIMED_IO_LOG: RateLimit = RateLimit::new(10);

fn unclaimed(kind: &str, addr: u64, len: usize) {
    if UNCLAIMED_IO_LOG.allow() {
        tracing::debug!("guest {kind} of {len} bytes at {addr:#x}: no device there");
    }
}

/// Dispatches one exit of vCPU `id` to the devices on `io`.
pub fn handle_exit(id: u8, exit: VcpuExit<'_>, io: &IoBuses) -> ExitAction {
    let fault = |f: GuestFault| ExitAction::Stop(StopReason::Fault(f));
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !io.pio.read(u64::from(port), data) {
                unclaimed("port read", port.into(), data.len());
                data.fill(0xff);
            }
        }
        VcpuExit::IoOut(port, data) => {
            if !io.pio.write(u64::from(port), data) {
                unclaimed("port write", port.into(), data.len());
            }
        }
        VcpuExit::MmioRead(addr, data) => {
            if !io.mmio.read(addr, data) {
                unclaimed("MMIO read", addr, data.len());
                data.fill(0xff);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !io.mmio.write(addr, data) {
                unclaimed("MMIO write", addr, data.len());
            }
        }
        // The in-kernel irqchip handles HLT; an exit for it or a signal just re-enters.
        VcpuExit::Hlt | VcpuExit::Intr => {}
        VcpuExit::Shutdown => return fault(GuestFault::TripleFault(id)),
        VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET, _) => {
            return ExitAction::Stop(StopReason::GuestReset);
        }
        VcpuExit::SystemEvent(kind @ KVM_SYSTEM_EVENT_CRASH, _) => {
            return fault(GuestFault::Crash { vcpu: id, kind });
        }
        VcpuExit::InternalError => return fault(GuestFault::InternalError(id)),
        VcpuExit::FailEntry(reason, _) => return fault(GuestFault::FailEntry { vcpu: id, reason }),
        other => {
            return fault(GuestFault::UnhandledExit {
                vcpu: id,
                exit: format!("{other:?}"),
            });
        }
    }
    ExitAction::Continue
}

/// KVM's supported CPUID (from the cache in `cache_dir` when there is one), read once per
/// VM and patched per vCPU.
pub fn supported_cpuid(kvm: &Kvm, cache_dir: Option<&Path>) -> Result<CpuId, VcpuError> {
    super::cpuid_cache::supported_cpuid(kvm, cache_dir)
        .map_err(|e| VcpuError::Configure(0, "CPUID", e))
}

/// One vCPU, configured and ready to run.
#[derive(Debug)]
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
}

impl Vcpu {
    /// Creates vCPU `id` (its APIC id too).
    pub fn new(vm: &VmFd, id: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| VcpuError::Create(id, e))?;
        Ok(Self { id, fd })
    }

    /// Sets CPUID (from KVM's `supported` set), MSRs, LAPIC and FPU; the boot vCPU also gets
    /// `boot` registers. Other vCPUs wait for INIT/SIPI from the guest, as on real hardware.
    pub fn configure(
        &self,
        supported: &CpuId,
        count: u8,
        boot: Option<BootEntry>,
    ) -> Result<(), VcpuError> {
        let err = |what| move |e| VcpuError::Configure(self.id, what, e);
        let mut cpuid = supported.clone();
        patch_for_vcpu(cpuid.as_mut_slice(), self.id, count);
        self.fd.set_cpuid2(&cpuid).map_err(err("CPUID"))?;
        let msrs = Msrs::from_entries(&regs::boot_msrs()).expect("a handful of MSRs fits");
        let written = self.fd.set_msrs(&msrs).map_err(err("MSRs"))?;
        if written != msrs.as_slice().len() {
            tracing::debug!(
                vcpu = self.id,
                "KVM accepted {written} of {} boot MSRs",
                msrs.as_slice().len()
            );
        }
        let lapic = self.fd.get_lapic().map_err(err("LAPIC"))?;
        self.fd
            .set_lapic(&regs::wire_lapic_lints(lapic))
            .map_err(err("LAPIC"))?;
        self.fd.set_fpu(&regs::boot_fpu()).map_err(err("FPU"))?;
        if let Some(entry) = boot {
            let sregs = self.fd.get_sregs().map_err(err("special registers"))?;
            self.fd
                .set_sregs(&regs::boot_sregs(sregs, entry))
                .map_err(err("special registers"))?;
            self.fd
                .set_regs(&regs::boot_regs(entry))
                .map_err(err("registers"))?;
        }
        Ok(())
    }

    /// Writes a snapshot's state into this freshly created vCPU (instead of `configure`).
    pub fn restore(&self, state: &vcpu_state::VcpuState) -> Result<(), VcpuError> {
        vcpu_state::restore(&self.fd, state).map_err(|e| VcpuError::Restore(self.id, e))
    }

    /// Starts the vCPU on its own thread, which installs `seccomp`'s vCPU filter before it
    /// first enters the guest; returns once the filter is in place, with the handle that
    /// pauses, resumes and saves it.
    pub fn start(
        self,
        io: Arc<IoBuses>,
        stop: Arc<VmStop>,
        seccomp: Option<Filters>,
    ) -> Result<VcpuHandle, VcpuError> {
        let id = self.id;
        let (installed_tx, installed) = std::sync::mpsc::sync_channel(1);
        let (request_tx, requests) = mpsc::channel();
        let (response_tx, responses) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                let filtered = seccomp.map_or(Ok(()), |f| f.install(ThreadKind::Vcpu));
                let ok = filtered.is_ok();
                let _ = installed_tx.send(filtered);
                if ok {
                    let control = Control {
                        requests,
                        responses: response_tx,
                    };
                    self.run_loop(&io, &stop, &control);
                }
            })
            .map_err(|e| VcpuError::Spawn(id, e))?;
        match installed.recv() {
            Ok(Ok(())) => Ok(VcpuHandle {
                id,
                requests: request_tx,
                responses,
                thread,
            }),
            Ok(Err(e)) => Err(VcpuError::Seccomp(id, e)),
            Err(_) => Err(VcpuError::Spawn(id, std::io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn run_loop(mut self, io: &IoBuses, stop: &VmStop, control: &Control) {
        crate::sys::kick::register_vcpu_thread(&mut self.fd);
        let mut state = RunState::Running;
        let mut first_entry = self.id == 0;
        while state != RunState::Done {
            state = match state {
                RunState::Running => {
                    if first_entry {
                        tracing::debug!(monotonic_ns = %monotonic_ns(), "vcpu0 first KVM_RUN");
                        first_entry = false;
                    }
                    self.step(io, stop, control)
                }
                RunState::Paused => self.paused(control),
                RunState::Stopping(reason) => {
                    stop.request_stop(reason);
                    RunState::Done
                }
                RunState::Done => RunState::Done,
            };
        }
    }

    fn step(&mut self, io: &IoBuses, stop: &VmStop, control: &Control) -> RunState {
        let action = match self.fd.run() {
            Ok(exit) => handle_exit(self.id, exit, io),
            Err(e) if e.errno() == libc::EINTR => {
                // A kick (or a stray signal): whatever access was in flight is complete now.
                self.fd.set_kvm_immediate_exit(0);
                if let Some(next) = self.serve_requests(control, RunState::Running) {
                    return next;
                }
                ExitAction::Continue
            }
            Err(e) if e.errno() == libc::EAGAIN => ExitAction::Continue,
            Err(e) => ExitAction::Stop(StopReason::Fault(GuestFault::RunFailed {
                vcpu: self.id,
                errno: e.to_string(),
            })),
        };
        match action {
            ExitAction::Stop(reason) => RunState::Stopping(reason),
            ExitAction::Continue if stop.is_requested() => RunState::Done,
            ExitAction::Continue => RunState::Running,
        }
    }

    /// Waits for requests while paused.
    fn paused(&mut self, control: &Control) -> RunState {
        match control.requests.recv() {
            Ok(request) => self.answer(request, RunState::Paused, control),
            // The VMM is gone: nothing will resume us.
            Err(_) => RunState::Done,
        }
    }

    /// Answers every queued request; the state they leave the vCPU in, if any came.
    fn serve_requests(&mut self, control: &Control, mut state: RunState) -> Option<RunState> {
        let mut any = false;
        while let Ok(request) = control.requests.try_recv() {
            state = self.answer(request, state, control);
            any = true;
        }
        any.then_some(state)
    }

    fn answer(&mut self, request: VcpuRequest, state: RunState, control: &Control) -> RunState {
        let (next, response) = match request {
            VcpuRequest::Pause => (RunState::Paused, VcpuResponse::Paused),
            VcpuRequest::Resume => (RunState::Running, VcpuResponse::Resumed),
            VcpuRequest::Save(msrs) if state == RunState::Paused => {
                let saved = vcpu_state::save(&self.fd, self.id, &msrs);
                (state, VcpuResponse::Saved(saved.map(Box::new)))
            }
            VcpuRequest::Save(_) => (state, VcpuResponse::NotPaused),
        };
        let _ = control.responses.send(response);
        next
    }
}

/// What the VMM asks of a running vCPU thread.
#[derive(Debug)]
pub enum VcpuRequest {
    /// Leave the guest and wait.
    Pause,
    /// Re-enter the guest.
    Resume,
    /// Read the (paused) vCPU's state, with these MSRs.
    Save(Arc<Vec<u32>>),
}

/// A vCPU thread's answer to a [`VcpuRequest`].
#[derive(Debug)]
pub enum VcpuResponse {
    Paused,
    Resumed,
    Saved(Result<Box<vcpu_state::VcpuState>, VcpuStateError>),
    /// State can only be read from a paused vCPU.
    NotPaused,
}

/// The vCPU thread's ends of its request and response channels.
struct Control {
    requests: Receiver<VcpuRequest>,
    responses: Sender<VcpuResponse>,
}

/// A running vCPU thread, as the VMM holds it.
#[derive(Debug)]
pub struct VcpuHandle {
    id: u8,
    requests: Sender<VcpuRequest>,
    responses: Receiver<VcpuResponse>,
    thread: JoinHandle<()>,
}

/// How long a vCPU may take to answer: it only has to leave `KVM_RUN` and read registers.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

impl VcpuHandle {
    /// The vCPU's id.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Sends `request` and kicks the thread out of the guest so it sees it.
    pub fn send(&self, request: VcpuRequest) -> Result<(), VcpuError> {
        self.requests
            .send(request)
            .map_err(|_| VcpuError::Gone(self.id))?;
        self.thread
            .kill(crate::sys::kick::kick_signal())
            .map_err(|e| VcpuError::Kick(self.id, e))
    }

    /// Waits for the answer to the request sent last.
    pub fn response(&self) -> Result<VcpuResponse, VcpuError> {
        self.responses
            .recv_timeout(RESPONSE_TIMEOUT)
            .map_err(|_| VcpuError::NoResponse(self.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::tests::Recorder;
    use std::sync::Mutex;

    fn buses() -> (IoBuses, Arc<Mutex<Recorder>>) {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut io = IoBuses::default();
        io.pio.insert("rec", 0x3f8, 8, dev.clone()).unwrap();
        io.mmio
            .insert("rec-mmio", 0xc000_0000, 0x1000, dev.clone())
            .unwrap();
        (io, dev)
    }

    #[test]
    fn port_and_mmio_accesses_reach_their_devices() {
        let (io, dev) = buses();
        assert_eq!(
            handle_exit(0, VcpuExit::IoOut(0x3f8, b"x"), &io),
            ExitAction::Continue
        );
        assert_eq!(
            handle_exit(0, VcpuExit::MmioWrite(0xc000_0000, &[123]), &io),
            ExitAction::Continue
        );
        let mut b = [0u8; 1];
        handle_exit(0, VcpuExit::IoIn(0x3fd, &mut b), &io);
        assert_eq!(b, [0xab]);
        assert_eq!(
            dev.lock().unwrap().writes,
            vec![(0, vec![b'x']), (0, vec![123])]
        );
    }

    #[test]
    fn reads_where_no_device_is_float_high_and_writes_are_dropped() {
        let (io, dev) = buses();
        let mut b = [0u8; 2];
        assert_eq!(
            handle_exit(0, VcpuExit::IoIn(0x80, &mut b), &io),
            ExitAction::Continue
        );
        assert_eq!(b, [0xff, 0xff]);
        let mut m = [0u8; 4];
        handle_exit(0, VcpuExit::MmioRead(0xd000_0000, &mut m), &io);
        assert_eq!(m, [0xff; 4]);
        handle_exit(0, VcpuExit::IoOut(0x80, &[1]), &io);
        assert!(dev.lock().unwrap().writes.is_empty());
    }

    #[test]
    fn triple_fault_internal_error_and_unknown_exits_stop_with_a_fault() {
        let (io, _) = buses();
        let stop = |f| ExitAction::Stop(StopReason::Fault(f));
        assert_eq!(
            handle_exit(2, VcpuExit::Shutdown, &io),
            stop(GuestFault::TripleFault(2))
        );
        assert_eq!(
            handle_exit(1, VcpuExit::InternalError, &io),
            stop(GuestFault::InternalError(1))
        );
        assert_eq!(
            handle_exit(0, VcpuExit::FailEntry(0x21, 0), &io),
            stop(GuestFault::FailEntry {
                vcpu: 0,
                reason: 0x21
            })
        );
        assert!(matches!(
            handle_exit(0, VcpuExit::IrqWindowOpen, &io),
            ExitAction::Stop(StopReason::Fault(GuestFault::UnhandledExit { vcpu: 0, .. }))
        ));
    }

    #[test]
    fn kvm_reset_and_shutdown_events_end_the_vm_cleanly() {
        let (io, _) = buses();
        for kind in [KVM_SYSTEM_EVENT_SHUTDOWN, KVM_SYSTEM_EVENT_RESET] {
            assert_eq!(
                handle_exit(0, VcpuExit::SystemEvent(kind, &[]), &io),
                ExitAction::Stop(StopReason::GuestReset)
            );
        }
    }
}
