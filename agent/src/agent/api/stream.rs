//! Answers that stream (logs, events): a body fed by a task through a small channel. The
//! task stops when its work is done, when the client goes away (the body is dropped, so the
//! channel closes) or when the agent shuts down, so a follower never holds the agent's
//! graceful shutdown open.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use hyper::body::Frame;
use tokio::sync::{mpsc, watch};

/// Chunks in flight between the task and the connection.
const BUFFER: usize = 16;

/// A body whose chunks come from a channel; it ends when the sender is dropped.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// A 200 answer of `content_type` whose body `produce` writes through the sender it gets.
/// `closing` turns true when the agent shuts down.
pub fn response<F>(
    content_type: &'static str,
    mut closing: watch::Receiver<bool>,
    produce: impl FnOnce(mpsc::Sender<Bytes>) -> F,
) -> Response
where
    F: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(BUFFER);
    let gone = tx.clone();
    let work = produce(tx);
    tokio::spawn(async move {
        tokio::select! {
            () = work => {}
            () = gone.closed() => {}
            _ = closing.wait_for(|c| *c) => {}
        }
    });
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::new(ChannelBody(rx)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    #[tokio::test]
    async fn the_body_carries_the_chunks_and_ends_with_the_task() {
        let (_closing_tx, closing) = watch::channel(false);
        let answer = response("text/plain", closing, |tx| async move {
            for s in ["a", "b"] {
                tx.send(Bytes::from(s)).await.unwrap();
            }
        });
        assert_eq!(answer.headers()[header::CONTENT_TYPE], "text/plain");
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ab");
    }

    #[tokio::test]
    async fn a_task_stops_when_the_client_leaves_or_the_agent_closes() {
        for leave in [true, false] {
            let (closing_tx, closing) = watch::channel(false);
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            let answer = response("text/plain", closing, |_tx| async move {
                // Held until the task is dropped.
                let _done = done_tx;
                std::future::pending::<()>().await
            });
            if leave {
                drop(answer);
            } else {
                closing_tx.send_replace(true);
            }
            let stopped = tokio::time::timeout(std::time::Duration::from_secs(5), done_rx).await;
            assert!(stopped.is_ok(), "leave={leave}: the task still runs");
        }
    }
}
