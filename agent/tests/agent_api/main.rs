//! The agent's API end to end through its Unix socket, with a fake supervisor behind it:
//! `agent/openapi.json` lists exactly the routes served and describes every answer; typed
//! requests arrive at the supervisor as the client sent them; 50 clients are served at once;
//! every bad request gets a 4xx JSON error naming its field and never reaches the
//! supervisor; the socket path is taken over safely; and the `herd` CLI prints tables, JSON
//! and API errors. The logs, events, metrics and image routes are in `observe`.

mod fake;
#[path = "../image_env/mod.rs"]
mod image_env;
mod observe;
mod schema;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use fake::Agent;
use herd::agent::api::{self, ApiError, ROUTES, Route, encode};
use herd::agent::client::{Answer, ClientError};
use herd::agent::types::{ErrorBody, Request};
use schema::Doc;
use serde_json::{Value, json};

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The route whose template matches `method` and the concrete `path` (query ignored).
fn route_of(method: &Method, path: &str) -> Option<&'static Route> {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    ROUTES.iter().find(|r| {
        let template: Vec<&str> = r.path.split('/').collect();
        r.method == *method
            && template.len() == segments.len()
            && template
                .iter()
                .zip(&segments)
                .all(|(t, s)| t == s || (t.starts_with('{') && !s.is_empty()))
    })
}

/// The documented schema of `route`'s answer with `status`, or why there is none.
fn answer_schema<'a>(doc: &'a Doc, route: &Route, status: u16) -> Result<&'a Value, String> {
    let op = &doc.0["paths"][route.path][route.method.as_str().to_lowercase()];
    let responses = op["responses"].as_object().ok_or("no responses")?;
    let response = responses
        .get(&status.to_string())
        .or_else(|| responses.get("default").filter(|_| status >= 400))
        .ok_or_else(|| format!("{status} is not documented for {route:?}"))?;
    let response = doc.resolve(response);
    Ok(&response["content"]["application/json"]["schema"])
}

#[test]
fn the_openapi_document_lists_exactly_the_routes_served() {
    let doc = Doc::load();
    assert_eq!(doc.0["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in doc.0["paths"].as_object().unwrap() {
        for (key, op) in item.as_object().unwrap() {
            if METHODS.contains(&key.as_str()) {
                documented.insert((key.to_uppercase(), path.clone()));
                assert!(op["responses"].is_object(), "{key} {path} has no responses");
            }
        }
    }
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_owned()))
        .collect();
    assert_eq!(documented, served);
}

/// Every `$ref` in the document points at something.
#[test]
fn every_reference_in_the_openapi_document_resolves() {
    fn walk(doc: &Doc, v: &Value, count: &mut usize) {
        match v {
            Value::Object(map) => {
                if map.contains_key("$ref") {
                    doc.resolve(v);
                    *count += 1;
                }
                map.values().for_each(|v| walk(doc, v, count));
            }
            Value::Array(list) => list.iter().for_each(|v| walk(doc, v, count)),
            _ => {}
        }
    }
    let doc = Doc::load();
    let mut count = 0;
    walk(&doc, &doc.0, &mut count);
    assert!(count > 20, "only {count} references");
}

/// What the CLI sends fits the documented request schemas, defaults and all.
#[test]
fn request_bodies_fit_the_documented_schemas() {
    let doc = Doc::load();
    let spec_schema = json!({"$ref": "#/components/schemas/ServiceSpec"});
    let minimal: herd::fleet::ServiceSpec =
        serde_json::from_value(json!({"name": "a", "image": "i"})).unwrap();
    let mut full = fake::web_spec();
    full.args = Some(vec!["--port".into(), "80".into()]);
    full.vcpus = Some(2);
    full.memory_mib = Some(256);
    for spec in [minimal, full] {
        let value = serde_json::to_value(&spec).unwrap();
        doc.check(&spec_schema, &value, "$").unwrap();
    }
    let scale = serde_json::to_value(api::routes::ScaleBody { replicas: 3 }).unwrap();
    let scale_schema = json!({"$ref": "#/components/schemas/ScaleRequest"});
    doc.check(&scale_schema, &scale, "$").unwrap();
}

/// One valid request per route (but health), with what the fake answers.
fn sample_requests() -> Vec<Request> {
    let mut other = fake::web_spec();
    other.name = "api".into();
    vec![
        Request::ListServices,
        Request::CreateService(other),
        Request::GetService { name: "web".into() },
        Request::UpdateService(fake::web_spec()),
        Request::ScaleService {
            name: "web".into(),
            replicas: 5,
        },
        Request::DeleteService { name: "web".into() },
        Request::ListInstances { service: None },
        Request::ListInstances {
            service: Some("web".into()),
        },
        Request::GetInstance {
            id: "web-000002a1".into(),
        },
        Request::KillInstance {
            id: "web-000001b7".into(),
        },
    ]
}

