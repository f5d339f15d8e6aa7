//! End-to-end: watching a real `herd agent` supervise real herd-vmm processes. A herd-vmm
//! killed under a service shows in the event stream (started, exited, replaced, started
//! again, in order) and in `/metrics`; `herd logs` gives an instance's console output, and
//! `herd logs -f` ends when its instance does; the image routes work on the agent's store
//! and refuse to remove an image a service runs. Runs on any KVM host, PVM included.

mod common;

use std::time::Duration;

use common::{Agent, HALT, Lines, ids, kill_pid, pid_of, service};
use serde_json::Value;

/// Events from `lines` (the `--json` stream) until `done` holds for one; all of them.
fn events_until(lines: &mut Lines, agent: &Agent, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let Some(line) = lines.next(Duration::from_secs(60)) else {
            panic!(
                "the event stream ended or stalled: {seen:#?}\n{}",
                agent.log()
            );
        };
        let event: Value = serde_json::from_str(&line).unwrap();
        let last = done(&event);
        seen.push(event);
        if last {
            return seen;
        }
    }
}

fn is(event: &Value, kind: &str, instance: &str) -> bool {
    event["type"] == kind && event["instance"] == instance
}

/// The sample `name` of the `/metrics` page, as text.
fn sample<'a>(page: &'a str, name: &str) -> Option<&'a str> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
}

#[test]
fn a_replacement_shows_in_events_metrics_and_logs() {
    let Some(agent) = Agent::new("agent observe tests") else {
        return;
    };
    let image = agent.probe_image("1", HALT);
    let mut events = agent.follow(&["events", "--json"]);
    let (status, created) = agent.api("POST", "/v1/services", Some(&service("web", &image, 2)));
    assert_eq!(status, 201, "{created}");
    agent.wait_for("2 instances", || agent.running("web").len() == 2);
    let first = agent.running("web");
    let victim = first[0]["id"].as_str().unwrap().to_owned();

    // The probe's report, from its console log.
    agent.wait_for("the probe's output in herd logs", || {
        let out = agent.herd().args(["logs", &victim]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).contains("probe: boot=pvh")
    });
    let mut follower = agent.follow(&["logs", "-f", &victim]);
    let line = follower
        .next(Duration::from_secs(30))
        .expect("logs -f prints");
    assert!(line.starts_with("probe: "), "{line}");

    kill_pid(pid_of(&first[0]));
    let (status, _) = follower.wait(Duration::from_secs(30));
    assert!(
        status.success(),
        "herd logs -f ends with its instance: {status}"
    );
    agent.wait_for("a replacement", || {
        let now = agent.running("web");
        now.len() == 2 && !ids(&now).contains(&victim)
    });

    let seen = events_until(&mut events, &agent, |e| {
        e["type"] == "instance_started" && !first.iter().any(|i| i["id"] == e["instance"])
    });
    check_replacement_events(&seen, &victim);
    check_replacement_metrics(&agent);

    // The ended instance's log is still there.
    let out = agent.herd().args(["logs", &victim]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("probe: boot=pvh"));
}

#[test]
fn images_of_the_agents_store_are_listed_protected_while_used_and_imported() {
    let Some(agent) = Agent::new("agent observe tests") else {
        return;
    };
    let image = agent.probe_image("1", HALT);
    let (status, created) = agent.api("POST", "/v1/services", Some(&service("web", &image, 1)));
    assert_eq!(status, 201, "{created}");
    let digest = created["digest"].as_str().unwrap();
    let (_, list) = agent.api("GET", "/v1/images", None);
    assert_eq!(list[0]["reference"], "probe-app:1", "{list}");
    let (status, one) = agent.api("GET", "/v1/images/probe-app:1", None);
    assert_eq!((status, one["digest"].as_str()), (200, Some(digest)));
    let (status, refused) = agent.api("DELETE", "/v1/images/probe-app:1", None);
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("web"),
        "{refused}"
    );

    // An image no service uses goes, and comes back from a `herd save` tarball.
    agent.probe_image("2", HALT);
    let tar = agent.home.path().join("v2.tar");
    let saved = agent
        .herd()
        .args(["save", "probe-app:2", "-o"])
        .arg(&tar)
        .output()
        .unwrap();
    assert!(saved.status.success(), "{saved:?}");
    let (status, removed) = agent.api("DELETE", "/v1/images/probe-app:2", None);
    assert_eq!(status, 200, "{removed}");
    assert_eq!(removed["untagged"], serde_json::json!(["probe-app:2"]));
    let answer = agent.request(
        "POST",
        "/v1/images/import",
        Some("application/x-tar"),
        &common::read(&tar),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    let imported: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(imported[0]["reference"], "probe-app:2", "{imported}");
    let (status, _) = agent.api("GET", "/v1/images/probe-app:2", None);
    assert_eq!(status, 200);
}

/// `seen`, from the start: the service created, `victim` started, then it exited (killed by
/// a signal), then it was replaced, then (last) its replacement started; numbered in order.
fn check_replacement_events(seen: &[Value], victim: &str) {
    let position = |kind: &str| {
        seen.iter()
            .position(|e| is(e, kind, victim))
            .unwrap_or_else(|| panic!("no {kind} of {victim}: {seen:#?}"))
    };
    assert_eq!(seen[0]["type"], "service_created", "{seen:#?}");
    let exited = position("instance_exited");
    assert!(position("instance_started") < exited);
    assert_eq!(seen[exited]["reason"], "exited");
    assert_eq!(seen[exited]["exit_code"], Value::Null, "killed by a signal");
    let replaced = position("instance_replaced");
    assert!(exited < replaced && replaced < seen.len() - 1, "{seen:#?}");
    let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

/// `/metrics` after one replacement in a service of 2.
fn check_replacement_metrics(agent: &Agent) {
    let page = agent.request("GET", "/metrics", None, b"");
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/plain; version=0.0.4"));
    let metric = |name| sample(&page.body, name).unwrap_or_else(|| panic!("{name}\n{}", page.body));
    assert_eq!(
        metric(r#"herd_service_replacements_total{service="web"}"#),
        "1"
    );
    assert_eq!(
        metric(r#"herd_service_instances_running{service="web"}"#),
        "2"
    );
    assert_eq!(
        metric(r#"herd_service_replicas_desired{service="web"}"#),
        "2"
    );
    assert_eq!(metric(r#"herd_instance_exits_total{reason="exited"}"#), "1");
    assert_eq!(metric("herd_instances_started_total"), "3");
}
