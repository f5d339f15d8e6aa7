//! End-to-end: virtio-vsock through the real herd-vmm with Firecracker's host-side
//! convention, driven by the probe guest (`probe.vsock.*` words): host clients connect to
//! `uds_path` with `CONNECT <port>\n`, the guest connects to `<uds_path>_<port>`; several
//! streams at once, refusals both ways, a mebibyte each way under credit flow control, and bad
//! configurations refused at start.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use herd_tests::vm::{TestVm, kvm_available};

macro_rules! require_kvm {
    ($name:expr) => {
        if !kvm_available($name) {
            return;
        }
    };
}

/// The emulated probe is slow: give every socket read plenty of time.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn vsock_vm(uds: &Path, cmdline: &str) -> TestVm {
    TestVm::probe_pvh()
        .cmdline(cmdline)
        .args(["--vsock", &format!("3,{}", uds.display())])
        .timeout(Duration::from_secs(90))
}

/// Connects a host client and sends the handshake; returns the stream and its reader.
fn host_connect(uds: &Path, port: u32) -> (UnixStream, BufReader<UnixStream>) {
    let mut s = UnixStream::connect(uds).expect("connect to uds_path");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

fn read_line(r: &mut BufReader<UnixStream>) -> String {
    let mut line = String::new();
    r.read_line(&mut line).expect("read a line");
    line
}

fn read_to_end(r: &mut impl Read) -> Vec<u8> {
    let mut all = Vec::new();
    r.read_to_end(&mut all).expect("read until closed");
    all
}

#[test]
fn host_clients_connect_and_get_echoes_with_three_streams_open_at_once() {
    require_kvm!("host_clients_connect_and_get_echoes_with_three_streams_open_at_once");
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let mut vm = vsock_vm(&uds, "exit=7 probe.vsock.listen=1234:3").spawn();
    vm.wait_for_line("probe: vsock cid=3");
    let mut clients: Vec<_> = (0..3).map(|_| host_connect(&uds, 1234)).collect();
    for (_, r) in &mut clients {
        let ok = read_line(r);
        let port: u32 = ok
            .strip_prefix("OK ")
            .and_then(|p| p.trim_end().parse().ok())
            .unwrap_or_else(|| panic!("bad handshake reply {ok:?}"));
        assert!(port > 0);
    }
    for (i, (s, r)) in clients.iter_mut().enumerate() {
        s.write_all(format!("msg{i}").as_bytes()).unwrap();
        let mut echo = vec![0u8; 9];
        r.read_exact(&mut echo).unwrap();
        assert_eq!(echo, format!("echo:msg{i}").as_bytes());
    }
    for (s, r) in &mut clients {
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(read_to_end(r).is_empty(), "closed after the shutdown");
    }
    vm.wait_for_line("probe: vsock conns=3");
    let done = vm.wait();
    assert_eq!(done.code(), 7, "{done:#?}");
    assert!(!uds.exists(), "socket removed on exit");
}

#[test]
fn the_guest_connects_to_a_host_listener_on_uds_path_port() {
    require_kvm!("the_guest_connects_to_a_host_listener_on_uds_path_port");
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let listener = UnixListener::bind(format!("{}_5000", uds.display())).unwrap();
    let host = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut msg = [0u8; 5];
        s.read_exact(&mut msg).unwrap();
        s.write_all(b"world").unwrap();
        let rest = read_to_end(&mut s);
        (msg, rest)
    });
    let vm = vsock_vm(&uds, "probe.vsock.connect=5000:hello").run();
    assert_eq!(vm.code(), 0, "{vm:#?}");
    assert_eq!(vm.probe_value("vsock reply"), Some("world"), "{vm:#?}");
    let (msg, rest) = host.join().unwrap();
    assert_eq!(&msg, b"hello");
    assert!(rest.is_empty());
}

#[test]
fn refused_connections_are_closed_or_reset_and_the_vm_goes_on() {
    require_kvm!("refused_connections_are_closed_or_reset_and_the_vm_goes_on");
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    // The guest connects where nobody listens: a reset.
    let vm = vsock_vm(&uds, "probe.vsock.connect=5001:x").run();
    assert_eq!(vm.code(), 0, "{vm:#?}");
    assert_eq!(vm.probe_value("vsock error refused"), None);
    assert!(vm.stdout.contains("probe: vsock error refused"), "{vm:#?}");
    // A host client asks for a port the guest does not listen on: closed; then a good one.
    let mut vm = vsock_vm(&uds, "probe.vsock.listen=1234").spawn();
    vm.wait_for_line("probe: vsock cid=3");
    let (_s, mut r) = host_connect(&uds, 999);
    assert!(read_to_end(&mut r).is_empty(), "refused: closed");
    let (mut s, mut r) = host_connect(&uds, 1234);
    assert!(read_line(&mut r).starts_with("OK "));
    s.write_all(b"z").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut r), b"echo:z");
    let done = vm.wait();
    assert_eq!(done.code(), 0, "{done:#?}");
    assert!(done.stdout.contains("probe: vsock conns=1"), "{done:#?}");
}

