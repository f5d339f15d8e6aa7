//! The routes for watching the fleet: an instance's console log, the event stream and
//! `/metrics`, and the layer that counts every request for `/metrics`. Transport only: the
//! log is read by `agent::logs`, events come from the `EventLog`, and the numbers from the
//! snapshot the supervisor publishes, so none of them queues behind fleet changes.

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::{header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::params::InstanceId;
use super::reject::{Failure, Query};
use super::routes::ROUTES;
use super::{Backend, stream};
use crate::agent::events::{self, EventLog};
use crate::agent::logs::{self, LogCursor, LogFiles, LogsQuery};
use crate::agent::metrics;
use crate::agent::snapshot::FleetWatch;
use crate::agent::supervisor::chain;
use crate::agent::types::{self, Request as Call, RequestError};
use crate::fleet::InstanceStatus;

const TEXT: &str = "text/plain; charset=utf-8";
const NDJSON: &str = "application/x-ndjson";

/// The query of `GET /v1/instances/{id}/logs`: `tail=N`, `follow=true|false`.
pub struct LogsParams(pub LogsQuery);

impl<S: Send + Sync> FromRequestParts<S> for LogsParams {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Failure> {
        let q = Query::parse(parts, &["tail", "follow"]).await?;
        Ok(Self(LogsQuery {
            tail: q.get("tail", "a number of lines")?,
            follow: q.flag("follow")?,
        }))
    }
}

/// The query of `GET /v1/events`: `since=SEQ`, `follow=true|false`.
pub struct EventsParams {
    pub since: u64,
    pub follow: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for EventsParams {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Failure> {
        let q = Query::parse(parts, &["since", "follow"]).await?;
        Ok(Self {
            since: q.get("since", "a sequence number")?.unwrap_or(0),
            follow: q.flag("follow")?,
        })
    }
}

/// `GET /v1/instances/{id}/logs`: the retained console output, then (following) new output
/// until the instance has ended.
pub async fn logs(
    State(b): State<Backend>,
    InstanceId(id): InstanceId,
    LogsParams(q): LogsParams,
) -> Result<Response, Failure> {
    let info = match b.dispatcher.call(Call::GetInstance { id }).await? {
        types::Response::Instance(info) => info,
        other => return Err(unexpected(&other).into()),
    };
    // Opened before answering, so a log that cannot be read (or is refused: a symlink
    // leading out of the instances directory) is an error, not an empty 200.
    let (dir, id) = (b.instances_dir.clone(), info.id.clone());
    let cursor =
        tokio::task::spawn_blocking(move || LogFiles::of(&dir, &id).and_then(LogCursor::open))
            .await
            .map_err(|e| RequestError::Internal(format!("the log task failed: {e}")))?
            .map_err(|e| RequestError::Internal(chain(&e)))?;
    let until = (q.follow && info.status != InstanceStatus::Exited)
        .then(|| ended(b.fleet.clone(), info.id));
    Ok(stream::response(TEXT, b.closing(), move |tx| {
        logs::stream(cursor, q.tail, until, tx)
    }))
}

/// Completes once the instance `id` is no longer live in the published snapshot (or the
/// supervisor is gone).
async fn ended(mut fleet: FleetWatch, id: String) {
    let _ = fleet.wait_for(|s| !s.is_live(&id)).await;
}

fn unexpected(answer: &types::Response) -> RequestError {
    RequestError::Internal(format!("the supervisor answered {answer:?}"))
}

/// `GET /v1/events`: the retained events after `since`, then (following) every new one.
pub async fn events(State(b): State<Backend>, q: EventsParams) -> Response {
    let log: EventLog = b.events.clone();
    stream::response(NDJSON, b.closing(), move |tx| async move {
        if !q.follow {
            for event in log.since(q.since) {
                if tx.send(events::to_line(&event).into()).await.is_err() {
                    return;
                }
            }
            return;
        }
        let mut sub = log.subscribe(q.since);
        while let Some(event) = sub.next().await {
            if tx.send(events::to_line(&event).into()).await.is_err() {
                return;
            }
        }
    })
}

/// `GET /metrics`.
pub async fn metrics(State(b): State<Backend>) -> Response {
    let fleet = b.fleet.borrow().clone();
    let text = metrics::render(&fleet, &b.requests.get(), b.requests.peers_denied());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

/// Counts each request by route and status for `/metrics`. Only routes in [`ROUTES`] are
/// named; anything else is `unmatched`, so clients cannot make up label values.
pub async fn count_requests(State(b): State<Backend>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.extensions().get::<MatchedPath>().cloned();
    let route = path.and_then(|p| {
        ROUTES
            .iter()
            .find(|r| r.method == method && r.path == p.as_str())
            .map(|r| format!("{} {}", r.method, r.path))
    });
    let response = next.run(request).await;
    let route = route.as_deref().unwrap_or("unmatched");
    b.requests.add(route, response.status().as_u16());
    response
}
