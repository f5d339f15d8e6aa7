//! herd-init as a real PID 1: `herd-init-testhost` (the production code with the test host,
//! see the crate docs) started as `/init` of a guest root in fresh PID, mount, UTS and network
//! namespaces, with `/bin/sh` scripts as apps. Each test checks one behaviour of
//! `issues show 3` ("Guest init") from inside the app or from outside the namespaces.

mod support;

use support::{Guest, namespaces_available, sh_image};

macro_rules! require_namespaces {
    ($name:literal) => {
        if !namespaces_available($name) {
            return;
        }
    };
}

/// Prints what the app sees, one `key=value` per line.
const REPORT: &str = r#"
echo "ppid=$PPID"
for a in "$@"; do echo "arg=$a"; done
echo "cwd=$(pwd -P)"
echo "hostname=$(cat /proc/sys/kernel/hostname)"
echo "lo-flags=$(cat /sys/class/net/lo/flags)"
while read -r src dst fstype rest; do echo "mount=$dst $fstype"; done < /proc/self/mounts
tr '\0' '\n' < /proc/$$/environ | sed 's/^/env=/'
echo "init=$(tr '\0' ' ' < /proc/1/cmdline)"
echo "proc-pids=$(ls -d /proc/[0-9]* | wc -l)"
echo "stdin=$(readlink /proc/$$/fd/0)"
grep -E '^Sig(Blk|Ign):' /proc/$$/status | tr -d ' \t' | tr ':' '='
"#;

#[test]
fn app_runs_with_mounts_hostname_loopback_and_exactly_the_merged_config() {
    require_namespaces!("app_runs_with_mounts_hostname_loopback_and_exactly_the_merged_config");
    let image = sh_image(
        REPORT,
        &["default"],
        &[("A", "image"), ("B", "image")],
        "/work",
    );
    let guest = Guest::new(&image);
    std::fs::create_dir(guest.path("/work")).unwrap();
    guest.instance(
        r#"{"instance_id":"t-1","hostname":"herd-test-1","env":{"B":"instance","C":"x y"},"args":["one","two words"]}"#,
    );
    let out = guest.run();
    out.assert_status(0);

    assert_eq!(out.value("ppid"), "1");
    assert_eq!(out.values("arg"), ["one", "two words"]);
    assert_eq!(out.value("cwd"), "/work");
    assert_eq!(out.values("env"), ["A=image", "B=instance", "C=x y"]);
    assert_eq!(out.value("hostname"), "herd-test-1");
    let flags = u32::from_str_radix(out.value("lo-flags").trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "IFF_UP on lo");
    let mounts = out.values("mount");
    for m in [
        "/proc proc",
        "/sys sysfs",
        "/dev devtmpfs",
        "/tmp tmpfs",
        "/run tmpfs",
        "/dev/shm tmpfs",
    ] {
        assert!(mounts.contains(&m), "{m} not mounted: {mounts:?}");
    }
    assert_eq!(out.value("init"), "/init ");
    assert!(out.value("proc-pids").parse::<u32>().unwrap() >= 2);
    assert_eq!(
        out.value("stdin"),
        "/dev/null",
        "the app inherits init's stdio"
    );
    // Init blocks signals and Rust ignores SIGPIPE: neither may reach the app. (Other ignored
    // signals come from whoever started the test and pass through, as they would in a guest.)
    assert_eq!(out.value("SigBlk"), "0000000000000000", "signal mask");
    let ignored = u64::from_str_radix(out.value("SigIgn"), 16).unwrap();
    assert_eq!(
        ignored & (1 << (libc::SIGPIPE - 1)),
        0,
        "SIGPIPE ignored: {ignored:#x}"
    );
    assert!(
        out.init_lines()
            .iter()
            .any(|l| l.contains("boot timer signalled"))
    );
}

