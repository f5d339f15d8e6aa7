//! The API's listener: the socket's listener with the [`PeerPolicy`] applied at accept time.
//! A peer the policy refuses is closed before a byte of its request is read, and gets no
//! answer at all (not even an HTTP error that would tell it an agent is there and what it
//! runs). Each refusal is logged with the peer's pid, uid and gid, at most a few lines a
//! second, and counted for `/metrics`. Kept as an [`axum::serve::Listener`] so HTTP serving,
//! graceful shutdown included, stays axum's and the policy stays a pure type.

use std::sync::Arc;
use std::time::Instant;

use axum::serve::Listener;
use tokio::net::unix::SocketAddr;
use tokio::net::{UnixListener, UnixStream};

use super::peer::{Peer, PeerPolicy};
use crate::agent::metrics::ApiCounts;
use crate::agent::ratelimit::LogLimit;

/// Refusals logged per second at most; the rest are counted in the next line.
const DENIALS_LOGGED_PER_SECOND: u32 = 5;

/// A Unix listener that only hands on connections from allowed peers.
#[derive(Debug)]
pub struct Guarded {
    inner: UnixListener,
    policy: PeerPolicy,
    log: LogLimit,
    counts: Arc<ApiCounts>,
}

impl Guarded {
    /// Guards `inner` with `policy`; refusals are counted in `counts`.
    pub fn new(inner: UnixListener, policy: PeerPolicy, counts: Arc<ApiCounts>) -> Self {
        Self {
            inner,
            policy,
            log: LogLimit::new(DENIALS_LOGGED_PER_SECOND),
            counts,
        }
    }

    /// Whether `stream`'s peer may be served; a refusal is logged and counted.
    fn admit(&mut self, stream: &UnixStream) -> bool {
        let peer = match stream.peer_cred() {
            Ok(cred) => Peer {
                pid: cred.pid(),
                uid: cred.uid(),
                gid: cred.gid(),
            },
            Err(e) => {
                // Without credentials nothing can be allowed.
                self.counts.deny_peer();
                if let Some(suppressed) = self.log.admit(Instant::now()) {
                    tracing::warn!(error = %e, suppressed, "refused an API connection: cannot read its credentials");
                }
                return false;
            }
        };
        if self.policy.allows(&peer) {
            return true;
        }
        self.counts.deny_peer();
        if let Some(suppressed) = self.log.admit(Instant::now()) {
            let pid = peer
                .pid
                .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
            tracing::warn!(
                pid = %pid,
                uid = peer.uid,
                gid = peer.gid,
                suppressed,
                "refused an API connection: peer not allowed (--api-allow-uid, --api-allow-gid)"
            );
        }
        false
    }
}

impl Listener for Guarded {
    type Io = UnixStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            // axum's own accept retries (and logs) failed accepts.
            let (stream, addr) = Listener::accept(&mut self.inner).await;
            if self.admit(&stream) {
                return (stream, addr);
            }
            // Dropping the stream closes it unread.
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}
