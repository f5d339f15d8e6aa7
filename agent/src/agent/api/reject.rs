//! Everything the transport refuses before a request reaches the supervisor, always answered
//! with a JSON [`ErrorBody`]: bodies that are too big, not JSON, of the wrong Content-Type or
//! with a bad field (named by its JSON path, from serde_path_to_error), bad path and query
//! parameters, unknown routes and wrong methods. A last layer turns any other error response
//! that is not JSON (hyper's or axum's own) into one, so a client never has to parse text.

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header, request::Parts};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use crate::agent::types::{ErrorBody, RequestError};

/// Largest request body accepted; a service spec is a few KiB.
pub const MAX_BODY: usize = 1 << 20;

/// A refused request: the status and the JSON body that says why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl Failure {
    pub fn new(status: StatusCode, error: impl Into<String>, field: Option<String>) -> Self {
        let body = ErrorBody {
            error: error.into(),
            field,
        };
        Self { status, body }
    }

    fn bad_request(error: impl Into<String>, field: Option<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, field)
    }
}

impl From<RequestError> for Failure {
    fn from(e: RequestError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self {
            status,
            body: e.body(),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

/// A JSON request body of type `T`, refused with a [`Failure`] naming the bad field.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Failure;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Failure> {
        check_content_type(req.headers())?;
        // Refused before reading when the length is declared; `read_body` enforces it anyway.
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(too_large());
        }
        let bytes = read_body(req.into_body()).await?;
        parse_json(&bytes).map(Self)
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), Failure> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let essence = value.map(|v| v.split(';').next().unwrap_or("").trim());
    if essence.is_some_and(|e| e.eq_ignore_ascii_case("application/json")) {
        return Ok(());
    }
    let error = match value {
        Some(v) => format!("Content-Type is {v:?}; the body must be application/json"),
        None => "no Content-Type; the body must be application/json".to_owned(),
    };
    Err(Failure::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        error,
        None,
    ))
}

fn too_large() -> Failure {
    Failure::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than {MAX_BODY} bytes"),
        None,
    )
}

/// The whole body, at most [`MAX_BODY`] bytes (checked as it arrives, whatever
/// Content-Length claims).
async fn read_body(body: Body) -> Result<Vec<u8>, Failure> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(Failure::bad_request(
            format!("cannot read the request body: {e}"),
            None,
        )),
    }
}

/// Parses a JSON body; a bad field is named by its JSON path (`health_check.tcp.port`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Failure> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Failure::bad_request(
            "the request body is empty; expected a JSON object",
            None,
        ));
    }
    // serde also takes a struct as an array of its fields in order; the API does not.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Failure::bad_request(
            "the request body must be a JSON object",
            None,
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(json_failure)?;
    de.end().map_err(|e| {
        Failure::bad_request(format!("malformed JSON: {e} (after the value)"), None)
    })?;
    Ok(value)
}

fn json_failure(e: serde_path_to_error::Error<serde_json::Error>) -> Failure {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if !inner.is_data() {
        return Failure::bad_request(format!("malformed JSON: {inner}"), None);
    }
    let field = field_of(&path, &inner.to_string());
    Failure::bad_request(format!("invalid request body: {inner}"), field)
}

/// The JSON path of the culprit. serde_path_to_error ends the path with an unknown field's
/// name but not always (not inside a flattened struct), and names the map a missing field
/// is missing from (`.` at the top), so the field's own name is taken from serde's message.
fn field_of(path: &str, message: &str) -> Option<String> {
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name);
    match (path, named) {
        (".", None) => None,
        (".", Some(name)) => Some(name.to_owned()),
        (path, Some(name)) if path != name && !path.ends_with(&format!(".{name}")) => {
            Some(format!("{path}.{name}"))
        }
        (path, _) => Some(path.to_owned()),
    }
}

/// One path parameter (`{name}`, `{id}`), refused as JSON when it cannot be decoded.
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Failure> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|e| Failure::bad_request(format!("bad path parameter: {e}"), None))
    }
}

/// The query of `GET /v1/instances`: only `service` (a service name), at most once.
pub struct InstancesQuery {
    pub service: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for InstancesQuery {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Failure> {
        let pairs = axum::extract::Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|e| Failure::bad_request(format!("bad query string: {e}"), None))?;
        let mut service = None;
        for (key, value) in pairs.0 {
            match key.as_str() {
                "service" if service.is_none() => {
                    service = Some(super::params::service_name("service", value)?);
                }
                "service" => {
                    return Err(Failure::bad_request("service is given twice", Some(key)));
                }
                _ => {
                    let error = format!("unknown query parameter {key:?}; expected `service`");
                    return Err(Failure::bad_request(error, Some(key)));
                }
            }
        }
        Ok(Self { service })
    }
}

/// A query's parameters, each known and given at most once, refused as JSON otherwise.
pub struct Query(pub std::collections::BTreeMap<String, String>);

impl Query {
    /// Decodes the query of `parts`, allowing only the parameters in `known`.
    pub async fn parse(parts: &mut Parts, known: &[&str]) -> Result<Self, Failure> {
        let pairs = axum::extract::Query::<Vec<(String, String)>>::from_request_parts(parts, &())
            .await
            .map_err(|e| Failure::bad_request(format!("bad query string: {e}"), None))?;
        let mut out = std::collections::BTreeMap::new();
        for (key, value) in pairs.0 {
            if !known.contains(&key.as_str()) {
                let expected = known.join("`, `");
                let error = format!("unknown query parameter {key:?}; expected `{expected}`");
                return Err(Failure::bad_request(error, Some(key)));
            }
            if out.contains_key(&key) {
                return Err(Failure::bad_request(
                    format!("{key} is given twice"),
                    Some(key),
                ));
            }
            out.insert(key, value);
        }
        Ok(Self(out))
    }

