//! What a running VM can be asked to do while it runs: pause, resume, report its state, and
//! save a snapshot while paused. The API socket ([`crate::api`]) decodes requests into
//! [`Action`]s; this module holds the logic and the run-state machine, on the event-loop
//! thread, with the vCPU threads reached through their handles.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::bus::lock;
use crate::devices::legacy::SerialDevice;
use crate::devices::virtio::mmio::MmioTransport;
use crate::snapshot::{self, CpuModel, DeviceKind, Machine, SavedDevice, Snapshot, SnapshotError};
use crate::vstate::vcpu::{VcpuError, VcpuHandle, VcpuRequest, VcpuResponse};
use crate::vstate::vcpu_state::{self, VcpuState, VcpuStateError};
use crate::vstate::vm::Vm;
use crate::vstate::vm_state::{self, VmStateError};

/// A request to the VM, as the API decoded it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
pub enum Action {
    // Struct variants, even empty ones: serde refuses unknown fields only in those.
    Status {},
    Pause {},
    Resume {},
    Snapshot { dir: PathBuf },
}

/// Errors carrying out an [`Action`]; the VM stays as it was.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the VM is {0}, so it cannot {1}")]
    WrongState(RunState, &'static str),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("vCPU {0} answered {1:?}")]
    UnexpectedAnswer(u8, String),
    #[error("vCPU {0}: cannot read its state")]
    VcpuState(u8, #[source] VcpuStateError),
    #[error(transparent)]
    VmState(#[from] VmStateError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// Whether the guest runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Paused,
}

impl RunState {
    pub fn can_pause(self) -> bool {
        self == RunState::Running
    }
    pub fn can_resume(self) -> bool {
        self == RunState::Paused
    }
    /// A snapshot needs every vCPU out of the guest, so that memory and state agree.
    pub fn can_snapshot(self) -> bool {
        self == RunState::Paused
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
        })
    }
}

/// What an [`Action`] achieved.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    pub state: RunState,
    /// Memory bytes a snapshot wrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// The parts of a VM a snapshot reads.
pub struct VmParts {
    pub vm: Arc<Vm>,
    pub machine: Machine,
    pub cpu: CpuModel,
    pub console: Arc<Mutex<SerialDevice>>,
    pub control: Arc<Mutex<SerialDevice>>,
    pub devices: Vec<(DeviceKind, Arc<Mutex<MmioTransport>>)>,
}

/// Carries out actions on one running VM.
pub struct Controller {
    parts: VmParts,
    vcpus: Vec<VcpuHandle>,
    state: RunState,
    /// The MSRs to save, asked of KVM at the first snapshot.
    msrs: Option<Arc<Vec<u32>>>,
}

impl Controller {
    pub fn new(parts: VmParts, vcpus: Vec<VcpuHandle>) -> Self {
        Self {
            parts,
            vcpus,
            state: RunState::Running,
            msrs: None,
        }
    }

    /// Carries out `action`.
    pub fn handle(&mut self, action: Action) -> Result<Outcome, ControlError> {
        let bytes = match action {
            Action::Status {} => None,
            Action::Pause {} => self.pause().map(|()| None)?,
            Action::Resume {} => self.resume().map(|()| None)?,
            Action::Snapshot { dir } => Some(self.snapshot(&dir)?),
        };
        Ok(Outcome {
            state: self.state,
            bytes,
        })
    }

    fn pause(&mut self) -> Result<(), ControlError> {
        if !self.state.can_pause() {
            return Err(ControlError::WrongState(self.state, "pause"));
        }
        let all = self.ask_all(|| VcpuRequest::Pause, |r| matches!(r, VcpuResponse::Paused));
        if let Err(e) = all {
            // Whoever did pause must run again: a failed pause leaves the VM running.
            let _ = self.ask_all(|| VcpuRequest::Resume, |_| true);
            return Err(e);
        }
        self.state = RunState::Paused;
        Ok(())
    }

    fn resume(&mut self) -> Result<(), ControlError> {
        if !self.state.can_resume() {
            return Err(ControlError::WrongState(self.state, "resume"));
        }
        self.ask_all(
            || VcpuRequest::Resume,
            |r| matches!(r, VcpuResponse::Resumed),
        )?;
        self.state = RunState::Running;
        Ok(())
    }

    /// Sends every vCPU a request, then collects every answer, checking each with `ok`.
    fn ask_all(
        &self,
        request: impl Fn() -> VcpuRequest,
        ok: impl Fn(&VcpuResponse) -> bool,
    ) -> Result<(), ControlError> {
        for vcpu in &self.vcpus {
            vcpu.send(request())?;
        }
        let mut first_error = None;
        for vcpu in &self.vcpus {
            let answer = match vcpu.response() {
                Ok(r) if ok(&r) => continue,
                Ok(r) => ControlError::UnexpectedAnswer(vcpu.id(), format!("{r:?}")),
                Err(e) => e.into(),
            };
            first_error.get_or_insert(answer);
        }
        first_error.map_or(Ok(()), Err)
    }

    fn snapshot(&mut self, dir: &Path) -> Result<u64, ControlError> {
        if !self.state.can_snapshot() {
            return Err(ControlError::WrongState(self.state, "snapshot"));
        }
        let snapshot = self.collect()?;
        // Asked at each snapshot: with swap switched on since, untouched pages are unknown.
        let untouched_is_zero = crate::sys::memory::host_has_no_swap();
        let mem = &self.parts.vm.memory;
        Ok(snapshot::write(dir, &snapshot, mem, untouched_is_zero)?)
    }

    /// Reads the whole VM's state (vCPUs paused).
    fn collect(&mut self) -> Result<Snapshot, ControlError> {
        let msrs = match &self.msrs {
            Some(m) => m.clone(),
            None => {
                let list = vcpu_state::saveable_msrs(&self.parts.vm.kvm)
                    .map_err(|e| ControlError::VcpuState(0, e))?;
                self.msrs.insert(Arc::new(list)).clone()
            }
        };
        let vcpus = self.save_vcpus(&msrs)?;
        let p = &self.parts;
        Ok(Snapshot {
            written_by: format!("herd-vmm {}", env!("CARGO_PKG_VERSION")),
            machine: p.machine.clone(),
            cpu: p.cpu.clone(),
            vm: vm_state::save(&p.vm.fd)?,
            vcpus,
            console: lock(&p.console).snapshot(),
            control: lock(&p.control).snapshot(),
            devices: (p.devices.iter())
                .map(|(kind, t)| SavedDevice {
                    kind: kind.clone(),
                    transport: lock(t).save(),
                })
                .collect(),
        })
    }

    fn save_vcpus(&self, msrs: &Arc<Vec<u32>>) -> Result<Vec<VcpuState>, ControlError> {
        for vcpu in &self.vcpus {
            vcpu.send(VcpuRequest::Save(msrs.clone()))?;
        }
        let mut states = Vec::with_capacity(self.vcpus.len());
        let mut first_error = None;
        for vcpu in &self.vcpus {
            match vcpu.response() {
                Ok(VcpuResponse::Saved(Ok(state))) => states.push(*state),
                Ok(VcpuResponse::Saved(Err(e))) => {
                    first_error.get_or_insert(ControlError::VcpuState(vcpu.id(), e));
                }
                Ok(other) => {
                    let e = ControlError::UnexpectedAnswer(vcpu.id(), format!("{other:?}"));
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(e.into());
                }
            }
        }
        first_error.map_or(Ok(states), Err)
    }
}
