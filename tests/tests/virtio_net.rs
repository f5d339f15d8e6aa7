//! End-to-end: virtio-net through the real herd-vmm on a TAP inside a network namespace the
//! test creates (`herd_tests::netns`), driven by the probe guest. A small Python helper in the
//! same namespace captures the guest's frames on the TAP with an AF_PACKET socket and sends
//! frames back; the checksum-offload tests exchange UDP datagrams between the probe
//! (10.0.0.2) and sockets on the TAP's address (10.0.0.1). Nothing leaves the namespace.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use herd_tests::netns::NetNs;
use herd_tests::vm::{TestVm, kvm_available, skip};

const TAP: &str = "htap0";
const MAC: &str = "02:00:00:00:00:01";
const NET_WORD: &str = "virtio_mmio.device=4K@0xc0001000:5";

/// Captures `want` guest frames of ethertype 0x88b5 on the TAP (printing each in hex), then
/// sends `send` frames to `dst` (60, 100, 140.. bytes; printing length and byte sum).
const HELPER: &str = r#"
import select, socket, sys, time
tap, want, send, dst = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((tap, 0))
print("ready", flush=True)
got, deadline = 0, time.time() + 60
while got < want:
    r, _, _ = select.select([s], [], [], max(0, deadline - time.time()))
    if not r:
        print("timeout", flush=True)
        sys.exit(1)
    f, addr = s.recvfrom(65536)
    if addr[2] == socket.PACKET_OUTGOING or f[12:14] != b"\x88\xb5":
        continue
    print("frame", f.hex(), flush=True)
    got += 1
for i in range(send):
    f = bytes.fromhex(dst.replace(":", "")) + bytes.fromhex("0200000000fe") + b"\x88\xb5"
    f = (f + b"host" + i.to_bytes(4, "big")).ljust(60 + 40 * i, b"\x07")
    s.send(f)
    print("sent", len(f), sum(f), flush=True)
"#;

macro_rules! require_kvm {
    ($name:expr) => {
        if !kvm_available($name) {
            return;
        }
    };
}

/// A namespace with our TAP in it, or a recorded skip.
fn namespace(test: &str) -> Option<NetNs> {
    match NetNs::create() {
        Ok(mut ns) => {
            ns.add_tap(TAP);
            Some(ns)
        }
        Err(why) => {
            skip(test, &format!("no network namespace: {why}"));
            None
        }
    }
}