#[test]
fn the_instances_network_is_applied_to_eth0_with_route_and_resolv_conf() {
    require_namespaces!("the_instances_network_is_applied_to_eth0_with_route_and_resolv_conf");
    let script = r#"
set -- $(ip -4 -o addr show dev eth0); echo "addr=$4"
echo "route=$(ip -4 route show default)"
echo "up=$(( $(cat /sys/class/net/eth0/flags) & 1 ))"
sed 's/^/resolv=/' /etc/resolv.conf
"#;
    let mut guest = Guest::new(&sh_image(script, &[], &[], "/"));
    guest.with_eth0();
    guest.instance(
        r#"{"instance_id":"n","hostname":"net-1","network":{"address":"10.0.0.2/24","gateway":"10.0.0.1","dns":["10.0.0.1","9.9.9.9"]}}"#,
    );
    let out = guest.run();
    out.assert_status(0);
    assert_eq!(out.value("addr"), "10.0.0.2/24");
    assert!(
        out.value("route")
            .starts_with("default via 10.0.0.1 dev eth0"),
        "{out:#?}"
    );
    assert_eq!(out.value("up"), "1");
    assert_eq!(
        out.values("resolv"),
        [
            "# written by herd-init from /herd/instance.json",
            "nameserver 10.0.0.1",
            "nameserver 9.9.9.9"
        ]
    );
    assert!(
        out.init_lines()
            .contains(&"herd-init: eth0 is 10.0.0.2/24 via 10.0.0.1")
    );
}

#[test]
fn a_network_config_without_an_interface_gives_125() {
    require_namespaces!("a_network_config_without_an_interface_gives_125");
    let guest = Guest::new(&sh_image("echo ran=yes", &[], &[], "/"));
    guest.instance(r#"{"instance_id":"n","hostname":"h","network":{"address":"10.0.0.2/24"}}"#);
    let out = guest.run();
    out.assert_status(125);
    assert!(out.stdout.is_empty(), "{out:#?}");
    assert!(
        out.init_lines()
            .iter()
            .any(|l| l.contains("no network interface besides lo")),
        "{out:#?}"
    );
}

#[test]
fn without_instance_config_the_image_defaults_run() {
    require_namespaces!("without_instance_config_the_image_defaults_run");
    let image = sh_image(REPORT, &["default"], &[("A", "image")], "/");
    let out = Guest::new(&image).run();
    out.assert_status(0);
    assert_eq!(out.values("arg"), ["default"]);
    assert_eq!(out.values("env"), ["A=image"]);
    assert_eq!(out.value("cwd"), "/");
}

#[test]
fn the_vm_ends_with_the_apps_exit_status() {
    require_namespaces!("the_vm_ends_with_the_apps_exit_status");
    let out = Guest::new(&sh_image("exit 3", &[], &[], "/")).run();
    out.assert_status(3);
}

#[test]
fn an_app_killed_by_signal_n_gives_128_plus_n() {
    require_namespaces!("an_app_killed_by_signal_n_gives_128_plus_n");
    let out = Guest::new(&sh_image("kill -KILL $$", &[], &[], "/")).run();
    out.assert_status(128 + 9);
}

#[test]
fn sigterm_to_init_is_forwarded_to_the_app() {
    require_namespaces!("sigterm_to_init_is_forwarded_to_the_app");
    // `exec sleep`: the app is sleep itself, dying of the default SIGTERM action.
    let guest = Guest::new(&sh_image(": > /out/ready; exec sleep 30", &[], &[], "/"));
    let running = guest.start();
    running.wait_for_file("/out/ready");
    running.signal_init(libc::SIGTERM);
    running.wait().assert_status(128 + 15);
}

#[test]
fn sigint_to_init_is_forwarded_to_the_app_which_may_handle_it() {
    require_namespaces!("sigint_to_init_is_forwarded_to_the_app_which_may_handle_it");
    let script = "trap 'echo got=INT; exit 7' INT; : > /out/ready; while :; do sleep 0.02; done";
    let guest = Guest::new(&sh_image(script, &[], &[], "/"));
    let running = guest.start();
    running.wait_for_file("/out/ready");
    running.signal_init(libc::SIGINT);
    let out = running.wait();
    out.assert_status(7);
    assert_eq!(out.value("got"), "INT");
}

#[test]
fn a_stop_request_on_the_control_port_reaches_the_app_as_sigterm() {
    require_namespaces!("a_stop_request_on_the_control_port_reaches_the_app_as_sigterm");
    let script = "trap 'echo got=TERM; exit 9' TERM; : > /out/ready; while :; do sleep 0.02; done";
    let guest = Guest::new(&sh_image(script, &[], &[], "/"));
    guest.control_port();
    let running = guest.start();
    running.wait_for_file("/out/ready");
    running.send_control("hello\nstop\n");
    let out = running.wait();
    out.assert_status(9);
    assert_eq!(out.value("got"), "TERM");
    let lines = out.init_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ignoring control request \"hello\"")),
        "{lines:?}"
    );
}

