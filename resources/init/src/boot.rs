//! The boot sequence and the supervision loop, written against [`Host`] and [`Os`] only:
//! block signals, mount, read the configuration, switch to the image's root filesystem if it
//! has one, name the host, bring up `lo` and the
//! instance's network interface (address, default route, `/etc/resolv.conf`), enter the
//! working directory, signal the boot timer, start the app, open the control port, then carry
//! out the [`Supervisor`]'s decisions on signals and host requests until the app exits (a
//! `restored` request is carried out by [`crate::restore`] on the way). [`run`] returns the
//! VM's exit status; the caller ends the VM with it. Every failure becomes one `herd-init: `
//! line on stderr (the console) and the status `docs/image-format.md` gives it.

use std::error::Error;
use std::fmt;
use std::io::{self, Write};

use herd_proto::{IMAGE_RUNTIME_PATH, INSTANCE_CONFIG_PATH, Launch, Network};

use crate::config::{self, ConfigError, Plan};
use crate::control::{Lines, Request};
use crate::host::{CONTROL_PORT, DEV_LINKS, Event, Host, HostError, MOUNTS, Os, Pid, Signal};
use crate::identity::Current;
use crate::restore;
use crate::status::{self, StartFailure};
use crate::supervise::{Decision, Supervisor};