/// The packet helper, killed on drop.
struct Helper {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Helper {
    fn start(ns: &NetNs, want: u32, send: u32) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "python3", "-c", HELPER, TAP])
            .args([want.to_string(), send.to_string(), MAC.to_owned()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start packet helper");
        let out = BufReader::new(child.stdout.take().expect("piped"));
        let mut h = Self { child, out };
        assert_eq!(h.line(), "ready");
        h
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).expect("helper output");
        l.trim().to_owned()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test frame the probe sends as its `n`th: broadcast, from `MAC`, 0x88b5, `herd` + n.
fn guest_frame(n: u32) -> String {
    let mut f = vec![0xffu8; 6];
    f.extend([2, 0, 0, 0, 0, 1, 0x88, 0xb5]);
    f.extend(b"herd");
    f.extend(n.to_be_bytes());
    f.resize(60, 0);
    f.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn frames_flow_both_ways_through_a_tap_in_a_namespace() {
    let test = "frames_flow_both_ways_through_a_tap_in_a_namespace";
    require_kvm!(test);
    let Some(ns) = namespace(test) else { return };
    let mut helper = Helper::start(&ns, 3, 2);
    let vm = TestVm::probe_pvh()
        .within(ns.exec_prefix())
        .cmdline("exit=3 probe.net.tx=3 probe.net.rx=2")
        .args(["--net", &format!("{TAP},mac={MAC}")])
        .timeout(Duration::from_secs(90))
        .run();
    assert_eq!(vm.code(), 3, "{vm:#?}");
    let want = format!("exit=3 probe.net.tx=3 probe.net.rx=2 {NET_WORD}");
    assert_eq!(vm.probe_value("cmdline"), Some(want.as_str()));
    assert_eq!(vm.probe_value("net mac"), Some(MAC), "{vm:#?}");
    assert_eq!(vm.probe_value("net tx"), Some("3"), "{vm:#?}");
    for n in 0..3 {
        assert_eq!(
            helper.line(),
            format!("frame {}", guest_frame(n)),
            "{vm:#?}"
        );
    }
    let rx: Vec<&str> = vm
        .probe_lines()
        .into_iter()
        .filter_map(|l| l.strip_prefix("net rx "))
        .collect();
    let sent: Vec<String> = (0..2).map(|_| helper.line()).collect();
    assert_eq!(rx.len(), 2, "{vm:#?}");
    for (got, sent) in rx.iter().zip(&sent) {
        let (len, sum) = sent
            .strip_prefix("sent ")
            .and_then(|s| s.split_once(' '))
            .expect("helper sent line");
        assert_eq!(*got, format!("len={len} sum={sum} flags=0"), "{vm:#?}");
    }
}

#[test]
fn a_busy_tap_is_refused_naming_the_interface() {
    let test = "a_busy_tap_is_refused_naming_the_interface";
    require_kvm!(test);
    let Some(ns) = namespace(test) else { return };
    let net = ["--net", TAP];
    let mut first = TestVm::probe_pvh()
        .within(ns.exec_prefix())
        .cmdline("probe.end=halt")
        .args(net)
        .spawn();
    first.wait_for_line("probe: done");
    let second = TestVm::probe_pvh().within(ns.exec_prefix()).args(net).run();
    first.signal("TERM");
    let first = first.wait();
    assert_eq!(first.code(), 143, "{first:#?}");
    assert_eq!(second.code(), 69, "{second:#?}");
    assert!(
        second
            .stderr
            .contains("network interface net0: TAP htap0: the TAP is busy"),
        "{second:#?}"
    );
}

#[test]
fn a_missing_tap_or_bad_mac_is_a_clear_error() {
    require_kvm!("a_missing_tap_or_bad_mac_is_a_clear_error");
    let vm = TestVm::probe_pvh().args(["--net", "herd-missing0"]).run();
    assert_eq!(vm.code(), 66, "{vm:#?}");
    assert!(
        vm.stderr
            .contains("network interface net0: TAP herd-missing0: no such network interface"),
        "{vm:#?}"
    );
    assert!(vm.stdout.is_empty(), "{vm:#?}");
    let vm = TestVm::probe_pvh()
        .args(["--net", "herd-missing0,mac=01:00:5e:00:00:01"])
        .run();
    assert_eq!(vm.code(), 64, "{vm:#?}");
    assert!(
        vm.stderr
            .contains("network interface net0: bad MAC address \"01:00:5e:00:00:01\""),
        "{vm:#?}"
    );
}

#[test]
fn firecracker_network_interfaces_attach_the_tap() {
    let test = "firecracker_network_interfaces_attach_the_tap";
    require_kvm!(test);
    let Some(ns) = namespace(test) else { return };
    let mut helper = Helper::start(&ns, 1, 0);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vm.json");
    let json = serde_json::json!({
        "boot-source": {
            "kernel_image_path": herd_tests::probe::pvh_elf(),
            "boot_args": "probe.net.tx=1"
        },
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": TAP, "guest_mac": MAC}]
    });
    std::fs::write(&config, json.to_string()).unwrap();
    let vm = TestVm::raw(&["--config-file", config.to_str().unwrap()])
        .within(ns.exec_prefix())
        .run();
    assert_eq!(vm.code(), 0, "{vm:#?}");
    assert_eq!(vm.probe_value("net mac"), Some(MAC), "{vm:#?}");
    assert_eq!(helper.line(), format!("frame {}", guest_frame(0)));
}

const HOST_IP: &str = "10.0.0.1";
const GUEST_IP: &str = "10.0.0.2";
const PORT: u16 = 5000;

/// A namespace whose TAP has the host address and a static neighbour entry for the probe.
fn ip_namespace(test: &str) -> Option<NetNs> {
    let ns = namespace(test)?;
    ns.add_ipv4(TAP, &format!("{HOST_IP}/24"), (GUEST_IP, MAC));
    Some(ns)
}

/// Whether `ethtool -k` in the namespace says the TAP's tx-checksumming is on.
fn tap_tx_checksumming(ns: &NetNs) -> bool {
    let out = ns.run(&["ethtool", "-k", TAP]);
    assert!(
        out.status.success(),
        "ethtool -k {TAP} (is ethtool installed?): {out:?}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("tx-checksumming:"))
        .unwrap_or_else(|| panic!("no tx-checksumming in {text}"));
    line.split_whitespace().nth(1) == Some("on")
}

/// The namespace's UDP counters (`/proc/net/snmp`, which is per namespace).
fn udp_counters(ns: &NetNs) -> std::collections::HashMap<String, u64> {
    let out = ns.run(&["cat", "/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let udp: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp: ")).collect();
    assert_eq!(udp.len(), 2, "{text}");
    let names = udp[0].split_whitespace().skip(1);
    let values = udp[1]
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().expect("counter"));
    names.map(str::to_owned).zip(values).collect()
}

/// Boots the probe waiting for one UDP datagram on `PORT` (taking the checksum offloads or
/// not), sends it one from a host socket once the driver is up, and returns the probe's
/// `net udp` line and whether the TAP had tx-checksumming on meanwhile.
fn udp_to_guest(test: &str, offload: bool) -> Option<(String, bool)> {
    let ns = ip_namespace(test)?;
    let offload_word = if offload { " probe.net.offload" } else { "" };
    let mut vm = TestVm::probe_pvh()
        .within(ns.exec_prefix())
        .cmdline(&format!(
            "probe.net.udp={PORT} probe.net.rx=1{offload_word}"
        ))
        .args(["--net", &format!("{TAP},mac={MAC}")])
        .timeout(Duration::from_secs(90))
        .spawn();
    vm.wait_for_line("probe: net features=");
    ns.wait_until_up(TAP);
    let tx_csum = tap_tx_checksumming(&ns);
    let send = format!(
        "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\
         .sendto(b'hello herd', ('{GUEST_IP}', {PORT}))"
    );
    let out = ns.run(&["python3", "-c", &send]);
    assert!(out.status.success(), "send a datagram: {out:?}");
    let vm = vm.wait();
    assert_eq!(vm.code(), 0, "{vm:#?}");
    assert_eq!(vm.probe_value("net rx"), Some("1"), "{vm:#?}");
    let line = vm.probe_value("net udp len").map(|v| format!("len={v}"));
    Some((
        line.unwrap_or_else(|| panic!("no udp line: {vm:#?}")),
        tx_csum,
    ))
}

#[test]
fn a_guest_taking_guest_csum_gets_host_datagrams_with_a_partial_checksum() {
    let test = "a_guest_taking_guest_csum_gets_host_datagrams_with_a_partial_checksum";
    require_kvm!(test);
    let Some((line, tx_csum)) = udp_to_guest(test, true) else {
        return;
    };
    assert!(tx_csum, "the TAP's offloads are off");
    // 14 + 20 + 8 + 10 bytes; the checksum starts at the UDP header (34) and sits at +6; the
    // probe finishes it from the pseudo-header sum and it holds.
    assert_eq!(line, "len=52 flags=1 start=34 offset=6 csum=ok");
}

#[test]
fn a_guest_without_guest_csum_gets_host_datagrams_fully_checksummed() {
    let test = "a_guest_without_guest_csum_gets_host_datagrams_fully_checksummed";
    require_kvm!(test);
    let Some((line, tx_csum)) = udp_to_guest(test, false) else {
        return;
    };
    assert!(
        !tx_csum,
        "the TAP's offloads are on for a guest that did not take them"
    );
    assert_eq!(line, "len=52 flags=0 start=0 offset=0 csum=ok");
}

/// Receives one UDP datagram on the host address in a namespace (or times out).
const UDP_SINK: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(float(sys.argv[3]))
print("ready", flush=True)
try:
    data, addr = s.recvfrom(65536)
    print("got", addr[0], addr[1], data.hex(), flush=True)
except socket.timeout:
    print("timeout", flush=True)
"#;

/// Has the probe send one 100-byte UDP frame with a partial checksum (`NEEDS_CSUM`, the field
/// holding only the pseudo-header sum) to a host socket; returns what the socket got and how
/// the namespace's UDP counters moved.
fn partial_checksum_from_guest(test: &str, offload: bool, wait: f32) -> Option<(String, i64, i64)> {
    let ns = ip_namespace(test)?;
    let mut sink = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "python3",
            "-c",
            UDP_SINK,
            HOST_IP,
        ])
        .args([PORT.to_string(), wait.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the UDP sink");
    let mut out = BufReader::new(sink.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line).expect("sink output");
    assert_eq!(line.trim(), "ready");
    let before = udp_counters(&ns);
    let offload_word = if offload { " probe.net.offload" } else { "" };
    let vm = TestVm::probe_pvh()
        .within(ns.exec_prefix())
        .cmdline(&format!(
            "probe.net.udp={PORT} probe.net.udp.csum=partial probe.net.len=100 \
             probe.net.tx=1{offload_word}"
        ))
        .args(["--net", &format!("{TAP},mac={MAC}")])
        .timeout(Duration::from_secs(90))
        .run();
    assert_eq!(vm.code(), 0, "{vm:#?}");
    assert_eq!(vm.probe_value("net tx"), Some("1"), "{vm:#?}");
    line.clear();
    out.read_line(&mut line).expect("sink output");
    let _ = sink.wait();
    let after = udp_counters(&ns);
    let moved = |k: &str| after[k] as i64 - before[k] as i64;
    Some((
        line.trim().to_owned(),
        moved("InDatagrams"),
        moved("InCsumErrors"),
    ))
}

#[test]
fn a_guest_datagram_with_a_partial_checksum_reaches_a_host_socket() {
    let test = "a_guest_datagram_with_a_partial_checksum_reaches_a_host_socket";
    require_kvm!(test);
    let Some((got, datagrams, csum_errors)) = partial_checksum_from_guest(test, true, 60.0) else {
        return;
    };
    // 100 - 42 header bytes of payload: "herd udp" and a byte ramp.
    let mut payload = b"herd udp".to_vec();
    payload.extend(0..50u8);
    let payload: String = payload.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(got, format!("got {GUEST_IP} {PORT} {payload}"));
    assert_eq!((datagrams, csum_errors), (1, 0));
}

#[test]
fn a_partial_checksum_without_csum_negotiated_is_not_finished_by_the_host() {
    let test = "a_partial_checksum_without_csum_negotiated_is_not_finished_by_the_host";
    require_kvm!(test);
    // The probe marks the frame NEEDS_CSUM anyway; herd-vmm clears what was not negotiated,
    // so the host sees a wrong checksum and drops the datagram.
    let Some((got, datagrams, csum_errors)) = partial_checksum_from_guest(test, false, 2.0) else {
        return;
    };
    assert_eq!(got, "timeout");
    assert_eq!((datagrams, csum_errors), (0, 1));
}