/// The MAC address the restore test's clone is given.
const MAC: &str = "02:48:45:52:44:07";

#[test]
fn a_restored_request_renames_the_host_moves_eth0_and_rewrites_the_identity_file() {
    require_namespaces!(
        "a_restored_request_renames_the_host_moves_eth0_and_rewrites_the_identity_file"
    );
    // Init writes the identity file last, so once it is there the rest is done.
    let script = r#"
echo "mac-before=$(cat /sys/class/net/eth0/address)"
: > /out/ready
while [ ! -e /run/herd/identity.json ]; do sleep 0.02; done
echo "identity=$(cat /run/herd/identity.json)"
echo "hostname=$(cat /proc/sys/kernel/hostname)"
echo "mac=$(cat /sys/class/net/eth0/address)"
echo "up=$(( $(cat /sys/class/net/eth0/flags) & 1 ))"
ip -4 -o addr show dev eth0 | while read -r n dev family addr rest; do echo "addr=$addr"; done
echo "route=$(ip -4 route show default)"
sed 's/^/resolv=/' /etc/resolv.conf
"#;
    let mut guest = Guest::new(&sh_image(script, &[], &[], "/"));
    guest.with_eth0();
    guest.control_port();
    guest.instance(
        r#"{"instance_id":"web-1","hostname":"web-1","network":{"address":"10.0.0.2/24","gateway":"10.0.0.1","dns":["10.0.0.1"]}}"#,
    );
    let running = guest.start();
    running.wait_for_file("/out/ready");
    let generation = "00112233445566778899aabbccddeeff";
    let network =
        serde_json::json!({"address": "10.0.1.7/24", "gateway": "10.0.1.1", "dns": ["9.9.9.9"]});
    let request = serde_json::json!({
        "generation_id": generation,
        "entropy": "ab".repeat(32),
        "instance_id": "web-2",
        "hostname": "clone-2",
        "mac": MAC.to_uppercase(),
        "network": network,
    });
    running.send_control(&format!("restored {request}\n"));
    let out = running.wait();
    out.assert_status(0);
    assert_eq!(out.value("hostname"), "clone-2");
    assert_ne!(
        out.value("mac-before"),
        MAC,
        "veth picked its own at creation"
    );
    assert_eq!(out.value("mac"), MAC, "{out:#?}");
    assert_eq!(out.value("up"), "1", "still up after the MAC change");
    assert_eq!(
        out.values("addr"),
        ["10.0.1.7/24"],
        "the old address is gone"
    );
    assert!(
        out.value("route")
            .starts_with("default via 10.0.1.1 dev eth0"),
        "{out:#?}"
    );
    assert_eq!(out.values("resolv")[1..], ["nameserver 9.9.9.9"]);
    let identity: serde_json::Value = serde_json::from_str(out.value("identity")).unwrap();
    let want = serde_json::json!({
        "instance_id": "web-2",
        "hostname": "clone-2",
        "generation_id": generation,
        "network": network,
        "mac": MAC,
    });
    assert_eq!(identity, want);
    let lines = out.init_lines();
    for line in [
        "herd-init: test host: random number generator reseed with 32 bytes skipped".to_string(),
        format!("herd-init: eth0 now has MAC address {MAC}"),
        "herd-init: eth0 is now 10.0.1.7/24 via 10.0.1.1".into(),
        format!("herd-init: restored as web-2 (generation {generation})"),
    ] {
        assert!(lines.contains(&line.as_str()), "{line:?} in {lines:#?}");
    }
}

