//! The agent's client: HTTP/1.1 over the Unix socket with hyper, one connection per request.
//! [`Client::call`] sends a typed [`Request`] (encoded by `api::encode`, the router's inverse)
//! and decodes the view that request answers with; an API error comes back as
//! [`ClientError::Api`] with the agent's [`ErrorBody`]. [`Client::stream`] hands a streamed
//! answer (logs, events) over chunk by chunk as it arrives.

use std::path::{Path, PathBuf};

use axum::http::{Method, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::api::{self, routes::Health};
use super::types::{ErrorBody, Request, Response};

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {path} (is `herd agent` running?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the agent at {path} failed")]
    Http {
        path: PathBuf,
        #[source]
        source: hyper::Error,
    },
    #[error("{path:?} is not a request path")]
    Path {
        path: String,
        #[source]
        source: axum::http::Error,
    },
    /// The agent refused the request.
    #[error("{}", describe(body))]
    Api { status: u16, body: ErrorBody },
    #[error("the agent answered {status} with a body that is not {expected}: {why}")]
    Unexpected {
        status: u16,
        expected: &'static str,
        why: String,
    },
}

/// `error (field f)`, how the CLI prints an API error.
fn describe(body: &ErrorBody) -> String {
    match &body.field {
        Some(field) => format!("{} (field {field})", body.error),
        None => body.error.clone(),
    }
}

/// A raw answer: status and body.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// Talks to the agent on one socket.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `request` and decodes the answer of the type it expects.
    pub async fn call(&self, request: &Request) -> Result<Response, ClientError> {
        let call = api::encode(request);
        let content_type = call.body.as_ref().map(|_| "application/json");
        let answer = self
            .send(
                call.method,
                &call.path,
                content_type,
                call.body.unwrap_or_default(),
            )
            .await?;
        let answer = ok_or_api_error(answer)?;
        if answer.status == StatusCode::NO_CONTENT {
            return Ok(Response::Done);
        }
        Ok(match request {
            Request::ListServices => Response::Services(decode(&answer, "a service list")?),
            Request::ListInstances { .. } => {
                Response::Instances(decode(&answer, "an instance list")?)
            }
            Request::GetInstance { .. } => Response::Instance(decode(&answer, "an instance")?),
            Request::KillInstance { .. } | Request::DeleteService { .. } => {
                decode(&answer, "an answer")?
            }
            Request::GetService { .. }
            | Request::CreateService(_)
            | Request::UpdateService(_)
            | Request::ScaleService { .. } => Response::Service(decode(&answer, "a service")?),
        })
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        let answer = self
            .send(Method::GET, "/v1/health", None, Vec::new())
            .await?;
        decode(&ok_or_api_error(answer)?, "a health report")
    }

    /// Sends one HTTP request as given, whatever it is (tests send bad ones on purpose).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Answer, ClientError> {
        let response = self.open(method, path, content_type, body).await?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|source| self.http(source))?;
        Ok(Answer {
            status,
            content_type,
            body: body.to_bytes(),
        })
    }

    /// `GET path`, handing each chunk of a successful answer to `sink` as it arrives, until
    /// the agent ends the answer or `sink` returns false.
    pub async fn stream(
        &self,
        path: &str,
        mut sink: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ClientError> {
        let response = self.open(Method::GET, path, None, Vec::new()).await?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|source| self.http(source))?;
            let answer = Answer {
                status,
                content_type: None,
                body: body.to_bytes(),
            };
            return ok_or_api_error(answer).map(drop);
        }
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|source| self.http(source))?;
            if let Some(data) = frame.data_ref()
                && !sink(data)
            {
                break;
            }
        }
        Ok(())
    }

    fn http(&self, source: hyper::Error) -> ClientError {
        ClientError::Http {
            path: self.socket.clone(),
            source,
        }
    }

    /// Sends a request; the answer's body is left to read.
    async fn open(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let http = |source| self.http(source);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        // Drives the connection; it ends when the answer is read and `sender` dropped.
        tokio::spawn(connection);
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "herd");
        if let Some(ct) = content_type {
            builder = builder.header(header::CONTENT_TYPE, ct);
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|source| ClientError::Path {
                path: path.to_owned(),
                source,
            })?;
        sender.send_request(request).await.map_err(http)
    }
}

/// `answer` if it is a success, else the agent's error.
fn ok_or_api_error(answer: Answer) -> Result<Answer, ClientError> {
    if answer.status.is_success() {
        return Ok(answer);
    }
    let body = decode::<ErrorBody>(&answer, "an error body")?;
    Err(ClientError::Api {
        status: answer.status.as_u16(),
        body,
    })
}

fn decode<T: DeserializeOwned>(answer: &Answer, expected: &'static str) -> Result<T, ClientError> {
    serde_json::from_slice(&answer.body).map_err(|e| ClientError::Unexpected {
        status: answer.status.as_u16(),
        expected,
        why: e.to_string(),
    })
}