    /// The parameter `key` parsed as a `T`; a bad value is refused naming `key`.
    pub fn get<T: std::str::FromStr>(
        &self,
        key: &str,
        expected: &str,
    ) -> Result<Option<T>, Failure> {
        self.0
            .get(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    let error = format!("{key}: {v:?} is not {expected}");
                    Failure::bad_request(error, Some(key.to_owned()))
                })
            })
            .transpose()
    }

    /// The boolean parameter `key` (`true` or `false`), `false` when absent.
    pub fn flag(&self, key: &str) -> Result<bool, Failure> {
        Ok(self.get(key, "true or false")?.unwrap_or(false))
    }
}

/// The answer for a path no route matches.
pub async fn no_route(method: Method, uri: Uri) -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        format!("no such route: {method} {}", uri.path()),
        None,
    )
}

/// The answer for a known path asked with a method it does not take.
pub async fn wrong_method(method: Method, uri: Uri) -> Failure {
    Failure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} does not take {method} (see the Allow header)",
            uri.path()
        ),
        None,
    )
}

/// Makes every error response JSON: ours already are; any other (a rejection from a layer
/// we did not write) has its text wrapped in an [`ErrorBody`].
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match Limited::new(body, 4096).collect().await {
        Ok(c) => String::from_utf8_lossy(&c.to_bytes()).trim().to_owned(),
        Err(_) => String::new(),
    };
    let error = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut fixed = Failure::new(status, error, None).into_response();
    fixed.headers_mut().extend(parts.headers);
    fixed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::ServiceSpec;

    fn field(json: &str) -> Option<String> {
        parse_json::<ServiceSpec>(json.as_bytes())
            .unwrap_err()
            .body
            .field
    }

    #[test]
    fn unknown_and_missing_fields_are_named_by_their_path() {
        let unknown = r#"{"name":"a","image":"i","replica":3}"#;
        assert_eq!(field(unknown).as_deref(), Some("replica"));
        let nested = r#"{"name":"a","image":"i","restart":{"initial":1}}"#;
        assert_eq!(field(nested).as_deref(), Some("restart.initial"));
        assert_eq!(field(r#"{"name":"a"}"#).as_deref(), Some("image"));
        let flattened = r#"{"name":"a","image":"i","health_check":{"tcp":{"port":1},"x":1}}"#;
        assert_eq!(field(flattened).as_deref(), Some("health_check.x"));
        let missing = r#"{"name":"a","image":"i","health_check":{"http":{"port":1}}}"#;
        assert_eq!(field(missing).as_deref(), Some("health_check.path"));
    }

    #[test]
    fn wrong_types_are_named_by_their_path() {
        let f = field(r#"{"name":"a","image":"i","replicas":"3"}"#);
        assert_eq!(f.as_deref(), Some("replicas"));
        let f = field(r#"{"name":"a","image":"i","env":{"A":1}}"#);
        assert_eq!(f.as_deref(), Some("env.A"));
        let f = field(r#"{"name":"a","image":"i","args":["x",2]}"#);
        assert_eq!(f.as_deref(), Some("args[1]"));
        let f = field(r#"{"name":"a","image":"i","network":"host"}"#);
        assert_eq!(f.as_deref(), Some("network"));
    }

    #[test]
    fn malformed_json_and_empty_bodies_name_no_field() {
        for body in [
            "",
            "  ",
            "{",
            "{\"name\":",
            "[1]",
            r#"["a","i"]"#,
            r#"{"name":"a","image":"i"} {}"#,
            "nul",
            "\"x\"",
        ] {
            let e = parse_json::<ServiceSpec>(body.as_bytes()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.body.field, None, "{body}: {:?}", e.body);
        }
    }

    #[test]
    fn content_type_must_be_json() {
        let mut h = HeaderMap::new();
        assert!(check_content_type(&h).is_err());
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        let e = check_content_type(&h).unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        h.insert(
            header::CONTENT_TYPE,
            "Application/JSON; charset=utf-8".parse().unwrap(),
        );
        assert!(check_content_type(&h).is_ok());
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_as_they_arrive() {
        let e = read_body(Body::from(vec![b' '; MAX_BODY + 1]))
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            read_body(Body::from(vec![b' '; MAX_BODY]))
                .await
                .unwrap()
                .len(),
            MAX_BODY
        );
    }

    #[tokio::test]
    async fn plain_text_errors_from_other_layers_become_json() {
        let plain = (StatusCode::BAD_REQUEST, "Invalid URL").into_response();
        let fixed = json_errors(plain).await;
        assert_eq!(fixed.status(), StatusCode::BAD_REQUEST);
        assert_eq!(fixed.headers()[header::CONTENT_TYPE], "application/json");
        let body = fixed.into_body().collect().await.unwrap().to_bytes();
        let body: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert_eq!(body.error, "Invalid URL");
        let empty = json_errors(StatusCode::METHOD_NOT_ALLOWED.into_response()).await;
        let body = empty.into_body().collect().await.unwrap().to_bytes();
        let body: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert_eq!(body.error, "Method Not Allowed");
        let fine = json_errors(StatusCode::NO_CONTENT.into_response()).await;
        assert_eq!(fine.status(), StatusCode::NO_CONTENT);
    }
}