#[tokio::test]
async fn typed_requests_reach_the_supervisor_as_sent_and_answers_fit_the_document() {
    let agent = Agent::start().await;
    let doc = Doc::load();
    let client = agent.client();
    let mut routes_hit = BTreeSet::new();
    let health = client.health().await.unwrap();
    assert_eq!(health.status, "ok");
    routes_hit.insert("/v1/health GET".to_owned());
    for request in sample_requests() {
        // The typed client decodes each answer into the view that request expects.
        let response = client.call(&request).await.unwrap();
        assert_eq!(Ok(response), fake::answer(request.clone()), "{request:?}");
        // The raw answer fits the document.
        let call = encode(&request);
        let ct = call.body.as_ref().map(|_| "application/json");
        let answer = client
            .send(
                call.method.clone(),
                &call.path,
                ct,
                call.body.unwrap_or_default(),
            )
            .await
            .unwrap();
        let route = route_of(&call.method, &call.path).unwrap();
        routes_hit.insert(format!("{} {}", route.path, route.method));
        assert!(answer.status.is_success(), "{request:?}: {answer:?}");
        if answer.status != StatusCode::NO_CONTENT {
            let schema = answer_schema(&doc, route, answer.status.as_u16()).unwrap();
            let body: Value = serde_json::from_slice(&answer.body).unwrap();
            doc.check(schema, &body, "$")
                .unwrap_or_else(|e| panic!("{request:?}: {e}"));
        }
    }
    let typed: BTreeSet<String> = ROUTES
        .iter()
        .filter(|r| !observe::UNTYPED.contains(&r.op))
        .map(|r| format!("{} {}", r.path, r.method))
        .collect();
    assert_eq!(routes_hit, typed);
    // Each request arrived twice (typed, then raw), decoded exactly as sent.
    let sent: Vec<Request> = sample_requests()
        .into_iter()
        .flat_map(|r| [r.clone(), r])
        .collect();
    assert_eq!(agent.seen(), sent);
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn fifty_clients_are_served_at_once() {
    const CLIENTS: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("herd.sock");
    // The supervisor answers nobody until all 50 requests are waiting: served one at a time,
    // the first would never get its answer.
    let (served, stop, seen) = fake::serve(socket.clone(), Some(CLIENTS)).await;
    let client = herd::agent::client::Client::new(&socket);
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let request = if i % 2 == 0 {
                    Request::ListServices
                } else {
                    Request::ListInstances { service: None }
                };
                client.call(&request).await
            })
        })
        .collect();
    let all = async {
        for task in tasks {
            task.await.unwrap().unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("all 50 clients answered");
    assert_eq!(seen.lock().unwrap().len(), CLIENTS);
    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
}

const JSON: Option<&str> = Some("application/json");

/// A request that must be refused: what is sent, the status and `field` expected.
struct Bad {
    method: Method,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    field: Option<&'static str>,
}

fn bad(
    method: Method,
    path: &'static str,
    body: &str,
    status: u16,
    field: Option<&'static str>,
) -> Bad {
    Bad {
        method,
        path,
        content_type: JSON,
        body: body.as_bytes().to_vec(),
        status,
        field,
    }
}

fn bad_requests() -> Vec<Bad> {
    use Method as M;
    let create = |body: &str, field| bad(M::POST, "/v1/services", body, 400, field);
    vec![
        create(r#"{"name":"a","image":"i","replica":3}"#, Some("replica")),
        create(
            r#"{"name":"a","image":"i","restart":{"initial":1}}"#,
            Some("restart.initial"),
        ),
        create(
            r#"{"name":"a","image":"i","replicas":5000}"#,
            Some("replicas"),
        ),
        create(r#"{"name":"Web","image":"i"}"#, Some("name")),
        create(
            r#"{"name":"a","image":"i","env":{"A-B":"1"}}"#,
            Some("env.A-B"),
        ),
        create(
            r#"{"name":"a","image":"i","health_check":{"tcp":{"port":0}}}"#,
            Some("health_check.tcp.port"),
        ),
        create(
            r#"{"name":"a","image":"i","replicas":"3"}"#,
            Some("replicas"),
        ),
        create(r#"{"name":1,"image":"i"}"#, Some("name")),
        create(
            r#"{"name":"a","image":"i","args":["x",2]}"#,
            Some("args[1]"),
        ),
        create(
            r#"{"name":"a","image":"i","network":"host"}"#,
            Some("network"),
        ),
        create(r#"{"name":"a"}"#, Some("image")),
        create(r#"{"name":"#, None),
        create("", None),
        create(r#"["a","i"]"#, None),
        create(r#"{"name":"a","image":"i"} trailing"#, None),
        Bad {
            content_type: Some("text/plain"),
            status: 415,
            ..create(r#"{"name":"a","image":"i"}"#, None)
        },
        Bad {
            content_type: None,
            status: 415,
            ..create(r#"{"name":"a","image":"i"}"#, None)
        },
        Bad {
            body: format!(r#"{{"name":"a","image":"{}"}}"#, "x".repeat(api::MAX_BODY)).into_bytes(),
            status: 413,
            ..create("", None)
        },
        bad(
            M::PUT,
            "/v1/services/web",
            r#"{"name":"api","image":"i"}"#,
            400,
            Some("name"),
        ),
        bad(
            M::PUT,
            "/v1/services/web",
            r#"{"name":"web","image":"i","vcpus":0}"#,
            400,
            Some("vcpus"),
        ),
        bad(
            M::POST,
            "/v1/services/web/scale",
            r#"{"replicas":2,"x":1}"#,
            400,
            Some("x"),
        ),
        bad(
            M::POST,
            "/v1/services/web/scale",
            r#"{"replicas":-1}"#,
            400,
            Some("replicas"),
        ),
        bad(
            M::POST,
            "/v1/services/web/scale",
            r#"{"replicas":5000}"#,
            400,
            Some("replicas"),
        ),
        bad(
            M::POST,
            "/v1/services/web/scale",
            r#"{}"#,
            400,
            Some("replicas"),
        ),
        bad(M::GET, "/v1/instances?svc=web", "", 400, Some("svc")),
        bad(
            M::GET,
            "/v1/instances?service=a&service=b",
            "",
            400,
            Some("service"),
        ),
        bad(M::GET, "/v1/services/%FF", "", 400, None),
        bad(M::GET, "/v1/nope", "", 404, None),
        bad(M::GET, "/", "", 404, None),
        bad(M::GET, "/v2/services", "", 404, None),
        bad(M::GET, "/v1/services/web/", "", 404, None),
        bad(M::DELETE, "/v1/services", "", 405, None),
        bad(M::PATCH, "/v1/services/web", "", 405, None),
        bad(M::GET, "/v1/instances/web-000002a1/kill", "", 405, None),
        bad(M::POST, "/v1/health", "", 405, None),
    ]
}

#[tokio::test]
async fn bad_requests_get_a_json_error_naming_the_field_and_never_reach_the_supervisor() {
    let agent = Agent::start().await;
    let doc = Doc::load();
    let client = agent.client();
    for b in bad_requests() {
        let what = format!(
            "{} {} {:.80}",
            b.method,
            b.path,
            String::from_utf8_lossy(&b.body)
        );
        let answer: Answer = client
            .send(b.method.clone(), b.path, b.content_type, b.body)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(answer.status.as_u16(), b.status, "{what}: {answer:?}");
        assert_eq!(
            answer.content_type.as_deref(),
            Some("application/json"),
            "{what}"
        );
        let body: ErrorBody = serde_json::from_slice(&answer.body)
            .unwrap_or_else(|e| panic!("{what}: not an ErrorBody ({e}): {answer:?}"));
        assert_eq!(body.field.as_deref(), b.field, "{what}: {body:?}");
        assert!(!body.error.is_empty(), "{what}");
        if let Some(route) = route_of(&b.method, b.path) {
            answer_schema(&doc, route, b.status).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
    }
    assert_eq!(agent.seen(), vec![], "a bad request reached the supervisor");
    // What only the supervisor can refuse comes back the same way.
    for (request, status) in [
        (
            Request::GetService {
                name: "nope".into(),
            },
            404,
        ),
        (Request::CreateService(fake::web_spec()), 409),
        (
            Request::KillInstance {
                id: "web-0000dead".into(),
            },
            404,
        ),
    ] {
        match agent.client().call(&request).await {
            Err(ClientError::Api { status: s, body }) => {
                assert_eq!(s, status, "{body:?}");
                assert_eq!(body.field, None);
            }
            other => panic!("{request:?}: {other:?}"),
        }
    }
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn the_socket_is_0660_and_removed_on_shutdown() {
    let agent = Agent::start().await;
    let socket = agent.socket.clone();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, api::SOCKET_MODE);
    let dir = agent.dir.path().to_owned();
    agent.stop().await.unwrap();
    assert!(!socket.exists(), "socket left in {}", dir.display());
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_live_one_or_a_file_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("herd.sock");
    // A socket file nothing listens on, as a killed agent leaves it.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let (served, stop, _) = fake::serve(socket.clone(), None).await;
    assert!(!served.is_finished(), "the stale socket was not replaced");
    herd::agent::client::Client::new(&socket)
        .health()
        .await
        .unwrap();
    // A second agent on the same path is refused, naming it, and the first keeps serving.
    let backend =
        fake::World::in_dir(dir.path()).backend(herd::agent::dispatch::Dispatcher::channel().0);
    match api::serve(&socket, api::Access::default(), backend, async {}).await {
        Err(e @ ApiError::InUse { .. }) => {
            assert!(e.to_string().contains(socket.to_str().unwrap()), "{e}");
        }
        other => panic!("{other:?}"),
    }
    herd::agent::client::Client::new(&socket)
        .health()
        .await
        .unwrap();
    stop.send(()).unwrap();
    served.await.unwrap().unwrap();
    // Something that is not a socket is never deleted.
    std::fs::write(&socket, "precious").unwrap();
    let refused = api::bind(&socket, None).await.unwrap_err();
    assert!(matches!(refused, ApiError::NotSocket { .. }), "{refused:?}");
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "precious");
}

mod cli;
