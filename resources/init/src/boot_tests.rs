//! Unit tests of the boot sequence against recording fakes of [`Host`] and [`Os`].

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use super::*;
use crate::host::{Event, Mount};
use herd_proto::{MacAddr, Rootfs};

type Log = Rc<RefCell<Vec<String>>>;

const IMAGE: &str = r#"{"entrypoint":["/app/hello"],"args":["a"],"env":{"A":"1"},"workdir":"/w"}"#;
const INSTANCE: &str = r#"{"instance_id":"i","hostname":"web-1","env":{"B":"2"},"args":null}"#;

#[derive(Default)]
struct FakeHost {
    log: Log,
    fail_mount: Option<&'static str>,
    fail_boot_timer: bool,
    fail_network: bool,
    fail_switch_root: bool,
    fail_reseed: bool,
    fail_mac: bool,
}

fn io_err(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

impl Host for FakeHost {
    fn mount(&mut self, m: &Mount) -> Result<(), HostError> {
        self.log.borrow_mut().push(format!("mount {}", m.target));
        match self.fail_mount {
            Some(t) if t == m.target => Err(HostError::Mount {
                fstype: m.fstype,
                target: m.target,
                source: io_err(libc::EPERM),
            }),
            _ => Ok(()),
        }
    }
    fn symlink(&mut self, link: &'static str, _: &'static str) -> Result<(), HostError> {
        self.log.borrow_mut().push(format!("link {link}"));
        Ok(())
    }
    fn ensure_console(&mut self) -> Result<(), HostError> {
        self.log.borrow_mut().push("console".into());
        Ok(())
    }
    fn set_hostname(&mut self, name: &str) -> Result<(), HostError> {
        self.log.borrow_mut().push(format!("hostname {name}"));
        Ok(())
    }
    fn loopback_up(&mut self) -> Result<(), HostError> {
        self.log.borrow_mut().push("lo up".into());
        Ok(())
    }
    fn configure_network(&mut self, net: &Network) -> Result<String, HostError> {
        let gw = net.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        let line = format!("net {}/{}{gw}", net.address, net.prefix);
        self.log.borrow_mut().push(line);
        if self.fail_network {
            return Err(HostError::NoInterface(io_err(libc::ENODEV)));
        }
        Ok("eth0".into())
    }
    fn replace_network(&mut self, net: &Network) -> Result<String, HostError> {
        let gw = net.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        let line = format!("replace net {}/{}{gw}", net.address, net.prefix);
        self.log.borrow_mut().push(line);
        Ok("eth0".into())
    }
    fn set_mac(&mut self, mac: MacAddr) -> Result<String, HostError> {
        self.log.borrow_mut().push(format!("mac {mac}"));
        if self.fail_mac {
            return Err(HostError::Network {
                iface: "eth0".into(),
                step: "set its MAC address",
                source: io_err(libc::EADDRNOTAVAIL),
            });
        }
        Ok("eth0".into())
    }
    fn reseed_rng(&mut self, entropy: &[u8; 32]) -> Result<(), HostError> {
        let line = format!("reseed {:02x}..{:02x}", entropy[0], entropy[31]);
        self.log.borrow_mut().push(line);
        if self.fail_reseed {
            return Err(HostError::Rng {
                step: "credit it (RNDADDENTROPY)",
                source: io_err(libc::EPERM),
            });
        }
        Ok(())
    }
    fn write_resolv_conf(&mut self, text: &str) -> Result<(), HostError> {
        let servers: Vec<_> = text.lines().filter(|l| !l.starts_with('#')).collect();
        self.log
            .borrow_mut()
            .push(format!("resolv {}", servers.join(",")));
        Ok(())
    }
    fn switch_root(&mut self, rootfs: &Rootfs) -> Result<(), HostError> {
        let line = format!("switch root {} {}", rootfs.fstype.name(), rootfs.device);
        self.log.borrow_mut().push(line);
        if self.fail_switch_root {
            return Err(HostError::SwitchRoot {
                device: rootfs.device.clone(),
                fstype: rootfs.fstype.name(),
                step: "mount it".into(),
                source: io_err(libc::ENXIO),
            });
        }
        Ok(())
    }
    fn signal_boot_timer(&mut self) -> Result<(), HostError> {
        self.log.borrow_mut().push("boot timer".into());
        if self.fail_boot_timer {
            return Err(HostError::BootTimer(io_err(libc::ENOENT)));
        }
        Ok(())
    }
    fn end_vm(&mut self, status: u8) -> ! {
        panic!("run must not end the VM itself (status {status})")
    }
}

struct FakeOs {
    log: Log,
    files: HashMap<&'static str, &'static str>,
    spawn_errno: Option<i32>,
    entry_exists: bool,
    events: VecDeque<Event>,
    control: Vec<u8>,
    reaps: VecDeque<Option<(Pid, i32)>>,
}

impl FakeOs {
    fn new(log: &Log) -> Self {
        Self {
            log: log.clone(),
            files: [
                (IMAGE_RUNTIME_PATH, IMAGE),
                (INSTANCE_CONFIG_PATH, INSTANCE),
            ]
            .into(),
            spawn_errno: None,
            entry_exists: true,
            events: VecDeque::new(),
            control: Vec::new(),
            reaps: VecDeque::new(),
        }
    }
}

impl Os for FakeOs {
    fn block_signals(&mut self) -> io::Result<()> {
        self.log.borrow_mut().push("block".into());
        Ok(())
    }
    fn read_file(&mut self, path: &str) -> io::Result<Option<String>> {
        Ok(self.files.get(path).map(|s| s.to_string()))
    }
    fn replace_file(&mut self, path: &str, text: &str) -> io::Result<()> {
        self.log.borrow_mut().push(format!("replace {path} {text}"));
        Ok(())
    }
    fn exists(&mut self, _: &str) -> bool {
        self.entry_exists
    }
    fn chdir(&mut self, dir: &str) -> io::Result<()> {
        self.log.borrow_mut().push(format!("chdir {dir}"));
        Ok(())
    }
    fn spawn(&mut self, launch: &Launch) -> io::Result<Pid> {
        let env: Vec<_> = launch.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let line = format!("spawn {} env {}", launch.argv.join(" "), env.join(" "));
        self.log.borrow_mut().push(line);
        self.spawn_errno.map_or(Ok(42), |e| Err(io_err(e)))
    }
    fn open_control(&mut self, path: &str) -> io::Result<()> {
        self.log.borrow_mut().push(format!("open {path}"));
        Ok(())
    }
    fn wait_event(&mut self, buf: &mut [u8]) -> io::Result<Event> {
        let event = self
            .events
            .pop_front()
            .expect("the test scripted enough events");
        if let Event::Control(n) = event {
            buf[..n].copy_from_slice(&self.control[..n]);
            self.control.drain(..n);
        }
        Ok(event)
    }
    fn reap(&mut self) -> io::Result<Option<(Pid, i32)>> {
        let next = self
            .reaps
            .pop_front()
            .expect("the test scripted enough reaps");
        if let Some((pid, _)) = next {
            self.log.borrow_mut().push(format!("reaped {pid}"));
        }
        Ok(next)
    }
    fn kill(&mut self, pid: Pid, signal: Signal) -> io::Result<()> {
        self.log.borrow_mut().push(format!("kill {pid} {signal:?}"));
        Ok(())
    }
}

fn fakes() -> (Log, FakeHost, FakeOs) {
    let log = Log::default();
    let host = FakeHost {
        log: log.clone(),
        ..FakeHost::default()
    };
    let os = FakeOs::new(&log);
    (log, host, os)
}

fn sig(signal: Signal) -> Event {
    Event::Signal(signal)
}

fn logged(log: &Log) -> Vec<String> {
    log.borrow().clone()
}

#[test]
fn boots_in_order_forwards_term_reaps_orphans_and_returns_the_apps_status() {
    let (log, mut host, mut os) = fakes();
    os.events = [sig(Signal::Child), sig(Signal::Term), sig(Signal::Child)].into();
    os.reaps = [Some((77, 0)), None, Some((78, 0)), Some((42, 3 << 8))].into();
    assert_eq!(run(&mut host, &mut os), 3);
    let expected = [
        "block",
        "mount /dev",
        "console",
        "mount /proc",
        "mount /sys",
        "mount /tmp",
        "mount /run",
        "mount /dev/shm",
        "link /dev/fd",
        "link /dev/stdin",
        "link /dev/stdout",
        "link /dev/stderr",
        "hostname web-1",
        "lo up",
        "chdir /w",
        "boot timer",
        "spawn /app/hello a env A=1 B=2",
        "open /dev/ttyS1",
        "reaped 77",
        "kill 42 Term",
        "reaped 78",
        "reaped 42",
    ];
    assert_eq!(logged(&log), expected);
}

#[test]
fn a_stop_request_on_the_control_port_is_forwarded_as_sigterm() {
    let (log, mut host, mut os) = fakes();
    os.control = b"hello\nst\x6fp\n".to_vec();
    os.events = [
        Event::Control(8),
        Event::Control(3),
        Event::ControlClosed,
        sig(Signal::Child),
    ]
    .into();
    os.reaps = [Some((42, libc::SIGTERM))].into();
    assert_eq!(run(&mut host, &mut os), 143);
    let log = logged(&log);
    let kills: Vec<_> = log.iter().filter(|l| l.starts_with("kill")).collect();
    assert_eq!(
        kills,
        ["kill 42 Term"],
        "one stop line, one SIGTERM: {log:?}"
    );
}

#[test]
fn app_killed_by_a_signal_gives_128_plus_n() {
    let (_, mut host, mut os) = fakes();
    os.events = [sig(Signal::Int), sig(Signal::Child)].into();
    os.reaps = [Some((42, libc::SIGINT))].into();
    assert_eq!(run(&mut host, &mut os), 130);
}

#[test]
fn without_instance_config_the_hostname_is_left_alone() {
    let (log, mut host, mut os) = fakes();
    os.files.remove(INSTANCE_CONFIG_PATH);
    os.events = [sig(Signal::Child)].into();
    os.reaps = [Some((42, 0))].into();
    assert_eq!(run(&mut host, &mut os), 0);
    let log = logged(&log);
    assert!(!log.iter().any(|l| l.starts_with("hostname")));
    assert!(log.contains(&"spawn /app/hello a env A=1".to_string()));
}

#[test]
fn a_failed_mount_ends_with_125_before_anything_runs() {
    let (log, mut host, mut os) = fakes();
    host.fail_mount = Some("/proc");
    assert_eq!(run(&mut host, &mut os), 125);
    let log = logged(&log);
    assert_eq!(log.last().unwrap(), "mount /proc");
}

#[test]
fn bad_or_missing_configuration_ends_with_125_before_the_boot_timer() {
    let bad: [(&str, Option<&'static str>); 3] = [
        (
            INSTANCE_CONFIG_PATH,
            Some(r#"{"instance_id":"i","hostname":"h","x":1}"#),
        ),
        (IMAGE_RUNTIME_PATH, Some(r#"{"entrypoint":["relative"]}"#)),
        (IMAGE_RUNTIME_PATH, None),
    ];
    for (path, text) in bad {
        let (log, mut host, mut os) = fakes();
        match text {
            Some(text) => os.files.insert(path, text),
            None => os.files.remove(path),
        };
        assert_eq!(run(&mut host, &mut os), 125, "{path}: {text:?}");
        assert!(
            !logged(&log)
                .iter()
                .any(|l| l.starts_with("spawn") || l == "boot timer")
        );
    }
}

#[test]
fn apps_that_cannot_start_give_127_or_126() {
    for (errno, exists, status) in [
        (libc::ENOENT, false, 127),
        (libc::ENOENT, true, 126),
        (libc::EACCES, true, 126),
        (libc::ENOEXEC, true, 126),
    ] {
        let (_, mut host, mut os) = fakes();
        os.spawn_errno = Some(errno);
        os.entry_exists = exists;
        assert_eq!(
            run(&mut host, &mut os),
            status,
            "errno {errno}, exists {exists}"
        );
    }
}

const NET_INSTANCE: &str = r#"{"instance_id":"i","hostname":"web-1","network":{"address":"10.0.0.2/24","gateway":"10.0.0.1","dns":["10.0.0.1"]}}"#;

#[test]
fn the_instances_network_is_configured_after_lo_and_before_the_app() {
    let (log, mut host, mut os) = fakes();
    os.files.insert(INSTANCE_CONFIG_PATH, NET_INSTANCE);
    os.events = [sig(Signal::Child)].into();
    os.reaps = [Some((42, 0))].into();
    assert_eq!(run(&mut host, &mut os), 0);
    let log = logged(&log);
    let at = |line: &str| log.iter().position(|l| l == line).expect(line);
    assert!(at("lo up") < at("net 10.0.0.2/24 via 10.0.0.1"));
    assert!(at("net 10.0.0.2/24 via 10.0.0.1") < at("resolv nameserver 10.0.0.1"));
    assert!(at("resolv nameserver 10.0.0.1") < at("boot timer"));

    // Without dns, no resolv.conf; without a network, no interface is touched.
    let (log, mut host, mut os) = fakes();
    os.files.insert(
        INSTANCE_CONFIG_PATH,
        r#"{"instance_id":"i","hostname":"h","network":{"address":"10.0.0.2/32"}}"#,
    );
    os.events = [sig(Signal::Child)].into();
    os.reaps = [Some((42, 0))].into();
    run(&mut host, &mut os);
    assert!(logged(&log).contains(&"net 10.0.0.2/32".to_string()));
    assert!(!logged(&log).iter().any(|l| l.starts_with("resolv")));
    let (log, mut host, mut os) = fakes();
    os.events = [sig(Signal::Child)].into();
    os.reaps = [Some((42, 0))].into();
    run(&mut host, &mut os);
    assert!(!logged(&log).iter().any(|l| l.starts_with("net ")));
}

#[test]
fn a_network_that_cannot_be_configured_ends_with_125_before_the_app() {
    let (log, mut host, mut os) = fakes();
    host.fail_network = true;
    os.files.insert(INSTANCE_CONFIG_PATH, NET_INSTANCE);
    assert_eq!(run(&mut host, &mut os), 125);
    assert!(!logged(&log).iter().any(|l| l.starts_with("spawn")));
    let err = BootError::Setup(HostError::NoInterface(io_err(libc::ENODEV)));
    assert!(one_line(&err).contains("no network interface besides lo"));
}

#[test]
fn a_boot_timer_failure_is_only_a_warning() {
    let (log, mut host, mut os) = fakes();
    host.fail_boot_timer = true;
    os.events = [sig(Signal::Child)].into();
    os.reaps = [Some((42, 0))].into();
    assert_eq!(run(&mut host, &mut os), 0);
    assert!(logged(&log).iter().any(|l| l.starts_with("spawn")));
}

#[test]
fn errors_print_on_one_line_with_their_causes() {
    let err = BootError::Setup(HostError::Mount {
        fstype: "proc",
        target: "/proc",
        source: io_err(libc::EPERM),
    });
    let line = one_line(&err);
    assert!(
        line.starts_with("setup failed: cannot mount proc on /proc: "),
        "{line}"
    );
    assert!(!line.contains('\n'));
}

const ROOTFS_IMAGE: &str =
    r#"{"entrypoint":["/app/hello"],"rootfs":{"device":"/dev/vda","fstype":"ext4"}}"#;

#[test]
fn a_rootfs_image_switches_root_after_the_mounts_and_before_the_hostname() {
    let (log, mut host, mut os) = fakes();
    os.files.insert(IMAGE_RUNTIME_PATH, ROOTFS_IMAGE);
    os.files.insert(INSTANCE_CONFIG_PATH, NET_INSTANCE);
    os.events = [sig(Signal::Child)].into();
    os.reaps = [Some((42, 0))].into();
    assert_eq!(run(&mut host, &mut os), 0);
    let log = logged(&log);
    let at = |line: &str| log.iter().position(|l| l == line).expect(line);
    let switch = at("switch root ext4 /dev/vda");
    assert!(
        log.iter()
            .take(switch)
            .filter(|l| l.starts_with("mount "))
            .count()
            == MOUNTS.len()
    );
    assert!(switch < at("lo up"));
    assert!(switch < at("resolv nameserver 10.0.0.1"));
    // Images without a rootfs never switch.
    let (log, mut host, mut os) = fakes();
    os.events = [sig(Signal::Child)].into();
    os.reaps = [Some((42, 0))].into();
    run(&mut host, &mut os);
    assert!(!logged(&log).iter().any(|l| l.starts_with("switch root")));
}

#[test]
fn a_rootfs_that_cannot_be_mounted_ends_with_125_before_the_app() {
    let (log, mut host, mut os) = fakes();
    host.fail_switch_root = true;
    os.files.insert(IMAGE_RUNTIME_PATH, ROOTFS_IMAGE);
    assert_eq!(run(&mut host, &mut os), 125);
    assert!(!logged(&log).iter().any(|l| l.starts_with("spawn")));
}

const GEN: &str = "00112233445566778899aabbccddeeff";
const ENTROPY: &str = "a0000000000000000000000000000000000000000000000000000000000000b1";

/// Scripts the control port to deliver `lines`, each in pieces of at most 256 bytes (the
/// supervisor's buffer), then the app's exit.
fn deliver(os: &mut FakeOs, lines: &str) {
    os.control = lines.as_bytes().to_vec();
    let pieces = lines.len().div_ceil(256);
    let mut left = lines.len();
    for _ in 0..pieces {
        os.events.push_back(Event::Control(left.min(256)));
        left -= left.min(256);
    }
    os.events.push_back(sig(Signal::Child));
    os.reaps = [Some((42, 0))].into();
}

/// The log from the first line starting with `from` on.
fn log_from(log: &Log, from: &str) -> Vec<String> {
    let log = logged(log);
    let at = log.iter().position(|l| l.starts_with(from));
    log[at.unwrap_or_else(|| panic!("no {from:?} in {log:?}"))..].to_vec()
}

#[test]
fn a_restore_reseeds_renames_changes_the_mac_moves_the_network_and_rewrites_the_identity_file() {
    let (log, mut host, mut os) = fakes();
    os.files.insert(INSTANCE_CONFIG_PATH, NET_INSTANCE);
    let line = format!(
        r#"restored {{"generation_id":"{GEN}","entropy":"{ENTROPY}","instance_id":"web-2","hostname":"clone-2","mac":"02:AA:00:00:00:02","network":{{"address":"10.0.1.7/24","gateway":"10.0.1.1","dns":["10.0.1.1"]}}}}"#
    );
    deliver(&mut os, &format!("{line}\n"));
    assert_eq!(run(&mut host, &mut os), 0);
    let record = format!(
        r#"{{"instance_id":"web-2","hostname":"clone-2","generation_id":"{GEN}","network":{{"address":"10.0.1.7/24","gateway":"10.0.1.1","dns":["10.0.1.1"]}},"mac":"02:aa:00:00:00:02"}}"#
    );
    let want = [
        "reseed a0..b1".to_string(),
        "hostname clone-2".into(),
        "mac 02:aa:00:00:00:02".into(),
        "replace net 10.0.1.7/24 via 10.0.1.1".into(),
        "resolv nameserver 10.0.1.1".into(),
        format!("replace /run/herd/identity.json {record}\n"),
        "reaped 42".into(),
    ];
    assert_eq!(log_from(&log, "reseed"), want, "and no SIGTERM: not a stop");
}

#[test]
fn a_mac_that_cannot_be_set_is_a_warning_and_the_network_still_moves() {
    let (log, mut host, mut os) = fakes();
    host.fail_mac = true;
    let line = format!(
        r#"restored {{"generation_id":"{GEN}","entropy":"{ENTROPY}","mac":"02:00:00:00:00:07","network":{{"address":"10.0.1.7/24"}}}}"#
    );
    deliver(&mut os, &format!("{line}\n"));
    assert_eq!(run(&mut host, &mut os), 0);
    let log = log_from(&log, "mac");
    assert_eq!(
        log[..2],
        ["mac 02:00:00:00:00:07", "replace net 10.0.1.7/24"]
    );
    assert!(
        log[2].ends_with("\"mac\":\"02:00:00:00:00:07\"}\n"),
        "the record names the mac asked for: {log:?}"
    );
    let err = restore::RestoreError::Mac(HostError::Network {
        iface: "eth0".into(),
        step: "set its MAC address",
        source: io_err(libc::EADDRNOTAVAIL),
    });
    assert!(
        one_line(&err).starts_with(
            "restore: the MAC address was not changed: cannot configure network interface \
             eth0: cannot set its MAC address: "
        ),
        "{}",
        one_line(&err)
    );
}

#[test]
fn a_restore_with_a_multicast_mac_changes_nothing() {
    let (log, mut host, mut os) = fakes();
    let line = format!(
        r#"restored {{"generation_id":"{GEN}","entropy":"{ENTROPY}","hostname":"clone-2","mac":"03:00:00:00:00:07"}}"#
    );
    deliver(&mut os, &format!("{line}\n"));
    assert_eq!(run(&mut host, &mut os), 0);
    let log = logged(&log);
    assert!(
        !log.iter()
            .any(|l| l.starts_with("reseed") || l.starts_with("mac") || l.contains("clone-2")),
        "{log:?}"
    );
}

#[test]
fn a_restore_naming_nothing_else_keeps_the_booted_identity_in_the_file() {
    let (log, mut host, mut os) = fakes();
    deliver(
        &mut os,
        &format!("restored {{\"entropy\":\"{ENTROPY}\",\"generation_id\":\"{GEN}\"}}\n"),
    );
    assert_eq!(run(&mut host, &mut os), 0);
    let record = format!(
        r#"{{"instance_id":"i","hostname":"web-1","generation_id":"{GEN}","network":null,"mac":null}}"#
    );
    let want = [
        "reseed a0..b1".to_string(),
        format!("replace /run/herd/identity.json {record}\n"),
        "reaped 42".into(),
    ];
    assert_eq!(
        log_from(&log, "reseed"),
        want,
        "no hostname or network change"
    );
}

#[test]
fn a_failed_reseed_is_a_warning_and_the_rest_of_the_restore_still_happens() {
    let (log, mut host, mut os) = fakes();
    host.fail_reseed = true;
    let line = format!(
        r#"restored {{"generation_id":"{GEN}","entropy":"{ENTROPY}","hostname":"clone-2"}}"#
    );
    deliver(&mut os, &format!("{line}\n"));
    assert_eq!(run(&mut host, &mut os), 0);
    let log = log_from(&log, "reseed");
    assert_eq!(log[1], "hostname clone-2");
    assert!(
        log[2].starts_with("replace /run/herd/identity.json "),
        "{log:?}"
    );
    let err = restore::RestoreError::Rng(HostError::Rng {
        step: "credit it (RNDADDENTROPY)",
        source: io_err(libc::EPERM),
    });
    assert!(
        one_line(&err).starts_with(
            "restore: the random number generator was not reseeded: cannot reseed the \
             kernel's random number generator: cannot credit it (RNDADDENTROPY): "
        ),
        "{}",
        one_line(&err)
    );
}

#[test]
fn a_malformed_restore_changes_nothing_and_a_later_stop_still_works() {
    let (log, mut host, mut os) = fakes();
    let bad = format!(r#"restored {{"generation_id":"{GEN}","entropy":"00"}}"#);
    os.control = format!("{bad}\nstop\n").into_bytes();
    os.events = [Event::Control(os.control.len()), sig(Signal::Child)].into();
    os.reaps = [Some((42, libc::SIGTERM))].into();
    assert_eq!(run(&mut host, &mut os), 143);
    let log = log_from(&log, "open /dev/ttyS1");
    assert_eq!(log, ["open /dev/ttyS1", "kill 42 Term", "reaped 42"]);
}
