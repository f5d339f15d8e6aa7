//! The routes that do not go through typed requests, against the fake supervisor and a
//! [`World`] the tests publish into: an instance's logs (tail, follow until the instance
//! ends), the event stream (since, follow), `/metrics` (the snapshot's numbers and the
//! request counts), and the image routes on a real store (list, inspect, delete refused while
//! a service needs the image, import of a `herd save` tarball). Every answer fits
//! `agent/openapi.json`; every bad parameter is refused naming it. Ids, names and refs that
//! could name a file elsewhere (`..`, `/etc/passwd`, 4000 characters) are refused by shape
//! before anything is looked up, and a console log symlinked out of the instances directory
//! is refused, not read.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use herd::agent::api::routes::Op;
use herd::agent::snapshot::{FleetSnapshot, ServiceSnapshot};
use herd::agent::types::{ErrorBody, EventKind};
use herd::fleet::StartKind;
use serde_json::Value;

use super::fake::{Agent, World};
use super::image_env::Env;
use super::schema::Doc;
use super::{answer_schema, route_of};

/// The operations these tests cover (the others are reached by typed requests).
pub const UNTYPED: [Op; 7] = [
    Op::InstanceLogs,
    Op::Events,
    Op::Metrics,
    Op::ListImages,
    Op::GetImage,
    Op::DeleteImage,
    Op::ImportImages,
];

/// `GET path` answered 200 with `content_type`; the body.
async fn get_ok(agent: &Agent, path: &str, content_type: &str) -> Vec<u8> {
    let answer = agent
        .client()
        .send(Method::GET, path, None, Vec::new())
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK, "{path}: {answer:?}");
    let ct = answer.content_type.unwrap_or_default();
    assert!(ct.starts_with(content_type), "{path}: {ct}");
    answer.body.to_vec()
}

/// `method path` without a body must fail with `status`; see [`refused_with`].
async fn refused(
    agent: &Agent,
    method: Method,
    path: &str,
    status: u16,
    field: Option<&str>,
) -> ErrorBody {
    refused_with(agent, method, path, None, vec![], status, field).await
}

/// Sends a request that must fail with `status`; checks the error is documented and names
/// `field`.
async fn refused_with(
    agent: &Agent,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
    status: u16,
    field: Option<&str>,
) -> ErrorBody {
    let answer = agent
        .client()
        .send(method.clone(), path, content_type, body)
        .await
        .unwrap();
    assert_eq!(
        answer.status.as_u16(),
        status,
        "{method} {path}: {answer:?}"
    );
    let body: ErrorBody = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body.field.as_deref(), field, "{method} {path}: {body:?}");
    let route = route_of(&method, path).unwrap();
    answer_schema(&Doc::load(), route, status).unwrap();
    body
}

/// An import of `body` as `content_type` must fail with `status`.
async fn import_refused(
    agent: &Agent,
    content_type: &str,
    body: Vec<u8>,
    status: u16,
) -> ErrorBody {
    let path = "/v1/images/import";
    refused_with(
        agent,
        Method::POST,
        path,
        Some(content_type),
        body,
        status,
        None,
    )
    .await
}

/// The documented schema of a 200 answer of `content_type`.
fn schema_of(doc: &Doc, method: &Method, path: &str, content_type: &str) -> Value {
    let route = route_of(method, path).unwrap();
    let op = &doc.0["paths"][route.path][route.method.as_str().to_lowercase()];
    let content = &doc.resolve(&op["responses"]["200"])["content"];
    assert!(content[content_type].is_object(), "{path}: {content}");
    content[content_type]["schema"].clone()
}