/// The probe's bulk pattern: byte i of a stream is `i % 251`.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Connects a host client to `port` and waits for the guest to accept.
fn host_stream(uds: &Path, port: u32) -> (UnixStream, BufReader<UnixStream>) {
    let (s, mut r) = host_connect(uds, port);
    let ok = read_line(&mut r);
    assert!(ok.starts_with("OK "), "bad handshake reply {ok:?}");
    (s, r)
}

#[test]
fn a_mebibyte_goes_each_way_intact_with_credit_granted_as_it_is_consumed() {
    require_kvm!("a_mebibyte_goes_each_way_intact_with_credit_granted_as_it_is_consumed");
    const LEN: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let cmdline = format!("probe.vsock.sink=6000 probe.vsock.source=6001:{LEN}");
    let mut vm = vsock_vm(&uds, &cmdline).spawn();
    vm.wait_for_line("probe: vsock cid=3");
    // Host to guest: four times the guest's 256 KiB credit, so it must send updates.
    let (mut s, mut r) = host_stream(&uds, 6000);
    // The second client asks now and waits while the first stream runs.
    let (_s2, mut r2) = host_connect(&uds, 6001);
    for chunk in pattern(LEN).chunks(64 * 1024) {
        s.write_all(chunk).unwrap();
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let answer = String::from_utf8(read_to_end(&mut r)).unwrap();
    assert_eq!(answer, format!("bytes={LEN} bad=0\n"));
    // Guest to host: four times herd-vmm's credit, in 64 KiB packets.
    assert!(read_line(&mut r2).starts_with("OK "));
    let got = read_to_end(&mut r2);
    let want = pattern(LEN);
    let first_bad = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(
        (got.len(), first_bad),
        (LEN, None),
        "length, first bad byte"
    );
    let done = vm.wait();
    assert_eq!(done.code(), 0, "{done:#?}");
    assert!(
        done.stdout
            .contains(&format!("probe: vsock sink bytes={LEN} bad=0\n")),
        "{done:#?}"
    );
    let sent = format!("probe: vsock source bytes={LEN}\n");
    assert!(done.stdout.contains(&sent), "{done:#?}");
}

#[test]
fn the_guest_sink_counts_bytes_that_break_the_pattern() {
    require_kvm!("the_guest_sink_counts_bytes_that_break_the_pattern");
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let mut vm = vsock_vm(&uds, "probe.vsock.sink=6000").spawn();
    vm.wait_for_line("probe: vsock cid=3");
    let (mut s, mut r) = host_stream(&uds, 6000);
    let mut data = pattern(3000);
    data[1234] ^= 0x40;
    data.remove(2500);
    s.write_all(&data).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    // One flipped byte, then every byte after the lost one is off by one.
    let answer = String::from_utf8(read_to_end(&mut r)).unwrap();
    assert_eq!(answer, "bytes=2999 bad=500\n");
    assert_eq!(vm.wait().code(), 0);
}

#[test]
fn a_low_cid_or_an_unusable_socket_path_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let vm = TestVm::probe_pvh()
        .args(["--vsock", &format!("2,{}", uds.display())])
        .run();
    assert_eq!(vm.code(), 64, "{vm:#?}");
    assert!(vm.stderr.contains("guest CID 2"), "{vm:#?}");
    require_kvm!("a_low_cid_or_an_unusable_socket_path_is_refused_at_start");
    let missing = dir.path().join("nope/v.sock");
    let vm = TestVm::probe_pvh()
        .args(["--vsock", &format!("3,{}", missing.display())])
        .run();
    assert_eq!(vm.code(), 66, "{vm:#?}");
    assert!(vm.stderr.contains("vsock"), "{vm:#?}");
    assert!(
        vm.stderr.contains(&missing.display().to_string()),
        "{vm:#?}"
    );
    std::fs::write(&uds, b"not a socket").unwrap();
    let vm = TestVm::probe_pvh()
        .args(["--vsock", &format!("3,{}", uds.display())])
        .run();
    assert_eq!(vm.code(), 69, "{vm:#?}");
    assert!(
        vm.stderr.contains("exists and is not a stale socket"),
        "{vm:#?}"
    );
    assert_eq!(std::fs::read(&uds).unwrap(), b"not a socket", "left alone");
}
