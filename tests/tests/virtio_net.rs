//! End-to-end: virtio-net through the real herd-vmm on a TAP inside a network namespace the
//! test creates (`herd_tests::netns`), driven by the probe guest. A small Python helper in the
//! same namespace captures the guest's frames on the TAP with an AF_PACKET socket and sends
//! frames back; nothing leaves the namespace.

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
        assert_eq!(*got, format!("len={len} sum={sum}"), "{vm:#?}");
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