fn write_log(world: &World, id: &str, name: &str, text: &str) {
    let dir = world.instances_dir.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn live(ids: &[(&str, bool)]) -> FleetSnapshot {
    FleetSnapshot {
        instances: ids.iter().map(|(i, l)| ((*i).to_owned(), *l)).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn logs_give_the_retained_output_its_tail_and_follow_until_the_instance_ends() {
    let agent = Agent::start().await;
    let world = &agent.world;
    // The fake's ended instance.
    write_log(
        world,
        "web-000001b7",
        "console.log.1",
        "probe: boot=pvh\none\n",
    );
    write_log(world, "web-000001b7", "console.log", "two\nthree\n");
    let path = "/v1/instances/web-000001b7/logs";
    let all = get_ok(&agent, path, "text/plain").await;
    assert_eq!(all, b"probe: boot=pvh\none\ntwo\nthree\n");
    let tail = get_ok(&agent, &format!("{path}?tail=2"), "text/plain").await;
    assert_eq!(tail, b"two\nthree\n");
    // Following an instance that already ended gives what is there and ends.
    let followed = get_ok(&agent, &format!("{path}?follow=true&tail=1"), "text/plain").await;
    assert_eq!(followed, b"three\n");

    // The fake's running instance: new output arrives until the snapshot says it ended.
    write_log(world, "web-000002a1", "console.log", "up\n");
    world.publish(live(&[("web-000002a1", true)]));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let client = agent.client();
    let follower = tokio::spawn(async move {
        client
            .stream("/v1/instances/web-000002a1/logs?follow=true", |c| {
                tx.send(c.to_vec()).is_ok()
            })
            .await
    });
    assert_eq!(rx.recv().await.unwrap(), b"up\n");
    write_log(world, "web-000002a1", "console.log", "more\n");
    assert_eq!(rx.recv().await.unwrap(), b"more\n");
    write_log(world, "web-000002a1", "console.log", "last words\n");
    world.publish(live(&[("web-000002a1", false)]));
    let ended = tokio::time::timeout(Duration::from_secs(10), follower).await;
    ended.expect("the stream ends").unwrap().unwrap();
    let mut rest = Vec::new();
    while let Ok(chunk) = rx.try_recv() {
        rest.extend(chunk);
    }
    assert_eq!(rest, b"last words\n");

    refused(
        &agent,
        Method::GET,
        "/v1/instances/web-0000dead/logs",
        404,
        None,
    )
    .await;
    for (query, field) in [
        ("tail=x", "tail"),
        ("tail=-1", "tail"),
        ("follow=yes", "follow"),
        ("lines=3", "lines"),
        ("tail=1&tail=2", "tail"),
    ] {
        let path = format!("{path}?{query}");
        refused(&agent, Method::GET, &path, 400, Some(field)).await;
    }
    agent.stop().await.unwrap();
}

/// Ids, names and refs that would name a file outside the agent's directories if they were
/// joined to one, as they arrive percent-encoded in a path or query.
fn hostile_values() -> Vec<String> {
    let mut values: Vec<String> = [
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e",
        "..",
        "%2Fetc%2Fpasswd",
        "web-000001b7%2F..%2F..%2Fsecret",
        "web-000001b7%00",
    ]
    .map(String::from)
    .to_vec();
    values.push("a".repeat(4000));
    values
}

#[tokio::test]
async fn hostile_ids_names_and_refs_in_paths_get_a_400_naming_the_parameter_and_reach_nothing() {
    let agent = Agent::start().await;
    let json = Some("application/json");
    let spec = br#"{"name":"web","image":"i"}"#.to_vec();
    for v in hostile_values() {
        for (method, path, field) in [
            (Method::GET, format!("/v1/instances/{v}"), "id"),
            (Method::GET, format!("/v1/instances/{v}/logs"), "id"),
            (Method::POST, format!("/v1/instances/{v}/kill"), "id"),
            (Method::GET, format!("/v1/services/{v}"), "name"),
            (Method::DELETE, format!("/v1/services/{v}"), "name"),
            (Method::GET, format!("/v1/images/{v}"), "ref"),
            (Method::DELETE, format!("/v1/images/{v}"), "ref"),
            (Method::GET, format!("/v1/instances?service={v}"), "service"),
        ] {
            let body = refused(&agent, method, &path, 400, Some(field)).await;
            assert!(
                body.error.len() < 300,
                "{path}: the value is not echoed whole"
            );
        }
        let put = format!("/v1/services/{v}");
        refused_with(
            &agent,
            Method::PUT,
            &put,
            json,
            spec.clone(),
            400,
            Some("name"),
        )
        .await;
        let scale = format!("/v1/services/{v}/scale");
        let body = br#"{"replicas":1}"#.to_vec();
        refused_with(&agent, Method::POST, &scale, json, body, 400, Some("name")).await;
    }
    assert_eq!(
        agent.seen(),
        vec![],
        "a hostile value reached the supervisor"
    );
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn console_logs_symlinked_out_of_the_instances_directory_are_refused_unread() {
    let agent = Agent::start().await;
    let instances = agent.world.instances_dir.clone();
    std::fs::create_dir_all(&instances).unwrap();
    let outside = agent.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("console.log"), "SECRET\n").unwrap();
    // The same content inside is served: what is refused below is the way out, not the file.
    write_log(&agent.world, "web-000001b7", "console.log", "SECRET\n");
    let served = get_ok(&agent, "/v1/instances/web-000001b7/logs", "text/plain").await;
    assert_eq!(served, b"SECRET\n");
    // The log file itself leads out.
    let log = instances.join("web-000001b7/console.log");
    std::fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(outside.join("console.log"), &log).unwrap();
    // The instance's directory leads out.
    std::os::unix::fs::symlink(&outside, instances.join("web-000002a1")).unwrap();
    for id in ["web-000001b7", "web-000002a1"] {
        let path = format!("/v1/instances/{id}/logs");
        for query in ["", "?tail=1", "?follow=true"] {
            let path = format!("{path}{query}");
            let body = refused(&agent, Method::GET, &path, 500, None).await;
            assert!(
                body.error.contains(&format!("{id}/console.log"))
                    && body.error.contains("leads outside"),
                "{path}: {body:?}"
            );
            assert!(!body.error.contains("SECRET"), "{path}: {body:?}");
        }
    }
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn events_stream_as_json_lines_from_a_sequence_number_and_follow() {
    let agent = Agent::start().await;
    let doc = Doc::load();
    let events = &agent.world.events;
    events.record("web", None, EventKind::ServiceScaled { replicas: 2 });
    events.record(
        "web",
        Some("web-000002a1"),
        EventKind::InstanceStarted {
            generation: 2,
            start: StartKind::Snapshot,
        },
    );
    events.record("web", Some("web-000002a1"), EventKind::InstanceHealthy);
    let body = get_ok(&agent, "/v1/events?since=1", "application/x-ndjson").await;
    let text = String::from_utf8(body).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["type"], "instance_started");
    assert_eq!(lines[1]["seq"], 3);
    let schema = schema_of(&doc, &Method::GET, "/v1/events", "application/x-ndjson");
    for line in &lines {
        doc.check(&schema, line, "$").unwrap();
    }

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let client = agent.client();
    let follower = tokio::spawn(async move {
        client
            .stream("/v1/events?since=3&follow=true", |c| {
                tx.send(c.to_vec()).is_ok()
            })
            .await
    });
    let kind = EventKind::InstanceExited {
        reason: herd::fleet::EndReason::Exited,
        exit_code: Some(3),
    };
    events.record("web", Some("web-000002a1"), kind);
    let line: Value = serde_json::from_slice(&rx.recv().await.unwrap()).unwrap();
    assert_eq!(
        (line["seq"].as_u64(), line["exit_code"].as_i64()),
        (Some(4), Some(3))
    );
    doc.check(&schema, &line, "$").unwrap();
    // The agent shutting down ends a follower.
    agent.stop().await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), follower).await;
    ended
        .expect("the stream ends at shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn snapshot_events_fit_the_document() {
    let agent = Agent::start().await;
    let doc = Doc::load();
    let events = &agent.world.events;
    let taken = EventKind::SnapshotTaken {
        digest: format!("sha256:{}", "ab".repeat(32)),
        key: "1x128-0123456789abcdef".into(),
        memory_bytes: 9 << 20,
        paused_ms: 12,
        duration_ms: 40,
    };
    events.record("web", Some("web-000002a1"), taken);
    let failed = EventKind::SnapshotFailed {
        key: "1x128-0123456789abcdef".into(),
        error: "herd-vmm did not take the snapshot: no space".into(),
        given_up: false,
    };
    events.record("web", Some("web-000002a1"), failed);
    let removed = EventKind::SnapshotRemoved {
        key: "1x128-0123456789abcdef".into(),
        given_up: true,
    };
    events.record("web", Some("web-000002a1"), removed);
    let body = get_ok(&agent, "/v1/events", "application/x-ndjson").await;
    let text = String::from_utf8(body).unwrap();
    let schema = schema_of(&doc, &Method::GET, "/v1/events", "application/x-ndjson");
    let types: Vec<String> = text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            doc.check(&schema, &v, "$").unwrap();
            v["type"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        types,
        ["snapshot_taken", "snapshot_failed", "snapshot_removed"]
    );
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn bad_event_queries_are_refused_naming_the_parameter() {
    let agent = Agent::start().await;
    for (query, field) in [
        ("since=x", "since"),
        ("follow=1", "follow"),
        ("tail=3", "tail"),
    ] {
        let path = format!("/v1/events?{query}");
        refused(&agent, Method::GET, &path, 400, Some(field)).await;
    }
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_show_the_published_numbers_and_count_requests_by_route() {
    let agent = Agent::start().await;
    let mut snapshot = FleetSnapshot::default();
    snapshot.services.push(ServiceSnapshot {
        name: "web".into(),
        replicas_desired: 3,
        running: 2,
        healthy: 1,
        replacements: 4,
        rollbacks: 1,
        digests: BTreeSet::new(),
    });
    snapshot.counters.instances_started = 9;
    agent.world.publish(snapshot);
    let before = metrics(&agent).await;
    agent.client().health().await.unwrap();
    let _ = agent
        .client()
        .send(Method::GET, "/v1/nope", None, vec![])
        .await;
    let after = metrics(&agent).await;
    let count = |page: &BTreeMap<String, String>, key: &str| -> u64 {
        page.get(key).map_or(0, |v| v.parse().unwrap())
    };
    for key in [
        r#"herd_api_requests_total{route="GET /v1/health",status="200"}"#,
        r#"herd_api_requests_total{route="unmatched",status="404"}"#,
        r#"herd_api_requests_total{route="GET /metrics",status="200"}"#,
    ] {
        assert_eq!(
            count(&after, key),
            count(&before, key) + 1,
            "{key}: {after:?}"
        );
    }
    for (sample, value) in [
        (r#"herd_service_replicas_desired{service="web"}"#, "3"),
        (r#"herd_service_instances_running{service="web"}"#, "2"),
        (r#"herd_service_instances_healthy{service="web"}"#, "1"),
        (r#"herd_service_replacements_total{service="web"}"#, "4"),
        (r#"herd_service_rollbacks_total{service="web"}"#, "1"),
        ("herd_instances_started_total", "9"),
        (r#"herd_instance_exits_total{reason="unhealthy"}"#, "0"),
    ] {
        assert_eq!(
            after.get(sample).map(String::as_str),
            Some(value),
            "{sample}: {after:?}"
        );
    }
    agent.stop().await.unwrap();
}

/// The samples of `/metrics`, by name and labels.
async fn metrics(agent: &Agent) -> BTreeMap<String, String> {
    let body = get_ok(agent, "/metrics", "text/plain; version=0.0.4").await;
    String::from_utf8(body)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// Sends `Content-Length: n` and no body: a refusal must come before the body would.
fn declared_length_answer(socket: &std::path::Path, n: u64) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST /v1/images/import HTTP/1.1\r\nHost: herd\r\nContent-Type: application/x-tar\r\nContent-Length: {n}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut answer = vec![0; 4096];
    let got = s.read(&mut answer).unwrap();
    String::from_utf8_lossy(&answer[..got]).into_owned()
}

/// An agent whose store holds `true:1` (also saved as a tarball): the store's environment,
/// the image's digest and the tarball.
async fn agent_with_an_image() -> (Agent, Env, String, std::path::PathBuf) {
    let env = Env::new();
    let digest = env
        .build(&["--binary", "/usr/bin/true", "--version", "1"])
        .ok()
        .digest();
    let tar = env.path("true.tar");
    env.herd(&["save", "true:1", "-o", tar.to_str().unwrap()])
        .ok();
    let dir = tempfile::tempdir().unwrap();
    let world = World::new(env.home.path(), &dir.path().join("instances"));
    (Agent::start_in(dir, world).await, env, digest, tar)
}

/// A JSON answer checked against the documented schema of `method path`.
fn documented(method: Method, path: &str, body: &[u8]) -> Value {
    let doc = Doc::load();
    let value: Value = serde_json::from_slice(body).unwrap();
    let schema = schema_of(&doc, &method, path, "application/json");
    doc.check(&schema, &value, "$").unwrap();
    value
}

async fn send_ok(
    agent: &Agent,
    method: Method,
    path: &str,
    ct: Option<&str>,
    body: Vec<u8>,
) -> Value {
    let answer = agent
        .client()
        .send(method.clone(), path, ct, body)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK, "{method} {path}: {answer:?}");
    documented(method, path, &answer.body)
}

#[tokio::test]
async fn images_are_listed_inspected_and_removed_unless_a_service_needs_them() {
    let (agent, _env, digest, _) = agent_with_an_image().await;
    let list = send_ok(&agent, Method::GET, "/v1/images", None, vec![]).await;
    assert_eq!(list[0]["reference"], "true:1");
    assert_eq!(list[0]["digest"], digest.as_str());
    let one = send_ok(&agent, Method::GET, "/v1/images/true:1", None, vec![]).await;
    assert_eq!(one["digest"], digest.as_str());
    assert_eq!(one["refs"], serde_json::json!(["true:1"]));
    assert_eq!(one["config"]["name"], "true");

    let mut snapshot = FleetSnapshot::default();
    snapshot.services.push(ServiceSnapshot {
        name: "web".into(),
        digests: BTreeSet::from([digest.clone()]),
        ..Default::default()
    });
    agent.world.publish(snapshot);
    let e = refused(&agent, Method::DELETE, "/v1/images/true:1", 409, None).await;
    assert!(e.error.contains("web"), "{e:?}");
    agent.world.publish(FleetSnapshot::default());
    let removal = send_ok(&agent, Method::DELETE, "/v1/images/true:1", None, vec![]).await;
    assert_eq!(removal["untagged"], serde_json::json!(["true:1"]));
    let empty = send_ok(&agent, Method::GET, "/v1/images", None, vec![]).await;
    assert_eq!(empty, serde_json::json!([]));

    refused(&agent, Method::GET, "/v1/images/nope:1", 404, None).await;
    refused(&agent, Method::DELETE, "/v1/images/nope:1", 404, None).await;
    refused(&agent, Method::GET, "/v1/images/%21%21", 400, Some("ref")).await;
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn an_image_archive_is_imported_and_bad_archives_are_refused() {
    let (agent, env, digest, tar) = agent_with_an_image().await;
    env.herd(&["image", "rm", "true:1"]).ok();
    let archive = std::fs::read(&tar).unwrap();
    let import = "/v1/images/import";
    let ct = Some("application/x-tar");
    let imported = send_ok(&agent, Method::POST, import, ct, archive.clone()).await;
    assert_eq!(imported[0]["reference"], "true:1");
    assert_eq!(imported[0]["digest"], digest.as_str());
    let again = send_ok(&agent, Method::GET, "/v1/images/true:1", None, vec![]).await;
    assert_eq!(again["digest"], digest.as_str());

    let mut damaged = archive.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0xff;
    let e = import_refused(&agent, "application/x-tar", damaged, 400).await;
    assert!(!e.error.contains(".herd-import-"), "no temp paths: {e:?}");
    import_refused(&agent, "application/x-tar", vec![], 400).await;
    import_refused(&agent, "application/json", archive, 415).await;
    // Blocking I/O, off the runtime that serves the agent.
    let socket = agent.socket.clone();
    let too_big = herd::agent::api::images::MAX_IMPORT + 1;
    let answer = tokio::task::spawn_blocking(move || declared_length_answer(&socket, too_big))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    agent.stop().await.unwrap();
}

/// `herd ARGS --socket <agent's>`.
fn herd_cli(agent: &Agent, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_herd"));
    cmd.args(args)
        .arg("--socket")
        .arg(&agent.socket)
        .env_remove("HERD_SOCKET");
    cmd
}

#[tokio::test]
async fn herd_logs_prints_the_output_and_herd_events_follows_one_line_per_event() {
    let agent = Agent::start().await;
    write_log(&agent.world, "web-000001b7", "console.log", "a\nb\nc\n");
    let out = herd_cli(&agent, &["logs", "--tail", "2", "web-000001b7"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"b\nc\n");
    let out = herd_cli(&agent, &["logs", "-f", "web-0000dead"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(66), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("instance \"web-0000dead\" does not exist"),
        "{stderr}"
    );

    use tokio::io::AsyncBufReadExt as _;
    let events = &agent.world.events;
    events.record("web", None, EventKind::ServiceScaled { replicas: 2 });
    for json in [false, true] {
        let args: &[&str] = if json {
            &["events", "--json"]
        } else {
            &["events"]
        };
        let mut child = herd_cli(&agent, args)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut next = async || {
            let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line());
            line.await.expect("a line in time").unwrap().unwrap()
        };
        let first = next().await;
        // Followed: an event recorded now arrives too.
        let started = EventKind::InstanceStarted {
            generation: 2,
            start: StartKind::Boot,
        };
        events.record("web", Some("web-000002a1"), started);
        let second = next().await;
        if json {
            let v: Value = serde_json::from_str(&first).unwrap();
            assert_eq!(
                (v["seq"].as_u64(), v["type"].as_str()),
                (Some(1), Some("service_scaled"))
            );
            let v: Value = serde_json::from_str(&second).unwrap();
            assert_eq!(v["instance"], "web-000002a1");
        } else {
            let words: Vec<&str> = first.split_whitespace().collect();
            assert_eq!(
                words[1..],
                ["1", "service_scaled", "web", "-", "replicas=2"],
                "{first}"
            );
            let words: Vec<&str> = second.split_whitespace().collect();
            assert_eq!(
                words[1..],
                [
                    "2",
                    "instance_started",
                    "web",
                    "web-000002a1",
                    "generation=2",
                    "start=boot"
                ],
                "{second}"
            );
        }
        child.kill().await.unwrap();
    }
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_follower_whose_client_left_stops_following() {
    let agent = Agent::start().await;
    let socket = agent.socket.clone();
    let (hang_up, hung_up) = std::sync::mpsc::channel::<()>();
    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    // A raw client that reads the answer's head, then hangs up while nothing happens.
    let client = tokio::task::spawn_blocking(move || {
        let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let request = "GET /v1/events?follow=true HTTP/1.1\r\nHost: herd\r\n\r\n";
        s.write_all(request.as_bytes()).unwrap();
        let mut head = vec![0; 1024];
        let n = s.read(&mut head).unwrap();
        let _ = head_tx.send(String::from_utf8_lossy(&head[..n]).into_owned());
        let _ = hung_up.recv();
    });
    let head = head_rx.await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let events = &agent.world.events;
    let wait = async |want: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while events.followers() != want {
            assert!(std::time::Instant::now() < deadline, "followers != {want}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait(1).await;
    hang_up.send(()).unwrap();
    client.await.unwrap();
    wait(0).await;
    agent.stop().await.unwrap();
}
