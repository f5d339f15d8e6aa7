//! Builds a running microVM from a [`VmConfig`]: opens the inputs, creates the VM, loads the
//! kernel, wires the devices, configures the vCPUs, then runs vCPU threads plus the event loop
//! on the calling thread until the VM stops.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::api::ApiServer;
use crate::arch::x86_64::boot::{self, BootError};
use crate::arch::x86_64::layout::{BOOT_TIMER_ADDR, COM1_IRQ, COM2_IRQ};
use crate::arch::x86_64::mptable::{self, MptableError};
use crate::arch::x86_64::regs::BootEntry;
use crate::boot_files;
use crate::bus::{BusError, IoBuses};
use crate::config::{ConfigError, ConsoleOutput, KernelCmdline, VmConfig};
use crate::console_log::{ConsoleLogError, RotatingFile};
use crate::control::{Controller, VmParts};
use crate::devices::legacy::boot_timer::BOOT_TIMER_LEN;
use crate::devices::legacy::exit_port::EXIT_PORT;
use crate::devices::legacy::i8042::{I8042_BASE, I8042_LEN};
use crate::devices::legacy::serial::SerialSnapshot;
use crate::devices::legacy::serial::{COM1_BASE, COM1_LEN, COM2_BASE, ConsoleWriter};
use crate::devices::legacy::{BootClock, BootTimer, ExitPort, I8042, SerialDevice};
use crate::devices::virtio::VirtioDevice;
use crate::devices::virtio::block::{Block, Disk, DiskError};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::mmio::attach::{self, AttachError, VirtioSlot};
use crate::devices::virtio::mmio::notify::QueueNotifier;
use crate::devices::virtio::mmio::state::SavedTransport;
use crate::devices::virtio::net::{Net, NetSettings};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::{MuxerError, Vsock};
use crate::event_loop::{ConsoleInput, StopWatcher};
pub use crate::inputs::HostInputs;
use crate::restore::{self, RestoreError};
use crate::seccomp::{Filters, SeccompError, ThreadKind};
use crate::snapshot::identity::{IdentityError, IdentityMembers};
use crate::snapshot::{self, CpuModel, DeviceKind, Machine, Snapshot};
use crate::stop::{StopReason, VmStop};
use crate::sys::memory::{peak_rss_kib, resident_bytes};
use crate::sys::tap::{Tap, TapError};
use crate::vstate;
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vm::{Vm, VmError};
use kvm_bindings::CpuId;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{what} {path}")]
    OpenFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path} is not a regular file")]
    NotAFile { what: &'static str, path: PathBuf },
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("kernel {path}")]
    Kernel {
        path: PathBuf,
        #[source]
        source: BootError,
    },
    #[error("initrd {path}")]
    Initrd {
        path: PathBuf,
        #[source]
        source: BootError,
    },
    #[error("cannot write boot information")]
    BootInfo(#[source] BootError),
    #[error(transparent)]
    Mptable(#[from] MptableError),
    #[error("cannot register a device")]
    Bus(#[from] BusError),
    #[error("kernel command line with the device announcements")]
    Cmdline(#[source] ConfigError),
    #[error("network interface {iface}: TAP {tap}")]
    Tap {
        iface: String,
        tap: String,
        #[source]
        source: TapError,
    },
    #[error("drive {id}")]
    Drive {
        id: String,
        #[source]
        source: DiskError,
    },
    #[error("vsock device (guest CID {cid})")]
    Vsock {
        cid: u64,
        #[source]
        source: MuxerError,
    },
    #[error("cannot attach virtio device {0}")]
    Virtio(&'static str, #[source] AttachError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("cannot create the event {0}")]
    EventFd(&'static str, #[source] io::Error),
    #[error("cannot route interrupt {0} into the guest")]
    Irqfd(u32, #[source] kvm_ioctls::Error),
    #[error("cannot install signal handlers")]
    Signals(#[source] vmm_sys_util::errno::Error),
    #[error("event loop failed")]
    EventLoop(#[source] event_manager::Error),
    #[error(transparent)]
    ConsoleLog(#[from] ConsoleLogError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("cannot restore snapshot {0}")]
    Restore(PathBuf, #[source] RestoreError),
    #[error(transparent)]
    Identity(IdentityError),
}

/// A built VM, ready to run.
pub struct Vmm {
    vm: Arc<Vm>,
    vcpus: Vec<Vcpu>,
    io: Arc<IoBuses>,
    serial: Arc<Mutex<SerialDevice>>,
    control_port: Arc<Mutex<SerialDevice>>,
    /// The virtio devices in slot order, with what they are (for snapshots).
    devices: Vec<(DeviceKind, Arc<Mutex<MmioTransport>>)>,
    machine: Machine,
    cpu: CpuModel,
    /// The control socket, served once the vCPUs run.
    api: Option<UnixListener>,
    stop: Arc<VmStop>,
    events: EventManager<Box<dyn MutEventSubscriber + Send>>,
    /// Listening sockets to remove when the VMM ends (the devices that own them may outlive
    /// `run` on a vCPU thread that is never joined).
    socket_files: Vec<PathBuf>,
    /// The threads' seccomp filters, installed by `run` once the VM is built.
    seccomp: Option<Filters>,
}

impl Drop for Vmm {
    fn drop(&mut self) {
        for path in &self.socket_files {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("vm", &self.vm)
            .field("vcpus", &self.vcpus.len())
            .finish()
    }
}

pub(crate) fn eventfd(what: &'static str) -> Result<EventFd, VmmError> {
    EventFd::new(EFD_NONBLOCK).map_err(|e| VmmError::EventFd(what, e))
}

impl Vmm {
    /// Builds the VM described by `config` from what [`HostInputs::open`] opened for it; the
    /// boot timer counts from `clock`.
    pub fn build(
        config: &VmConfig,
        clock: BootClock,
        inputs: HostInputs,
    ) -> Result<Self, VmmError> {
        Self::assemble(config, clock, inputs, None)
    }

    /// Builds the VM `snapshot` describes (`config` was filled from it by
    /// [`crate::restore::apply_snapshot`]), its memory mapped from the snapshot's memory file,
    /// ready to resume where it was paused; the guest is told its new identity.
    pub fn restore(
        config: &VmConfig,
        clock: BootClock,
        inputs: HostInputs,
        snapshot: &Snapshot,
    ) -> Result<Self, VmmError> {
        Self::assemble(config, clock, inputs, Some(snapshot))
    }

    fn assemble(
        config: &VmConfig,
        clock: BootClock,
        inputs: HostInputs,
        snapshot: Option<&Snapshot>,
    ) -> Result<Self, VmmError> {
        let mut phases = Phases::new(clock.wall);
        phases.mark("open");
        let HostInputs {
            kvm,
            cpuid,
            kernel,
            initrds,
            restore,
            disks,
            taps,
            stop_signals,
        } = inputs;
        let (mem_bytes, vcpu_count) = (config.memory.bytes(), config.vcpus.get());
        let virtio = plan_virtio(config, disks, taps)?;
        let kinds: Vec<DeviceKind> = virtio.devices.iter().map(|d| d.kind.clone()).collect();
        if let Some(s) = snapshot {
            restore::check_host(s, &cpuid, &kinds)
                .map_err(|e| VmmError::Restore(snapshot_dir(config).to_owned(), e))?;
        }
        let (memory_file, identity) =
            restore.map_or((None, None), |r| (Some(r.memory), r.identity));
        let vm = Vm::new(kvm, mem_bytes, vcpu_count)?;
        phases.mark("vm");
        let vcpus = match (snapshot, &memory_file, kernel) {
            (Some(s), Some(memory), _) => resume_guest(&vm, s, memory, snapshot_dir(config))?,
            (_, _, Some(mut kernel)) => {
                let entry = load_guest(&vm, config, &virtio.cmdline, &mut kernel, initrds)?;
                create_vcpus(&vm, vcpu_count, entry, &cpuid)?
            }
            _ => unreachable!("HostInputs opens a kernel unless it restores"),
        };
        phases.mark("load");
        let stop = Arc::new(VmStop::new().map_err(|e| VmmError::EventFd("stop", e))?);
        let console = open_console(&config.console)?;
        let saved_ports = snapshot.map(|s| (&s.console, &s.control));
        let (mut io, ports) = wire_devices(&vm, &stop, clock, console, saved_ports)?;
        let saved_devices = snapshot.map(|s| s.devices.iter().map(|d| &d.transport).collect());
        let notifiers = wire_virtio(&vm, &mut io, virtio, saved_devices)?;
        let devices: Vec<_> = kinds
            .into_iter()
            .zip(notifiers.iter().map(|n| n.transport()))
            .collect();
        if snapshot.is_some() {
            resume_devices(&devices, &ports.control, identity.as_ref())
                .map_err(|e| VmmError::Restore(snapshot_dir(config).to_owned(), e))?;
        }
        let api = config
            .api_socket
            .as_deref()
            .map(bind_api_socket)
            .transpose()?;
        let events = event_loop(&ports, &stop, config.stop_grace, notifiers, stop_signals)?;
        phases.mark("devices");
        tracing::debug!(%phases, "VM built");
        let mut socket_files: Vec<PathBuf> =
            config.vsock.iter().map(|v| v.uds_path.clone()).collect();
        socket_files.extend(config.api_socket.clone());
        Ok(Self {
            machine: Machine {
                vcpus: vcpu_count,
                memory_mib: config.memory.mib(),
                cmdline: config.cmdline.as_str().to_owned(),
            },
            cpu: CpuModel::from_cpuid(cpuid.as_slice()),
            vm: Arc::new(vm),
            vcpus,
            io: Arc::new(io),
            serial: ports.console,
            control_port: ports.control,
            devices,
            api,
            stop,
            events,
            socket_files,
            seccomp: Filters::build(config.seccomp)?,
        })
    }

    /// Runs the VM until it stops; returns why.
    pub fn run(mut self) -> Result<StopReason, VmmError> {
        crate::sys::kick::install_kick_handler().map_err(VmmError::Signals)?;
        let mut handles = Vec::with_capacity(self.vcpus.len());
        for vcpu in self.vcpus.drain(..) {
            handles.push(vcpu.start(self.io.clone(), self.stop.clone(), self.seccomp.clone())?);
        }
        // Without a control socket the handles only keep the vCPU threads' channels open.
        let _unserved = match self.api.take() {
            Some(listener) => {
                let controller = Controller::new(self.parts(), handles);
                self.events
                    .add_subscriber(Box::new(ApiServer::new(listener, controller)));
                None
            }
            None => Some(handles),
        };
        if let Some(filters) = &self.seccomp {
            filters.install(ThreadKind::EventLoop)?;
        }
        let reason = loop {
            if let Some(reason) = self.stop.reason() {
                break reason;
            }
            self.events.run().map_err(VmmError::EventLoop)?;
        };
        crate::bus::lock(&self.serial).flush();
        if tracing::enabled!(tracing::Level::DEBUG) {
            self.log_memory_use();
        }
        // vCPU threads still inside KVM_RUN (application processors the guest never started,
        // or a guest spinning) end with the process; nothing of theirs needs saving.
        Ok(reason)
    }
}

impl Vmm {
    /// What the controller needs to snapshot the VM.
    fn parts(&self) -> VmParts {
        VmParts {
            vm: self.vm.clone(),
            machine: self.machine.clone(),
            cpu: self.cpu.clone(),
            console: self.serial.clone(),
            control: self.control_port.clone(),
            devices: self.devices.clone(),
        }
    }

    /// Logs peak RSS and how much of it is guest memory, so benchmarks can tell the VMM's own
    /// overhead apart.
    fn log_memory_use(&self) {
        let guest: u64 = self
            .vm
            .memory
            .iter()
            .filter_map(|r| resident_bytes(r.as_ptr(), r.len() as usize).ok())
            .sum();
        tracing::debug!(
            peak_rss_kib = peak_rss_kib(),
            guest_resident_kib = guest / 1024,
            "memory use"
        );
    }
}

/// Loads kernel and initrd parts and writes the boot structures; returns the entry.
fn load_guest(
    vm: &Vm,
    config: &VmConfig,
    cmdline: &KernelCmdline,
    kernel_file: &mut File,
    initrd_files: Vec<File>,
) -> Result<BootEntry, VmmError> {
    let mem_bytes = config.memory.bytes();
    let kernel = boot::load_kernel(&vm.memory, kernel_file, mem_bytes).map_err(|source| {
        VmmError::Kernel {
            path: config.kernel.clone(),
            source,
        }
    })?;
    if config.map_boot_files && kernel.setup_header.is_none() {
        match boot_files::share_elf_kernel(&vm.memory, kernel_file) {
            Ok(bytes) => tracing::debug!(bytes, "kernel pages mapped from the page cache"),
            Err(e) => tracing::debug!(error = ?e, "kernel pages stay copied"),
        }
    }
    let initrd = load_initrds(vm, config, &kernel, initrd_files)?;
    boot::write_boot_info(&vm.memory, &kernel, initrd, cmdline.as_str(), mem_bytes)
        .map_err(VmmError::BootInfo)?;
    mptable::write(&vm.memory, config.vcpus.get())?;
    tracing::debug!(entry = ?kernel.entry, ?initrd, "kernel loaded");
    Ok(kernel.entry)
}

/// Places the initrd parts one after another; the guest sees one initrd.
fn load_initrds(
    vm: &Vm,
    config: &VmConfig,
    kernel: &boot::LoadedKernel,
    mut files: Vec<File>,
) -> Result<Option<boot::LoadedInitrd>, VmmError> {
    if files.is_empty() {
        return Ok(None);
    }
    let err = |path: &Path, source| VmmError::Initrd {
        path: path.to_owned(),
        source,
    };
    let mut sizes = Vec::with_capacity(files.len());
    for (file, path) in files.iter().zip(&config.initrds) {
        let meta = file
            .metadata()
            .map_err(|e| err(path, BootError::ReadInitrd(e)))?;
        sizes.push(meta.len());
    }
    let plan = boot::plan_initrd(&sizes, kernel, config.memory.bytes())
        .map_err(|e| err(&config.initrds[config.initrds.len() - 1], e))?;
    for (i, file) in files.iter_mut().enumerate() {
        // Only the first part starts page-aligned.
        if i == 0 && config.map_boot_files {
            match boot_files::share_initrd_part(&vm.memory, file, plan.parts[0], sizes[0]) {
                Ok(()) => continue,
                Err(e) => tracing::debug!(error = ?e, "initrd stays copied"),
            }
        }
        boot::load_initrd_part(&vm.memory, file, plan.parts[i], sizes[i])
            .map_err(|e| err(&config.initrds[i], e))?;
    }
    Ok(Some(plan.initrd))
}

/// Time spent in each build phase, for `HERD_LOG=debug` and benchmarks.
struct Phases {
    last: Instant,
    spent: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn new(start: Instant) -> Self {
        Self {
            last: start,
            spent: Vec::new(),
        }
    }

    fn mark(&mut self, phase: &'static str) {
        let now = Instant::now();
        self.spent.push((phase, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (phase, d)) in self.spent.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{phase}={}us", d.as_micros())?;
        }
        Ok(())
    }
}

fn create_vcpus(
    vm: &Vm,
    count: u8,
    entry: BootEntry,
    cpuid: &CpuId,
) -> Result<Vec<Vcpu>, VmmError> {
    (0..count)
        .map(|id| {
            let vcpu = Vcpu::new(&vm.fd, id)?;
            vcpu.configure(cpuid, count, (id == 0).then_some(entry))?;
            Ok(vcpu)
        })
        .collect()
}

/// Opens the console sink last, so an earlier failure leaves no log file behind.
fn open_console(console: &ConsoleOutput) -> Result<ConsoleWriter, VmmError> {
    Ok(match console {
        ConsoleOutput::Stdout => Box::new(io::stdout()),
        ConsoleOutput::File {
            path,
            max_bytes: None,
        } => Box::new(File::create(path).map_err(|e| ConsoleLogError::Create(path.clone(), e))?),
        ConsoleOutput::File {
            path,
            max_bytes: Some(max),
        } => Box::new(RotatingFile::create(path, *max)?),
    })
}

/// The serial ports: COM1 for the console, COM2 for control messages to the guest.
struct SerialPorts {
    console: Arc<Mutex<SerialDevice>>,
    control: Arc<Mutex<SerialDevice>>,
}

fn serial_port(
    vm: &Vm,
    irq: u32,
    out: ConsoleWriter,
    saved: Option<&SerialSnapshot>,
) -> Result<Arc<Mutex<SerialDevice>>, VmmError> {
    let evt = eventfd("serial interrupt")?;
    vm.fd
        .register_irqfd(&evt, irq)
        .map_err(|e| VmmError::Irqfd(irq, e))?;
    let uart = match saved {
        None => SerialDevice::new(evt, out),
        Some(saved) => SerialDevice::from_snapshot(evt, out, saved),
    };
    Ok(Arc::new(Mutex::new(uart)))
}

fn wire_devices(
    vm: &Vm,
    stop: &Arc<VmStop>,
    clock: BootClock,
    console: ConsoleWriter,
    saved: Option<(&SerialSnapshot, &SerialSnapshot)>,
) -> Result<(IoBuses, SerialPorts), VmmError> {
    let ports = SerialPorts {
        console: serial_port(vm, COM1_IRQ, console, saved.map(|s| s.0))?,
        // The guest has nothing to tell us on the control port yet; its output is dropped.
        control: serial_port(vm, COM2_IRQ, Box::new(io::sink()), saved.map(|s| s.1))?,
    };
    let mut io = IoBuses::default();
    io.pio
        .insert("com1", COM1_BASE, COM1_LEN, ports.console.clone())?;
    io.pio
        .insert("com2-control", COM2_BASE, COM1_LEN, ports.control.clone())?;
    let i8042 = Arc::new(Mutex::new(I8042::new(stop.clone())));
    io.pio.insert("i8042", I8042_BASE, I8042_LEN, i8042)?;
    let exit_port = Arc::new(Mutex::new(ExitPort::new(stop.clone())));
    io.pio.insert("exit-status", EXIT_PORT, 1, exit_port)?;
    let timer = Arc::new(Mutex::new(BootTimer::new(clock)));
    io.mmio
        .insert("boot-timer", BOOT_TIMER_ADDR, BOOT_TIMER_LEN, timer)?;
    Ok((io, ports))
}

/// One virtio device to attach.
struct PlannedDevice {
    kind: DeviceKind,
    slot: VirtioSlot,
    device: Box<dyn VirtioDevice>,
}

/// The virtio devices a config asks for, where they go, and the command line announcing them.
struct VirtioPlan {
    devices: Vec<PlannedDevice>,
    cmdline: KernelCmdline,
}

fn plan_virtio(
    config: &VmConfig,
    disks: Vec<Disk>,
    taps: Vec<Tap>,
) -> Result<VirtioPlan, VmmError> {
    let mut wanted: Vec<(DeviceKind, Box<dyn VirtioDevice>)> = Vec::new();
    for (disk, drive) in disks.into_iter().zip(&config.drives) {
        let kind = DeviceKind::Block {
            id: drive.id.clone(),
            read_only: drive.read_only,
        };
        wanted.push((kind, Box::new(Block::new(disk))));
    }
    if config.entropy {
        wanted.push((DeviceKind::Rng, Box::new(Rng::new())));
    }
    for (net, tap) in config.net.iter().zip(taps) {
        let settings = NetSettings {
            mac: net.guest_mac.map(|m| m.0),
            mtu: net.mtu,
        };
        let kind = DeviceKind::Net {
            mac: settings.mac,
            mtu: settings.mtu,
        };
        wanted.push((kind, Box::new(Net::new(Box::new(tap), settings))));
    }
    if let Some(v) = &config.vsock {
        let cid = v.guest_cid;
        let dev = Vsock::new(cid, &v.uds_path).map_err(|source| VmmError::Vsock { cid, source })?;
        wanted.push((DeviceKind::Vsock { cid }, Box::new(dev)));
    }
    let slots = attach::slots(wanted.len()).map_err(|e| VmmError::Virtio("devices", e))?;
    let root = crate::config::drive::root_words(&config.drives);
    let cmdline = config
        .cmdline
        .with_words(&root)
        .and_then(|c| c.with_words(&attach::cmdline_words(&slots)))
        .map_err(VmmError::Cmdline)?;
    let devices = wanted
        .into_iter()
        .zip(slots)
        .map(|((kind, device), slot)| PlannedDevice { kind, slot, device })
        .collect();
    Ok(VirtioPlan { devices, cmdline })
}

fn wire_virtio(
    vm: &Vm,
    io: &mut IoBuses,
    plan: VirtioPlan,
    saved: Option<Vec<&SavedTransport>>,
) -> Result<Vec<QueueNotifier>, VmmError> {
    let mut saved = saved.map(Vec::into_iter);
    plan.devices
        .into_iter()
        .map(|d| {
            let name = d.kind.name();
            let state = saved.as_mut().and_then(Iterator::next);
            attach::attach(
                &vm.fd,
                &vm.memory,
                &mut io.mmio,
                d.slot,
                (name, d.device),
                state,
            )
            .map_err(|e| VmmError::Virtio(name, e))
        })
        .collect()
}

/// The snapshot directory of a restoring config (named in its errors).
fn snapshot_dir(config: &VmConfig) -> &Path {
    config
        .restore
        .as_ref()
        .map_or(Path::new(""), |r| r.dir.as_path())
}

/// Maps the snapshot's memory into `vm`, restores its in-kernel devices and creates its
/// vCPUs in their saved state.
fn resume_guest(vm: &Vm, s: &Snapshot, memory: &File, dir: &Path) -> Result<Vec<Vcpu>, VmmError> {
    let err = |e| VmmError::Restore(dir.to_owned(), e);
    snapshot::memory::map(&vm.memory, memory)
        .map_err(|e| err(RestoreError::Memory(dir.join(snapshot::MEMORY_FILE), e)))?;
    vstate::vm_state::restore(&vm.fd, &s.vm).map_err(|e| err(RestoreError::VmState(e)))?;
    s.vcpus
        .iter()
        .map(|state| {
            let vcpu = Vcpu::new(&vm.fd, state.id)?;
            vcpu.restore(state)?;
            Ok(vcpu)
        })
        .collect()
}

/// After a restore: serves every queue once and queues the guest's new identity on the
/// control port, where it waits until the guest reads it.
fn resume_devices(
    devices: &[(DeviceKind, Arc<Mutex<MmioTransport>>)],
    control: &Mutex<SerialDevice>,
    identity: Option<&IdentityMembers>,
) -> Result<(), RestoreError> {
    for (_, transport) in devices {
        crate::bus::lock(transport).kick_restored();
    }
    let line = snapshot::identity::restored_line(identity).map_err(RestoreError::Identity)?;
    crate::bus::lock(control).queue_all(&line);
    Ok(())
}

/// Listens on the control socket, replacing a stale socket left by a dead herd-vmm.
fn bind_api_socket(path: &Path) -> Result<UnixListener, VmmError> {
    let err = |source| VmmError::OpenFile {
        what: "API socket",
        path: path.to_owned(),
        source,
    };
    if let Ok(meta) = path.symlink_metadata() {
        if !meta.file_type().is_socket() {
            return Err(err(io::Error::from(io::ErrorKind::AlreadyExists)));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

type Events = EventManager<Box<dyn MutEventSubscriber + Send>>;

fn event_loop(
    ports: &SerialPorts,
    stop: &Arc<VmStop>,
    grace: Option<Duration>,
    notifiers: Vec<QueueNotifier>,
    signal_evt: EventFd,
) -> Result<Events, VmmError> {
    let mut events = Events::new().map_err(VmmError::EventLoop)?;
    let watcher = StopWatcher::new(stop.clone(), signal_evt, ports.control.clone(), grace)
        .map_err(|e| VmmError::EventFd("grace timer", e))?;
    events.add_subscriber(Box::new(watcher));
    events.add_subscriber(Box::new(ConsoleInput::new(ports.console.clone())));
    for notifier in notifiers {
        events.add_subscriber(Box::new(notifier));
    }
    Ok(events)
}

/// sysexits-style status for each kind of failure (documented in docs/guest-interface.md).
pub mod exit_code {
    /// Bad command line or config.
    pub const USAGE: i32 = 64;
    /// An input file is not usable as what it was given for.
    pub const DATA: i32 = 65;
    /// An input file does not exist.
    pub const NO_INPUT: i32 = 66;
    /// KVM missing or lacking a capability.
    pub const UNAVAILABLE: i32 = 69;
    /// Internal failure.
    pub const SOFTWARE: i32 = 70;
    /// No permission for /dev/kvm or a file.
    pub const NO_PERM: i32 = 77;
    /// The guest crashed.
    pub const GUEST_FAULT: i32 = 80;
}

impl VmmError {
    /// The process exit status for this failure.
    pub fn exit_code(&self) -> i32 {
        use exit_code::*;
        let io_code = |e: &io::Error| match e.kind() {
            io::ErrorKind::NotFound => NO_INPUT,
            io::ErrorKind::PermissionDenied => NO_PERM,
            _ => DATA,
        };
        match self {
            VmmError::OpenFile { source, .. } => io_code(source),
            VmmError::ConsoleLog(e) => io_code(e.io()),
            VmmError::Drive {
                source: DiskError::Open(_, e),
                ..
            } => io_code(e),
            VmmError::NotAFile { .. }
            | VmmError::Restore(..)
            | VmmError::Identity(_)
            | VmmError::Kernel { .. }
            | VmmError::Initrd { .. }
            | VmmError::Drive { .. } => DATA,
            VmmError::Cmdline(_) | VmmError::Virtio(_, AttachError::TooMany(_)) => USAGE,
            VmmError::Vm(
                VmError::KvmMissing(_) | VmError::MissingCap(_) | VmError::TooManyVcpus { .. },
            ) => UNAVAILABLE,
            VmmError::Vm(VmError::KvmAccess(_)) => NO_PERM,
            VmmError::Tap { source, .. } => match source {
                TapError::Missing => NO_INPUT,
                TapError::Busy(_) => UNAVAILABLE,
                TapError::OpenTun(e) | TapError::SetIff(e) | TapError::Offload(e) => io_code(e),
                _ => DATA,
            },
            VmmError::Vsock { source, .. } => match source {
                MuxerError::Exists(_) => UNAVAILABLE,
                MuxerError::Bind(_, e) => io_code(e),
                MuxerError::Epoll(_) => SOFTWARE,
            },
            _ => SOFTWARE,
        }
    }
}