/// Why init could not run the app to its end.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot block SIGTERM, SIGINT and SIGCHLD")]
    Signals(#[source] io::Error),
    #[error("setup failed")]
    Setup(#[source] HostError),
    #[error("cannot use the configuration")]
    Config(#[source] ConfigError),
    #[error("cannot enter the working directory {dir}")]
    Workdir {
        dir: String,
        #[source]
        source: io::Error,
    },
    #[error("entrypoint {path} does not exist")]
    NotFound {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot execute {path}: its ELF interpreter or #! interpreter is missing")]
    InterpreterMissing {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot execute {path}")]
    CannotExecute {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("lost track of the app")]
    Supervise(#[source] io::Error),
}

impl BootError {
    /// The VM's exit status for this failure.
    pub fn status(&self) -> u8 {
        match self {
            Self::NotFound { .. } => status::NOT_FOUND,
            Self::InterpreterMissing { .. } | Self::CannotExecute { .. } => status::CANNOT_EXECUTE,
            _ => status::SETUP_FAILED,
        }
    }
}

/// An error and its causes on one line: `what: why: deeper why`.
pub fn one_line(err: &dyn Error) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line.replace('\n', " ")
}

/// Writes one `herd-init: ` line to stderr (the console). Unlike `eprintln!`, never panics:
/// a panic in PID 1 would take the kernel down with it.
pub fn say(line: fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "herd-init: {line}");
}

/// One `herd-init: warning: ` line with `err` and its causes.
pub fn warn(err: &dyn Error) {
    say(format_args!("warning: {}", one_line(err)));
}

/// Boots and supervises the app; returns the status the VM must end with.
pub fn run(host: &mut impl Host, os: &mut impl Os) -> u8 {
    let mut sup = Supervisor::new();
    let result =
        start(host, os, &mut sup).and_then(|identity| supervise(host, os, &mut sup, identity));
    match result {
        Ok(status) => status,
        Err(err) => {
            say(format_args!("{}", one_line(&err)));
            sup.failed_to_start(err.status());
            err.status()
        }
    }
}

/// Everything up to and including starting the app; returns the instance's identity.
fn start(
    host: &mut impl Host,
    os: &mut impl Os,
    sup: &mut Supervisor,
) -> Result<Current, BootError> {
    // First, so that a stop request during setup waits for the app instead of being lost.
    os.block_signals().map_err(BootError::Signals)?;
    prepare_machine(host)?;
    let plan = load_plan(os).map_err(BootError::Config)?;
    if let Some(rootfs) = &plan.rootfs {
        host.switch_root(rootfs).map_err(BootError::Setup)?;
    }
    if let Some(name) = &plan.hostname {
        host.set_hostname(name).map_err(BootError::Setup)?;
    }
    host.loopback_up().map_err(BootError::Setup)?;
    if let Some(network) = &plan.network {
        configure_network(host, network)?;
    }
    let dir = &plan.launch.workdir;
    os.chdir(dir).map_err(|source| BootError::Workdir {
        dir: dir.clone(),
        source,
    })?;
    if let Err(err) = host.signal_boot_timer() {
        warn(&err);
    }
    let app = spawn(os, &plan.launch)?;
    for signal in sup.started(app).signals() {
        forward(os, app, signal);
    }
    // After the app started: opening a UART costs VM exits, and nothing needs it earlier.
    if let Err(err) = os.open_control(CONTROL_PORT) {
        say(format_args!(
            "warning: no control port {CONTROL_PORT}, host stop requests will not reach the app: {err}"
        ));
    }
    Ok(Current::booted(
        plan.instance_id,
        plan.hostname,
        plan.network,
    ))
}

/// Mounts, console and `/dev` links. `/dev` first: a missing console is opened from it.
fn prepare_machine(host: &mut impl Host) -> Result<(), BootError> {
    let (dev, rest) = MOUNTS.split_first().expect("MOUNTS is not empty");
    host.mount(dev).map_err(BootError::Setup)?;
    if let Err(err) = host.ensure_console() {
        warn(&err);
    }
    for mount in rest {
        host.mount(mount).map_err(BootError::Setup)?;
    }
    for (link, target) in DEV_LINKS {
        if let Err(err) = host.symlink(link, target) {
            warn(&err);
        }
    }
    Ok(())
}

/// The instance's interface, route and name servers; any failure stops the boot (an app
/// without the network it was given would fail later and less clearly).
fn configure_network(host: &mut impl Host, network: &Network) -> Result<(), BootError> {
    let iface = host.configure_network(network).map_err(BootError::Setup)?;
    say(format_args!("{iface} is {}", describe(network)));
    if let Some(text) = network.resolv_conf() {
        host.write_resolv_conf(&text).map_err(BootError::Setup)?;
    }
    Ok(())
}

/// `a.b.c.d/prefix[ via gateway]`, as the console lines about the network say it.
pub(crate) fn describe(network: &Network) -> String {
    let via = (network.gateway)
        .map(|gw| format!(" via {gw}"))
        .unwrap_or_default();
    format!("{}/{}{via}", network.address, network.prefix)
}

fn load_plan(os: &mut impl Os) -> Result<Plan, ConfigError> {
    let mut read = |path: &'static str| {
        os.read_file(path)
            .map_err(|source| ConfigError::Read { path, source })
    };
    let image = read(IMAGE_RUNTIME_PATH)?;
    let instance = read(INSTANCE_CONFIG_PATH)?;
    config::plan(image.as_deref(), instance.as_deref())
}

fn spawn(os: &mut impl Os, launch: &Launch) -> Result<Pid, BootError> {
    os.spawn(launch).map_err(|source| {
        let path = launch.argv[0].clone();
        match StartFailure::classify(&source, os.exists(&path)) {
            StartFailure::NotFound => BootError::NotFound { path, source },
            StartFailure::InterpreterMissing => BootError::InterpreterMissing { path, source },
            StartFailure::CannotExecute => BootError::CannotExecute { path, source },
        }
    })
}

fn forward(os: &mut impl Os, app: Pid, signal: Signal) {
    if let Err(err) = os.kill(app, signal) {
        say(format_args!(
            "warning: cannot forward {signal:?} to the app: {err}"
        ));
    }
}

/// Carries out the supervisor's decisions until the app has exited.
fn supervise(
    host: &mut impl Host,
    os: &mut impl Os,
    sup: &mut Supervisor,
    mut identity: Current,
) -> Result<u8, BootError> {
    let mut lines = Lines::new();
    let mut buf = [0u8; 256];
    loop {
        let decision = match os.wait_event(&mut buf).map_err(BootError::Supervise)? {
            Event::Signal(signal) => sup.on_signal(signal),
            Event::Control(n) => {
                if !control(host, os, &mut lines, &buf[..n], &mut identity) {
                    continue;
                }
                sup.on_stop_request()
            }
            Event::ControlClosed => continue,
        };
        if let Some(status) = carry_out(os, sup, decision)? {
            return Ok(status);
        }
    }
}

/// Takes `bytes` from the control port and carries out every request they complete except
/// `stop`; returns whether a stop was asked for.
fn control(
    host: &mut impl Host,
    os: &mut impl Os,
    lines: &mut Lines,
    bytes: &[u8],
    identity: &mut Current,
) -> bool {
    let mut stop = false;
    lines.push(bytes, |request| match request {
        Request::Stop => stop = true,
        Request::Restored(new) => restore::apply(host, os, identity, *new),
        Request::BadRestore(why) => {
            say(format_args!("warning: ignoring a restored request: {why}"))
        }
        Request::Unknown(line) => say(format_args!("warning: ignoring control request {line:?}")),
    });
    stop
}

/// Does what the supervisor decided; returns the VM's status once the app has been reaped.
fn carry_out(
    os: &mut impl Os,
    sup: &mut Supervisor,
    decision: Decision,
) -> Result<Option<u8>, BootError> {
    match decision {
        Decision::Forward { app, signal } => forward(os, app, signal),
        Decision::Reap => {
            while let Some((pid, raw)) = os.reap().map_err(BootError::Supervise)? {
                if let Some(status) = sup.on_reaped(pid, raw) {
                    return Ok(Some(status));
                }
            }
        }
        Decision::Hold | Decision::Ignore => {}
    }
    Ok(None)
}

#[cfg(test)]
#[path = "boot_tests.rs"]
mod tests;