#[test]
fn orphans_are_reparented_to_init_and_reaped() {
    require_namespaces!("orphans_are_reparented_to_init_and_reaped");
    // Each inner shell exits at once, leaving its sleep to PID 1. The script waits (up to 5 s,
    // not a fixed delay, so load cannot make it flaky) until all five are init's children,
    // kills them, and waits until init has reaped them.
    let script = r#"
for i in 1 2 3 4 5; do /bin/sh -c '/bin/sleep 30 & exit 0'; done
orphans() { grep -l '^PPid:[[:space:]]*1$' /proc/[0-9]*/status 2>/dev/null | xargs -r grep -l '^Name:[[:space:]]*sleep$'; }
n=0; for t in $(seq 50); do n=$(orphans | wc -l); [ "$n" -ge 5 ] && break; sleep 0.1; done
echo "orphans=$n"
for f in $(orphans); do p=${f#/proc/}; kill "${p%/status}"; done
z=-1; for t in $(seq 50); do z=$(grep -l '^State:[[:space:]]*Z' /proc/[0-9]*/status 2>/dev/null | wc -l); [ "$z" -eq 0 ] && [ -z "$(orphans)" ] && break; sleep 0.1; done
echo "zombies=$z"
"#;
    let out = Guest::new(&sh_image(script, &[], &[], "/")).run();
    out.assert_status(0);
    assert_eq!(
        out.value("orphans"),
        "5",
        "the sleeps were re-parented to init"
    );
    assert_eq!(out.value("zombies"), "0", "init reaped them");
}

#[test]
fn a_missing_entrypoint_is_named_and_gives_127() {
    require_namespaces!("a_missing_entrypoint_is_named_and_gives_127");
    let out = Guest::new(r#"{"entrypoint":["/app/missing"]}"#).run();
    out.assert_status(127);
    let lines = out.init_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("herd-init: entrypoint /app/missing does not exist")),
        "{lines:?}"
    );
}

#[test]
fn an_entrypoint_that_cannot_execute_gives_126() {
    require_namespaces!("an_entrypoint_that_cannot_execute_gives_126");
    let guest = Guest::new(r#"{"entrypoint":["/app/data"]}"#);
    guest.write("/app/data", "not a program\n", 0o644);
    let out = guest.run();
    out.assert_status(126);
    assert!(
        out.init_lines()
            .iter()
            .any(|l| l.starts_with("herd-init: cannot execute /app/data: "))
    );

    let guest = Guest::new(r#"{"entrypoint":["/app/script"]}"#);
    guest.write("/app/script", "#!/no/such/shell\n", 0o755);
    let out = guest.run();
    out.assert_status(126);
    assert!(
        out.init_lines()
            .iter()
            .any(|l| l.contains("/app/script") && l.contains("interpreter is missing"))
    );
}

#[test]
fn bad_or_missing_configuration_gives_125_and_runs_nothing() {
    require_namespaces!("bad_or_missing_configuration_gives_125_and_runs_nothing");
    let guest = Guest::new(&sh_image("echo ran=yes", &[], &[], "/"));
    guest.instance(r#"{"instance_id":"t","hostname":"h","surprise":1}"#);
    let out = guest.run();
    out.assert_status(125);
    assert!(out.stdout.is_empty(), "the app must not run: {out:#?}");
    let lines = out.init_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("/herd/instance.json") && l.contains("surprise")),
        "{lines:?}"
    );
    assert_eq!(lines.len(), 1, "one line per failure: {lines:?}");

    let guest = Guest::new("{not json");
    let out = guest.run();
    out.assert_status(125);
    assert!(
        out.init_lines()
            .iter()
            .any(|l| l.contains("/herd/image.json"))
    );

    let guest = Guest::new(&sh_image("echo ran=yes", &[], &[], "/"));
    std::fs::remove_file(guest.path("/herd/image.json")).unwrap();
    let out = guest.run();
    out.assert_status(125);
    assert!(
        out.init_lines()
            .iter()
            .any(|l| l.contains("/herd/image.json is missing"))
    );
}

#[test]
fn a_missing_working_directory_gives_125() {
    require_namespaces!("a_missing_working_directory_gives_125");
    let out = Guest::new(&sh_image("echo ran=yes", &[], &[], "/nowhere")).run();
    out.assert_status(125);
    assert!(out.init_lines().iter().any(|l| l.contains("/nowhere")));
}

#[test]
fn init_reports_its_own_share_of_boot_time() {
    require_namespaces!("init_reports_its_own_share_of_boot_time");
    let out = Guest::new(&sh_image("exit 0", &[], &[], "/")).run();
    out.assert_status(0);
    let line = out
        .init_lines()
        .into_iter()
        .find(|l| l.contains("app running"))
        .expect("timing line")
        .to_owned();
    let us: u64 = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap();
    println!("herd-init overhead (main to app exec'd, this build): {us} us");
    // A loose bound: debug builds on a loaded CI host. The release figure is in the report.
    assert!(us < 50_000, "{line}");
}
