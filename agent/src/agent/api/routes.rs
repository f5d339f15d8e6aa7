//! The API's routes as one table, `ROUTES`, that the router is built from and the OpenAPI test
//! compares with `agent/openapi.json`, so the three cannot drift apart silently; and the
//! client's side of the same mapping, [`encode`], which turns a typed [`Request`] into the
//! method, path and body the router decodes back into it.

use axum::http::Method;
use serde::{Deserialize, Serialize};

use crate::agent::types::Request;

/// What a route does; the router picks the handler by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Agent liveness, answered without the supervisor.
    Health,
    ListServices,
    CreateService,
    GetService,
    UpdateService,
    ScaleService,
    DeleteService,
    ListInstances,
    GetInstance,
    /// `POST .../kill` rather than `DELETE`: the instance is not removed, it is stopped and
    /// replaced, and its record (with how it ended) stays visible for a while.
    KillInstance,
    /// The console output as text, optionally followed.
    InstanceLogs,
    /// The event stream, one JSON object per line.
    Events,
    /// Prometheus text; unversioned, where scrapers look.
    Metrics,
    ListImages,
    GetImage,
    DeleteImage,
    /// The body is an OCI image layout tarball (what `herd save` writes).
    ImportImages,
}

/// One route: method, path in OpenAPI/axum syntax (`{name}` is a path parameter), operation.
#[derive(Clone, Debug)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub op: Op,
}

const fn route(method: Method, path: &'static str, op: Op) -> Route {
    Route { method, path, op }
}

/// Every route the agent serves.
pub const ROUTES: &[Route] = &[
    route(Method::GET, "/v1/health", Op::Health),
    route(Method::GET, "/v1/services", Op::ListServices),
    route(Method::POST, "/v1/services", Op::CreateService),
    route(Method::GET, "/v1/services/{name}", Op::GetService),
    route(Method::PUT, "/v1/services/{name}", Op::UpdateService),
    route(Method::DELETE, "/v1/services/{name}", Op::DeleteService),
    route(Method::POST, "/v1/services/{name}/scale", Op::ScaleService),
    route(Method::GET, "/v1/instances", Op::ListInstances),
    route(Method::GET, "/v1/instances/{id}", Op::GetInstance),
    route(Method::POST, "/v1/instances/{id}/kill", Op::KillInstance),
    route(Method::GET, "/v1/instances/{id}/logs", Op::InstanceLogs),
    route(Method::GET, "/v1/events", Op::Events),
    route(Method::GET, "/metrics", Op::Metrics),
    route(Method::GET, "/v1/images", Op::ListImages),
    route(Method::GET, "/v1/images/{ref}", Op::GetImage),
    route(Method::DELETE, "/v1/images/{ref}", Op::DeleteImage),
    route(Method::POST, "/v1/images/import", Op::ImportImages),
];

/// Body of `POST /v1/services/{name}/scale`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleBody {
    pub replicas: u32,
}

/// Body of `GET /v1/health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Always `ok` when the agent answers.
    pub status: String,
    /// The agent's version.
    pub version: String,
}

/// An HTTP request as the client sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCall {
    pub method: Method,
    /// Path and query, percent-encoded.
    pub path: String,
    /// A JSON body.
    pub body: Option<Vec<u8>>,
}

/// The HTTP request the router decodes into `request`.
pub fn encode(request: &Request) -> HttpCall {
    let (method, path, body) = match request {
        Request::ListServices => (Method::GET, "/v1/services".to_owned(), None),
        Request::CreateService(spec) => (Method::POST, "/v1/services".to_owned(), json(spec)),
        Request::GetService { name } => (Method::GET, service_path(name, ""), None),
        Request::UpdateService(spec) => (Method::PUT, service_path(&spec.name, ""), json(spec)),
        Request::DeleteService { name } => (Method::DELETE, service_path(name, ""), None),
        Request::ScaleService { name, replicas } => (
            Method::POST,
            service_path(name, "/scale"),
            json(&ScaleBody {
                replicas: *replicas,
            }),
        ),
        Request::ListInstances { service: None } => (Method::GET, "/v1/instances".into(), None),
        Request::ListInstances { service: Some(s) } => (
            Method::GET,
            format!("/v1/instances?service={}", percent_encode(s)),
            None,
        ),
        Request::GetInstance { id } => (Method::GET, instance_path(id, ""), None),
        Request::KillInstance { id } => (Method::POST, instance_path(id, "/kill"), None),
    };
    HttpCall { method, path, body }
}

/// `GET /v1/instances/{id}/logs` with its query.
pub fn logs_path(id: &str, tail: Option<usize>, follow: bool) -> String {
    let mut path = instance_path(id, &format!("/logs?follow={follow}"));
    if let Some(n) = tail {
        path.push_str(&format!("&tail={n}"));
    }
    path
}

/// `GET /v1/events` with its query.
pub fn events_path(since: u64, follow: bool) -> String {
    format!("/v1/events?since={since}&follow={follow}")
}

fn service_path(name: &str, suffix: &str) -> String {
    format!("/v1/services/{}{suffix}", percent_encode(name))
}

fn instance_path(id: &str, suffix: &str) -> String {
    format!("/v1/instances/{}{suffix}", percent_encode(id))
}

/// `s` with every byte but RFC 3986's unreserved characters percent-encoded, so any name
/// stays one path segment or query value (the agent refuses bad names itself).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A body as JSON. The bodies are plain structs with string keys: serializing cannot fail.
fn json<T: Serialize>(body: &T) -> Option<Vec<u8>> {
    serde_json::to_vec(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_names_one_segment() {
        assert_eq!(percent_encode("web-1"), "web-1");
        assert_eq!(percent_encode("a/b c"), "a%2Fb%20c");
        assert_eq!(percent_encode("é?"), "%C3%A9%3F");
    }

    #[test]
    fn every_op_has_exactly_one_route_with_a_servable_method() {
        use std::collections::HashSet;
        let ops: HashSet<String> = ROUTES.iter().map(|r| format!("{:?}", r.op)).collect();
        assert_eq!(ops.len(), ROUTES.len());
        let pairs: HashSet<(String, &str)> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path))
            .collect();
        assert_eq!(pairs.len(), ROUTES.len());
        for r in ROUTES {
            let filter = axum::routing::MethodFilter::try_from(r.method.clone());
            assert!(filter.is_ok(), "{r:?}: the router cannot serve this method");
        }
    }

    #[test]
    fn requests_encode_to_their_routes() {
        let call = encode(&Request::ScaleService {
            name: "web".into(),
            replicas: 3,
        });
        assert_eq!(call.method, Method::POST);
        assert_eq!(call.path, "/v1/services/web/scale");
        assert_eq!(call.body.as_deref(), Some(&br#"{"replicas":3}"#[..]));
        let call = encode(&Request::ListInstances {
            service: Some("a b".into()),
        });
        assert_eq!(call.path, "/v1/instances?service=a%20b");
        assert_eq!(call.body, None);
    }
}
