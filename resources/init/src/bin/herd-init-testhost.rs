//! `herd-init-testhost`: herd-init for the namespace tests (see the crate docs, "The test
//! host"). Identical to `herd-init` except for the four effects that would reach the build
//! host's hardware or kernel: the boot timer is a log line; ending the VM writes the status
//! to the file named by `HERD_INIT_TEST_EXIT_FILE` and exits with it; the control port is the
//! FIFO [`TEST_CONTROL_PORT`] if the test made one (never the host's `/dev/ttyS1`); and a
//! restore's reseed is a log line (the build host's random pool is not credited with bytes a
//! test wrote). It also logs how long init took from
//! `main` to the boot timer and to the app running (`posix_spawn` returns once the app has
//! exec'd), which is init's own share of boot time.

use std::io;
use std::path::PathBuf;
use std::time::Instant;

use herd_init::boot::say;
use herd_init::host::{Event, Host, HostError, Mount, Os, Pid, Signal};
use herd_init::identity::ENTROPY_BYTES;
use herd_init::sys::{RealHost, RealOs};
use herd_proto::{Launch, MacAddr, Network, Rootfs};

const EXIT_FILE_VAR: &str = "HERD_INIT_TEST_EXIT_FILE";
/// Stands in for the control port inside the test root, if present.
const TEST_CONTROL_PORT: &str = "/herd-test/control";

struct TestHost {
    real: RealHost,
    exit_file: PathBuf,
    started: Instant,
}

impl Host for TestHost {
    fn mount(&mut self, mount: &Mount) -> Result<(), HostError> {
        self.real.mount(mount)
    }
    fn symlink(&mut self, link: &'static str, target: &'static str) -> Result<(), HostError> {
        self.real.symlink(link, target)
    }
    fn ensure_console(&mut self) -> Result<(), HostError> {
        self.real.ensure_console()
    }
    fn set_hostname(&mut self, name: &str) -> Result<(), HostError> {
        self.real.set_hostname(name)
    }
    fn loopback_up(&mut self) -> Result<(), HostError> {
        self.real.loopback_up()
    }
    fn configure_network(&mut self, network: &Network) -> Result<String, HostError> {
        self.real.configure_network(network)
    }
    fn replace_network(&mut self, network: &Network) -> Result<String, HostError> {
        self.real.replace_network(network)
    }
    fn set_mac(&mut self, mac: MacAddr) -> Result<String, HostError> {
        self.real.set_mac(mac)
    }
    fn reseed_rng(&mut self, entropy: &[u8; ENTROPY_BYTES]) -> Result<(), HostError> {
        let n = entropy.len();
        say(format_args!(
            "test host: random number generator reseed with {n} bytes skipped"
        ));
        Ok(())
    }
    fn write_resolv_conf(&mut self, text: &str) -> Result<(), HostError> {
        self.real.write_resolv_conf(text)
    }
    fn switch_root(&mut self, rootfs: &Rootfs) -> Result<(), HostError> {
        self.real.switch_root(rootfs)
    }
    fn signal_boot_timer(&mut self) -> Result<(), HostError> {
        let us = self.started.elapsed().as_micros();
        say(format_args!(
            "test host: boot timer signalled {us} us after main"
        ));
        Ok(())
    }
    fn end_vm(&mut self, status: u8) -> ! {
        if let Err(e) = std::fs::write(&self.exit_file, format!("{status}\n")) {
            let file = self.exit_file.display();
            say(format_args!("test host: cannot write {file}: {e}"));
        }
        std::process::exit(i32::from(status))
    }
}

/// [`RealOs`], timing the app's start and with the test's control port.
struct TestOs {
    real: RealOs,
    started: Instant,
}

impl Os for TestOs {
    fn block_signals(&mut self) -> io::Result<()> {
        self.real.block_signals()
    }
    fn read_file(&mut self, path: &str) -> io::Result<Option<String>> {
        self.real.read_file(path)
    }
    fn replace_file(&mut self, path: &str, text: &str) -> io::Result<()> {
        self.real.replace_file(path, text)
    }
    fn exists(&mut self, path: &str) -> bool {
        self.real.exists(path)
    }
    fn chdir(&mut self, dir: &str) -> io::Result<()> {
        self.real.chdir(dir)
    }
    fn spawn(&mut self, launch: &Launch) -> io::Result<Pid> {
        let pid = self.real.spawn(launch)?;
        let us = self.started.elapsed().as_micros();
        say(format_args!("test host: app running {us} us after main"));
        Ok(pid)
    }
    fn open_control(&mut self, _path: &str) -> io::Result<()> {
        match std::path::Path::new(TEST_CONTROL_PORT).exists() {
            true => self.real.open_control(TEST_CONTROL_PORT),
            false => Ok(()),
        }
    }
    fn wait_event(&mut self, buf: &mut [u8]) -> io::Result<Event> {
        self.real.wait_event(buf)
    }
    fn reap(&mut self) -> io::Result<Option<(Pid, i32)>> {
        self.real.reap()
    }
    fn kill(&mut self, pid: Pid, signal: Signal) -> io::Result<()> {
        self.real.kill(pid, signal)
    }
}

fn main() {
    let started = Instant::now();
    let Some(exit_file) = std::env::var_os(EXIT_FILE_VAR) else {
        eprintln!("herd-init-testhost: {EXIT_FILE_VAR} is not set; this binary is for tests only");
        std::process::exit(2);
    };
    let mut host = TestHost {
        real: RealHost::new(),
        exit_file: exit_file.into(),
        started,
    };
    let mut os = TestOs {
        real: RealOs::new(),
        started,
    };
    let status = herd_init::boot::run(&mut host, &mut os);
    host.end_vm(status)
}
