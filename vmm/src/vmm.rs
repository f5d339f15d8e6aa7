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

use crate::arch::x86_64::boot::{self, BootError};
use crate::arch::x86_64::layout::{BOOT_TIMER_ADDR, COM1_IRQ, COM2_IRQ};
use crate::arch::x86_64::mptable::{self, MptableError};
use crate::arch::x86_64::regs::BootEntry;
use crate::boot_files;
use crate::bus::{BusError, IoBuses};
use crate::config::{ConfigError, ConsoleOutput, KernelCmdline, VmConfig};
use crate::console_log::{ConsoleLogError, RotatingFile};
use crate::devices::legacy::boot_timer::BOOT_TIMER_LEN;
use crate::devices::legacy::exit_port::EXIT_PORT;
use crate::devices::legacy::i8042::{I8042_BASE, I8042_LEN};
use crate::devices::legacy::serial::{COM1_BASE, COM1_LEN, COM2_BASE, ConsoleWriter};
use crate::devices::legacy::{BootClock, BootTimer, ExitPort, I8042, SerialDevice};
use crate::devices::virtio::VirtioDevice;
use crate::devices::virtio::block::{Block, Disk, DiskError};
use crate::devices::virtio::mmio::attach::{self, AttachError, VirtioSlot};
use crate::devices::virtio::mmio::notify::QueueNotifier;
use crate::devices::virtio::net::{Net, NetSettings};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::{MuxerError, Vsock};
use crate::event_loop::{ConsoleInput, StopWatcher};
pub use crate::inputs::HostInputs;
use crate::seccomp::{Filters, SeccompError, ThreadKind};
use crate::stop::{StopReason, VmStop};
use crate::sys::memory::{peak_rss_kib, resident_bytes};
use crate::sys::tap::{Tap, TapError};
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vm::{Vm, VmError};
use kvm_bindings::CpuId;

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
}

/// A built VM, ready to run.
pub struct Vmm {
    vm: Vm,
    vcpus: Vec<Vcpu>,
    io: Arc<IoBuses>,
    serial: Arc<Mutex<SerialDevice>>,
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
        let mut phases = Phases::new(clock.wall);
        phases.mark("open");
        let HostInputs {
            kvm,
            cpuid,
            mut kernel,
            initrds,
            disks,
            taps,
            stop_signals,
        } = inputs;
        let (mem_bytes, vcpu_count) = (config.memory.bytes(), config.vcpus.get());
        let virtio = plan_virtio(config, disks, taps)?;
        let vm = Vm::new(kvm, mem_bytes, vcpu_count)?;
        phases.mark("vm");
        let entry = load_guest(&vm, config, &virtio.cmdline, &mut kernel, initrds)?;
        phases.mark("load");
        let vcpus = create_vcpus(&vm, vcpu_count, entry, &cpuid)?;
        phases.mark("vcpus");
        let stop = Arc::new(VmStop::new().map_err(|e| VmmError::EventFd("stop", e))?);
        let console = open_console(&config.console)?;
        let (mut io, ports) = wire_devices(&vm, &stop, clock, console)?;
        let notifiers = wire_virtio(&vm, &mut io, virtio)?;
        let events = event_loop(&ports, &stop, config.stop_grace, notifiers, stop_signals)?;
        let serial = ports.console;
        phases.mark("devices");
        tracing::debug!(%phases, "VM built");
        Ok(Self {
            vm,
            vcpus,
            io: Arc::new(io),
            serial,
            stop,
            events,
            socket_files: config.vsock.iter().map(|v| v.uds_path.clone()).collect(),
            seccomp: Filters::build(config.seccomp)?,
        })
    }

    /// Runs the VM until it stops; returns why.
    pub fn run(mut self) -> Result<StopReason, VmmError> {
        let mut threads = Vec::with_capacity(self.vcpus.len());
        for vcpu in self.vcpus.drain(..) {
            threads.push(vcpu.start(self.io.clone(), self.stop.clone(), self.seccomp.clone())?);
        }
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
        drop(threads);
        Ok(reason)
    }
}

impl Vmm {
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
) -> Result<Arc<Mutex<SerialDevice>>, VmmError> {
    let evt = eventfd("serial interrupt")?;
    vm.fd
        .register_irqfd(&evt, irq)
        .map_err(|e| VmmError::Irqfd(irq, e))?;
    Ok(Arc::new(Mutex::new(SerialDevice::new(evt, out))))
}

fn wire_devices(
    vm: &Vm,
    stop: &Arc<VmStop>,
    clock: BootClock,
    console: ConsoleWriter,
) -> Result<(IoBuses, SerialPorts), VmmError> {
    let ports = SerialPorts {
        console: serial_port(vm, COM1_IRQ, console)?,
        // The guest has nothing to tell us on the control port yet; its output is dropped.
        control: serial_port(vm, COM2_IRQ, Box::new(io::sink()))?,
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

/// The virtio devices a config asks for, where they go, and the command line announcing them.
struct VirtioPlan {
    devices: Vec<(&'static str, VirtioSlot, Box<dyn VirtioDevice>)>,
    cmdline: KernelCmdline,
}

fn plan_virtio(
    config: &VmConfig,
    disks: Vec<Disk>,
    taps: Vec<Tap>,
) -> Result<VirtioPlan, VmmError> {
    let mut wanted: Vec<(&'static str, Box<dyn VirtioDevice>)> = Vec::new();
    for disk in disks {
        wanted.push(("virtio-blk", Box::new(Block::new(disk))));
    }
    if config.entropy {
        wanted.push(("virtio-rng", Box::new(Rng::new())));
    }
    for (net, tap) in config.net.iter().zip(taps) {
        let settings = NetSettings {
            mac: net.guest_mac.map(|m| m.0),
            mtu: net.mtu,
        };
        wanted.push(("virtio-net", Box::new(Net::new(Box::new(tap), settings))));
    }
    if let Some(v) = &config.vsock {
        let cid = v.guest_cid;
        let dev = Vsock::new(cid, &v.uds_path).map_err(|source| VmmError::Vsock { cid, source })?;
        wanted.push(("virtio-vsock", Box::new(dev)));
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
        .map(|((name, dev), slot)| (name, slot, dev))
        .collect();
    Ok(VirtioPlan { devices, cmdline })
}

fn wire_virtio(
    vm: &Vm,
    io: &mut IoBuses,
    plan: VirtioPlan,
) -> Result<Vec<QueueNotifier>, VmmError> {
    plan.devices
        .into_iter()
        .map(|(name, slot, dev)| {
            attach::attach(&vm.fd, &vm.memory, &mut io.mmio, slot, name, dev)
                .map_err(|e| VmmError::Virtio(name, e))
        })
        .collect()
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
