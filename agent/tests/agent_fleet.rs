//! End-to-end: the real `herd agent` supervising real herd-vmm processes. Images boot the
//! probe guest, which halts and stays up (or exits at once, for crash loops), so this runs on
//! any KVM host, PVM included. Each test runs its agent inside a network namespace it
//! creates, so the agent's bridge and TAPs live and die there.

mod common;

use common::{Agent, HALT, ids, kill_pid, pid_of, service};
use serde_json::{Value, json};

#[test]
fn a_service_comes_up_and_a_killed_vmm_is_replaced_at_once() {
    let Some(agent) = Agent::new("agent fleet tests") else {
        return;
    };
    let image = agent.probe_image("1", HALT);
    let (status, created) = agent.api("POST", "/v1/services", Some(&service("web", &image, 3)));
    assert_eq!(status, 201, "{created}");
    assert!(created["digest"].as_str().unwrap().starts_with("sha256:"));
    agent.wait_for("3 healthy instances", || agent.running("web").len() == 3);
    let first = agent.running("web");
    let mut addresses: Vec<&str> = first
        .iter()
        .map(|i| i["address"].as_str().unwrap())
        .collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 3, "{first:?}");
    assert!(
        addresses
            .iter()
            .all(|a| a.starts_with("172.31.0.") && a.ends_with("/24"))
    );
    assert_eq!(agent.taps().len(), 3);

    let victim = &first[0];
    assert!(kill_pid(pid_of(victim)));
    agent.wait_for("a replacement", || {
        let now = agent.running("web");
        now.len() == 3 && !ids(&now).contains(&victim["id"].as_str().unwrap().to_owned())
    });
    let (_, gone) = agent.api(
        "GET",
        &format!("/v1/instances/{}", victim["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(gone["status"], "exited");
    assert_eq!(gone["end"]["reason"], "exited");
    let (_, svc) = agent.api("GET", "/v1/services/web", None);
    assert_eq!(svc["replacements"], 1, "{svc}");
    assert_eq!(
        agent.taps().len(),
        3,
        "the dead instance's TAP is gone, the new one is there"
    );
}

#[test]
fn an_agent_killed_with_sigkill_adopts_its_instances_on_restart() {
    let Some(mut agent) = Agent::new("agent fleet tests") else {
        return;
    };
    let image = agent.probe_image("1", HALT);
    agent.api("POST", "/v1/services", Some(&service("web", &image, 2)));
    agent.wait_for("2 instances", || agent.running("web").len() == 2);
    let before = agent.running("web");
    agent.kill_agent();
    agent.start();
    let after = agent.running("web");
    assert_eq!(ids(&after), ids(&before), "no instance restarted or lost");
    let pids = |v: &[Value]| {
        let mut p: Vec<i32> = v.iter().map(pid_of).collect();
        p.sort();
        p
    };
    assert_eq!(pids(&after), pids(&before));
    // Adopted processes are watched like the agent's own children.
    assert!(kill_pid(pid_of(&after[0])));
    agent.wait_for("a replacement of an adopted instance", || {
        let now = agent.running("web");
        now.len() == 2 && ids(&now) != ids(&before)
    });
}

#[test]
fn scaling_down_and_removing_a_service_stop_instances_and_remove_their_taps() {
    let Some(agent) = Agent::new("agent fleet tests") else {
        return;
    };
    let image = agent.probe_image("1", HALT);
    agent.api("POST", "/v1/services", Some(&service("web", &image, 3)));
    agent.wait_for("3 instances", || agent.running("web").len() == 3);
    let (status, scaled) = agent.api(
        "POST",
        "/v1/services/web/scale",
        Some(&json!({"replicas": 1})),
    );
    assert_eq!(status, 200, "{scaled}");
    agent.wait_for("2 stopped", || {
        let all = agent.instances("web");
        all.iter().filter(|i| i["status"] == "exited").count() == 2
    });
    let stopped: Vec<Value> = agent
        .instances("web")
        .into_iter()
        .filter(|i| i["status"] == "exited")
        .collect();
    assert!(
        stopped.iter().all(|i| i["end"]["reason"] == "stopped"),
        "{stopped:?}"
    );
    assert_eq!(agent.running("web").len(), 1);
    assert_eq!(agent.taps().len(), 1);
    let (status, _) = agent.api("DELETE", "/v1/services/web", None);
    assert!(status == 200 || status == 204, "{status}");
    agent.wait_for("every instance stopped", || agent.running("web").is_empty());
    agent.wait_for("the TAPs removed", || agent.taps().is_empty());
    let (status, _) = agent.api("GET", "/v1/services/web", None);
    assert_eq!(status, 404);
    // With nothing left running, a stopped agent leaves no bridge behind.
    assert!(agent.has_link("herd0"));
    let mut agent = agent;
    assert!(agent.stop_agent(), "{}", agent.log());
    assert!(!agent.has_link("herd0"), "{}", agent.log());
}

#[test]
fn a_crash_looping_service_backs_off_and_says_so() {
    let Some(agent) = Agent::new("agent fleet tests") else {
        return;
    };
    // The probe exits at once with status 3: every instance fails.
    let image = agent.probe_image("crash", "console=ttyS0 exit=3");
    let mut spec = service("crashy", &image, 1);
    spec["restart"] = json!({"initial_ms": 400, "max_ms": 5000});
    spec["network"] = json!("none");
    agent.api("POST", "/v1/services", Some(&spec));
    agent.wait_for("a crash loop", || {
        let (_, s) = agent.api("GET", "/v1/services/crashy", None);
        s["crash_looping"] == true && s["replacements"].as_u64().unwrap() >= 3
    });
    let ended: Vec<Value> = agent
        .instances("crashy")
        .into_iter()
        .filter(|i| i["status"] == "exited")
        .collect();
    assert!(
        ended
            .iter()
            .all(|i| i["end"]["exit_code"] == 3 && i["end"]["reason"] == "exited"),
        "{ended:?}"
    );
    // Starts are spaced out: 3 failures take at least 0 + 400 + 800 ms.
    let started: Vec<u64> = {
        let mut s: Vec<u64> = ended
            .iter()
            .map(|i| i["started_at_ms"].as_u64().unwrap())
            .collect();
        s.sort();
        s
    };
    assert!(started.len() >= 3);
    assert!(started[2] - started[1] >= 400, "{started:?}");
}

/// The probe stays up and answers vsock health checks on port 5000 (`probe.end=serve`);
/// `PROBE_HEALTH` in the instance env makes it fail them.
const SERVE: &str = "console=ttyS0 probe.end=serve";

fn checked_service(name: &str, image: &str, replicas: u32) -> Value {
    let mut spec = service(name, image, replicas);
    spec["network"] = json!("none");
    spec["health_check"] = json!({"vsock": {"port": 5000}, "interval_ms": 200, "timeout_ms": 150,
        "failure_threshold": 2, "grace_ms": 3000});
    spec
}

#[test]
fn an_instance_failing_its_health_check_is_killed_and_replaced() {
    let Some(agent) = Agent::new("agent fleet tests") else {
        return;
    };
    let image = agent.probe_image("serve", SERVE);
    let mut spec = checked_service("web", &image, 1);
    // Two checks pass (the instance turns healthy), then every check fails.
    spec["env"] = json!({"PROBE_HEALTH": "fail-after:2"});
    agent.api("POST", "/v1/services", Some(&spec));
    agent.wait_for("an instance killed as unhealthy", || {
        agent
            .instances("web")
            .iter()
            .any(|i| i["end"]["reason"] == "unhealthy")
    });
    let all = agent.instances("web");
    assert!(all.len() >= 2, "a replacement was started: {all:?}");
    let (_, svc) = agent.api("GET", "/v1/services/web", None);
    assert!(svc["replacements"].as_u64().unwrap() >= 1, "{svc}");
}

#[test]
fn a_rolling_update_keeps_enough_healthy_and_a_version_that_never_turns_healthy_rolls_back() {
    let Some(agent) = Agent::new("agent fleet tests") else {
        return;
    };
    let v1 = agent.probe_image("1", SERVE);
    let v2 = agent.probe_image("2", &format!("{SERVE} v=2"));
    agent.api(
        "POST",
        "/v1/services",
        Some(&checked_service("web", &v1, 3)),
    );
    let healthy = || {
        let (_, s) = agent.api("GET", "/v1/services/web", None);
        s
    };
    agent.wait_for("3 healthy on v1", || healthy()["healthy"] == 3);

    // Good update: never fewer than 3 healthy (max_unavailable 0), ends all on generation 2.
    let (status, updated) = agent.api(
        "PUT",
        "/v1/services/web",
        Some(&checked_service("web", &v2, 3)),
    );
    assert_eq!(status, 200, "{updated}");
    let v2_digest = updated["digest"].as_str().unwrap().to_owned();
    let mut fewest = u64::MAX;
    agent.wait_for("the rollout to v2", || {
        let s = healthy();
        fewest = fewest.min(s["healthy"].as_u64().unwrap());
        s["rolling_out_from"].is_null()
            && agent
                .running("web")
                .iter()
                .all(|i| i["digest"] == v2_digest.as_str())
    });
    assert!(
        fewest >= 3,
        "healthy dropped to {fewest} during the rollout"
    );

    // Bad update: its instances never pass a check; after 3 failures the service goes back.
    let mut bad = checked_service("web", &v2, 3);
    bad["env"] = json!({"PROBE_HEALTH": "fail"});
    let serving = ids(&agent.running("web"));
    agent.api("PUT", "/v1/services/web", Some(&bad));
    let mut fewest = u64::MAX;
    agent.wait_for("the rollback", || {
        let s = healthy();
        fewest = fewest.min(s["healthy"].as_u64().unwrap());
        s["generation"] == 2 && s["rolling_out_from"].is_null() && agent.running("web").len() == 3
    });
    assert_eq!(
        ids(&agent.running("web")),
        serving,
        "the v2 instances were never touched"
    );
    assert!(
        fewest >= 3,
        "healthy dropped to {fewest} during the failed rollout"
    );
    let s = healthy();
    assert_eq!(s["digest"], v2_digest.as_str());
    assert!(s["spec"]["env"].as_object().unwrap().is_empty(), "{s}");
    let failed = agent
        .instances("web")
        .into_iter()
        .filter(|i| i["generation"] == 3)
        .count();
    assert!(failed >= 3, "the bad version was tried: {failed}");
}

/// On hardware KVM: the `http` example app as a service with HTTP health checks over the
/// agent's bridge, answering curl from the namespace, and a killed instance replaced.
#[test]
fn http_service_with_http_checks_serves_curl_and_heals_on_hardware_kvm() {
    let test = "http_service_with_http_checks_serves_curl_and_heals_on_hardware_kvm";
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
    let mut spec = service("web", &image, 2);
    spec["env"] = json!({"PORT": "8080"});
    spec["health_check"] = json!({"http": {"port": 8080, "path": "/healthz"}, "interval_ms": 200,
        "timeout_ms": 150, "failure_threshold": 3, "grace_ms": 10000});
    agent.api("POST", "/v1/services", Some(&spec));
    let healthy = || {
        agent
            .running("web")
            .iter()
            .filter(|i| i["status"] == "healthy")
            .count()
    };
    agent.wait_for("2 healthy http instances", || healthy() == 2);
    for instance in agent.running("web") {
        let addr = instance["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let out = agent.ns.run(&[
            "curl",
            "-sf",
            "--max-time",
            "2",
            &format!("http://{addr}:8080/healthz"),
        ]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n", "{instance}");
    }
    let before = agent.running("web");
    assert!(kill_pid(pid_of(&before[0])));
    agent.wait_for("a healthy replacement", || {
        let now = agent.running("web");
        healthy() == 2 && ids(&now) != ids(&before)
    });
}
