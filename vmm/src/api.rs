//! The control socket (`--api-socket`): a Unix stream listener on the event loop. Clients
//! write one JSON request per line and get one JSON reply line each (`docs/snapshots.md`).
//! This module is transport only: it frames lines, decodes them into
//! [`crate::control::Action`]s and encodes outcomes; [`crate::control::Controller`] acts.
//! A client that sends garbage gets an error reply; one that floods or stalls is dropped;
//! neither disturbs the VM.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde_json::json;

use crate::control::{Action, Controller};
use crate::logging::RateLimit;

/// Longest request line; nothing valid comes near it.
const LINE_MAX: usize = 4096;
/// Clients served at once; one more is turned away.
const CLIENTS_MAX: usize = 8;

/// One connected client and the partial line it has sent.
struct Client {
    stream: UnixStream,
    pending: Vec<u8>,
}

/// Serves the control socket.
pub struct ApiServer {
    listener: UnixListener,
    clients: Vec<Client>,
    controller: Controller,
    log: RateLimit,
}

impl ApiServer {
    /// Serves `listener` (non-blocking) for `controller`.
    pub fn new(listener: UnixListener, controller: Controller) -> Self {
        Self {
            listener,
            clients: Vec::new(),
            controller,
            log: RateLimit::new(5),
        }
    }

    fn accept(&mut self, ops: &mut EventOps) {
        while let Ok((stream, _)) = self.listener.accept() {
            if self.clients.len() >= CLIENTS_MAX || stream.set_nonblocking(true).is_err() {
                continue;
            }
            if ops.add(Events::new(&stream, EventSet::IN)).is_ok() {
                self.clients.push(Client {
                    stream,
                    pending: Vec::new(),
                });
            }
        }
    }

    /// Reads what client `i` sent and answers its complete lines; false once it is done.
    fn serve(&mut self, i: usize) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match self.clients[i].stream.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => self.clients[i].pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        while let Some(end) = self.clients[i].pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.clients[i].pending.drain(..=end).collect();
            let reply = self.answer(&line[..end]);
            // Replies are small; a client that does not read them is dropped.
            if self.clients[i].stream.write_all(&reply).is_err() {
                return false;
            }
        }
        if self.clients[i].pending.len() > LINE_MAX {
            let _ = self.clients[i]
                .stream
                .write_all(&error_line("request line too long"));
            return false;
        }
        true
    }

    fn answer(&mut self, line: &[u8]) -> Vec<u8> {
        let action = match decode(line) {
            Ok(action) => action,
            Err(e) => return error_line(&format!("bad request: {e}")),
        };
        match self.controller.handle(action.clone()) {
            Ok(outcome) => {
                let mut reply = serde_json::to_value(outcome).expect("an outcome encodes");
                reply["ok"] = true.into();
                line_of(&reply)
            }
            Err(e) => {
                let chain = error_chain(&e);
                if self.log.allow() {
                    tracing::warn!(?action, "API request failed: {chain}");
                }
                error_line(&chain)
            }
        }
    }
}

/// Decodes one request line.
pub fn decode(line: &[u8]) -> Result<Action, serde_json::Error> {
    serde_json::from_slice(line)
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn line_of(value: &serde_json::Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(value).expect("a JSON value encodes");
    line.push(b'\n');
    line
}

fn error_line(error: &str) -> Vec<u8> {
    line_of(&json!({"ok": false, "error": error}))
}

impl MutEventSubscriber for ApiServer {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            panic!("cannot watch the API socket: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.listener.as_raw_fd() {
            return self.accept(ops);
        }
        let Some(i) = self.clients.iter().position(|c| c.stream.as_raw_fd() == fd) else {
            return;
        };
        let hung_up = events
            .event_set()
            .intersects(EventSet::HANG_UP | EventSet::ERROR);
        if !self.serve(i) || hung_up {
            let client = self.clients.swap_remove(i);
            let _ = ops.remove(Events::new(&client.stream, EventSet::IN));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn request_lines_decode_into_actions_and_anything_else_is_refused() {
        assert_eq!(decode(br#"{"action":"pause"}"#).unwrap(), Action::Pause {});
        assert_eq!(
            decode(br#"{"action":"status"}"#).unwrap(),
            Action::Status {}
        );
        assert_eq!(
            decode(br#"{"action":"snapshot","dir":"/snap"}"#).unwrap(),
            Action::Snapshot {
                dir: PathBuf::from("/snap")
            }
        );
        assert!(decode(br#"{"action":"snapshot"}"#).is_err());
        assert!(decode(br#"{"action":"pause","force":true}"#).is_err());
        assert!(decode(br#"{"action":"reboot"}"#).is_err());
        assert!(decode(b"pause").is_err());
    }

    #[test]
    fn error_replies_are_one_json_line() {
        let line = error_line("the VM is running, so it cannot snapshot");
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["ok"], false);
    }
}
