//! The agent's HTTP/1.1 + JSON API on a Unix socket. This is transport only: each request is
//! decoded into a typed [`Request`](crate::agent::types::Request), checked where the check is
//! pure (the spec's values), sent to the supervisor through the [`Dispatcher`], and its reply
//! turned into a status and JSON. Every route is in [`routes::ROUTES`]; `agent/openapi.json`
//! documents them and a test keeps the two equal.
//!
//! Logs, events and metrics do not queue behind fleet changes: they read the event log and
//! the snapshot the supervisor publishes ([`Backend`]).
//!
//! - [`routes`]: the route table, the small wire types, and the client's `encode`.
//! - [`handlers`]: one handler per service and instance route.
//! - [`observe`]: logs, events, `/metrics`, and the layer counting requests for it.
//! - [`images`]: the image routes (store work off the async threads).
//! - [`stream`]: streamed answers that end when the client leaves or the agent stops.
//! - [`reject`]: bodies, parameters, unknown routes and methods refused as JSON errors.
//! - [`socket`]: binding the socket path safely, with its mode and group.
//! - [`peer`] and [`guard`]: who may connect, checked on each connection before it is read.
//! - [`params`]: path and query parameters that name things, checked by shape.
//!
//! Status codes: 200 with the view, 201 for a created service, 204 when the supervisor only
//! accepts (a deleted service, a killed instance); 400 bad request (`field` names the JSON
//! path or parameter), 404 unknown resource or route, 405 wrong method, 409 conflict, 413 body
//! over 1 MiB (4 GiB for an image import), 415 wrong Content-Type, 500 internal.

pub mod guard;
pub mod handlers;
pub mod images;
pub mod observe;
pub mod params;
pub mod peer;
pub mod reject;
pub mod routes;
pub mod socket;
pub mod stream;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use tokio::sync::watch;

pub use peer::{Peer, PeerPolicy};
pub use reject::{Failure, MAX_BODY};
pub use routes::{HttpCall, ROUTES, Route, encode};
pub use socket::{Bound, SOCKET_MODE, bind};

use crate::agent::dispatch::Dispatcher;
use crate::agent::events::EventLog;
use crate::agent::metrics::ApiCounts;
use crate::agent::snapshot::FleetWatch;
use crate::agent::supervisor::Notices;

/// What the API serves from: the supervisor's queue for requests, the views it publishes for
/// reading, and the files the image and log routes read.
#[derive(Clone, Debug)]
pub struct Backend {
    pub dispatcher: Dispatcher,
    pub events: EventLog,
    pub fleet: FleetWatch,
    /// herd's home (`--home`): the image store.
    pub home: PathBuf,
    /// Where the agent keeps each instance's directory (its console log).
    pub instances_dir: PathBuf,
    /// Where the image routes tell the supervisor what left the store (none in tests of
    /// the transport alone).
    pub notices: Option<Notices>,
    requests: Arc<ApiCounts>,
    closing: Arc<watch::Sender<bool>>,
}

impl Backend {
    pub fn new(
        dispatcher: Dispatcher,
        events: EventLog,
        fleet: FleetWatch,
        home: PathBuf,
        instances_dir: PathBuf,
    ) -> Self {
        Self {
            dispatcher,
            events,
            fleet,
            home,
            instances_dir,
            notices: None,
            requests: Arc::default(),
            closing: Arc::new(watch::channel(false).0),
        }
    }

    /// Image removals are told to the supervisor through `notices`.
    pub fn with_notices(mut self, notices: Notices) -> Self {
        self.notices = Some(notices);
        self
    }

    /// Turns true when the agent shuts down: streams end then.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }
}

impl FromRef<Backend> for Dispatcher {
    fn from_ref(backend: &Backend) -> Self {
        backend.dispatcher.clone()
    }
}

/// Why the API could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot create the socket directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("an agent is already serving on {path}")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket; not replacing it")]
    NotSocket { path: PathBuf },
    #[error("cannot check whether {path} is in use")]
    Probe {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove the stale socket {path}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot give {path} to group {gid}")]
    Group {
        path: PathBuf,
        gid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set the mode of {path}")]
    Mode {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("serving {path} failed")]
    Serve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The API's routes, with every refusal answered as JSON and every request counted.
pub fn router(backend: Backend) -> Router {
    let mut router = Router::new();
    for route in ROUTES {
        router = router.route(route.path, handlers::endpoint(route));
    }
    router
        .method_not_allowed_fallback(reject::wrong_method)
        .fallback(reject::no_route)
        .layer(axum::middleware::map_response(reject::json_errors))
        .layer(axum::middleware::from_fn_with_state(
            backend.clone(),
            observe::count_requests,
        ))
        .with_state(backend)
}

/// Who may use the API: the socket file's group (the mode lets that group connect) and the
/// policy every connecting peer's credentials must pass.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// `--socket-group`; `None` leaves the agent's own group.
    pub socket_group: Option<u32>,
    pub peers: PeerPolicy,
}

/// Binds `path` (see [`bind`]) and serves the API until `shutdown` completes.
pub async fn serve(
    path: &Path,
    access: Access,
    backend: Backend,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    let bound = bind(path, access.socket_group).await?;
    serve_on(bound, access.peers, backend, shutdown).await
}

/// Serves the API on an already bound socket, each connection from a peer `peers` allows in
/// its own task (others are closed unanswered), until `shutdown` completes and open requests
/// are answered; then removes the socket file if it is still this one. Binding first lets
/// the agent refuse to start (another agent is running) before it touches anything else.
pub async fn serve_on(
    bound: Bound,
    peers: PeerPolicy,
    backend: Backend,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    let (listener, path, inode) = bound.into_parts();
    let listener = guard::Guarded::new(listener, peers, backend.requests.clone());
    let closing = backend.closing.clone();
    let shutdown = async move {
        shutdown.await;
        // Followers end their streams, so their connections can close.
        closing.send_replace(true);
    };
    let served = axum::serve(listener, router(backend))
        .with_graceful_shutdown(shutdown)
        .await;
    socket::remove(&path, inode);
    served.map_err(|source| ApiError::Serve { path, source })
}
