//! The one way into the supervisor: a request and a reply channel on a bounded queue. The
//! HTTP layer holds a `Dispatcher` and awaits replies, so many clients are served at once
//! while the supervisor handles one change at a time, in order.

use tokio::sync::{mpsc, oneshot};

use super::types::{Request, RequestError, Response};

/// What every request gets back.
pub type Reply = Result<Response, RequestError>;

/// A request with the channel its reply goes to.
pub type Call = (Request, oneshot::Sender<Reply>);

/// Sends requests to the supervisor (cheap to clone, one per connection).
#[derive(Clone, Debug)]
pub struct Dispatcher(mpsc::Sender<Call>);

/// Requests queued before senders wait: plenty for bursts from many clients.
const QUEUE: usize = 1024;

impl Dispatcher {
    /// A dispatcher and the receiving end the supervisor reads.
    pub fn channel() -> (Self, mpsc::Receiver<Call>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self(tx), rx)
    }

    /// Sends `request` and waits for its reply.
    pub async fn call(&self, request: Request) -> Reply {
        let (tx, rx) = oneshot::channel();
        let gone = || RequestError::Internal("the supervisor is shutting down".into());
        self.0.send((request, tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}
