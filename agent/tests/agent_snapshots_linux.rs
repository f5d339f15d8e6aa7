//! End-to-end on hardware KVM only (a Linux guest's user space cannot start under PVM's
//! instruction emulator, so this is skipped there with a message): the `http` example app as
//! a snapshot-starts service behind the agent's bridge. Its request counter lives in the
//! app's memory; clones restored from a snapshot of a busy instance count on from there, and
//! each clone, told its identity by herd-init, answers at its own address with its own id.

mod common;

use common::{Agent, service};
use serde_json::{Value, json};

/// `curl` inside the agent's namespace; the body.
fn get(agent: &Agent, addr: &str, path: &str) -> String {
    let out = agent.ns.run(&[
        "curl",
        "-sf",
        "--max-time",
        "2",
        &format!("http://{addr}:8080{path}"),
    ]);
    assert!(out.status.success(), "curl {addr}{path}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn requests_served(agent: &Agent, addr: &str) -> u64 {
    let body = get(agent, addr, "/count");
    let n = body.trim().strip_prefix("requests=");
    n.and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("/count: {body:?}"))
}

fn address(instance: &Value) -> String {
    let cidr = instance["address"].as_str().expect("an address");
    cidr.split('/').next().unwrap().to_owned()
}

fn healthy(agent: &Agent) -> Vec<Value> {
    let mut all = agent.running("web");
    all.retain(|i| i["status"] == "healthy");
    all
}

#[test]
fn http_clones_keep_the_apps_memory_and_serve_at_their_own_addresses_on_hardware_kvm() {
    let test = "http_clones_keep_the_apps_memory_and_serve_at_their_own_addresses_on_hardware_kvm";
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        println!(
            "{test}: skipped on PVM: Linux user space cannot start under its instruction emulator"
        );
        return;
    }
    let Some(agent) = Agent::new(test) else {
        return;
    };
    let image = agent.http_image();
    let mut spec = service("web", &image, 1);
    spec["env"] = json!({"PORT": "8080"});
    spec["health_check"] = json!({"http": {"port": 8080, "path": "/healthz"}, "interval_ms": 200,
        "timeout_ms": 150, "failure_threshold": 3, "grace_ms": 10000});
    agent.api("POST", "/v1/services", Some(&spec));
    agent.wait_for("a healthy http instance", || healthy(&agent).len() == 1);
    let source = healthy(&agent).remove(0);
    // Busy first: a fresh boot could not have served this many in the seconds a clone lives.
    for _ in 0..100 {
        get(&agent, &address(&source), "/healthz");
    }
    let served = requests_served(&agent, &address(&source));
    spec["snapshot_starts"] = json!(true);
    agent.api("PUT", "/v1/services/web", Some(&spec));
    agent.wait_for("a snapshot", || {
        agent.api("GET", "/v1/services/web", None).1["snapshot"]["state"] == "ready"
    });
    agent.api(
        "POST",
        "/v1/services/web/scale",
        Some(&json!({"replicas": 3})),
    );
    agent.wait_for("3 healthy instances", || healthy(&agent).len() == 3);
    let all = healthy(&agent);
    let clones: Vec<&Value> = all.iter().filter(|i| i["start"] == "snapshot").collect();
    assert_eq!(clones.len(), 2, "{all:?}");
    let mut addresses: Vec<String> = all.iter().map(address).collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 3, "each instance its own address: {all:?}");
    for clone in clones {
        let addr = address(clone);
        let id = clone["id"].as_str().unwrap();
        assert_eq!(get(&agent, &addr, "/"), format!("hello from {id}\n"));
        let counted = requests_served(&agent, &addr);
        assert!(
            counted > served,
            "{id} counts on from the snapshot's {served}: {counted}"
        );
    }
}
