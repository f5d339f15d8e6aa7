//! `probe.end=serve`: after its report the probe stays up like a long-running app and answers
//! health checks on vsock, so the agent's supervisor can be tested against a guest that
//! turns unhealthy or exits when told to. This module is the logic, apart from any device:
//! what the instance's environment asks ([`ServeOptions`], read from `herd/image.json` and
//! `herd/instance.json` by [`env`]), and the connection table ([`Server`]) that turns the
//! host's packets into replies. The guest's loop (`serving` in the binary) moves the packets
//! and sleeps on the local APIC timer between polls.
//!
//! The protocol: a host client connects through herd-vmm's socket (`CONNECT <port>\n`, so the
//! device sends us a `REQUEST`), writes `health\n` and gets `ok\n` or `fail\n`; any other
//! line gets `error\n` (not counted as a check). Either way we then shut the stream down;
//! the host's `RST` that follows finds no stream and is dropped.
//! Lines: `probe: serve port=P` once serving, `probe: serve checks=N` when it ends.

pub mod env;

use crate::cmdline::parse_u32;
use crate::out::Sink;
use crate::virtio::vsock::{
    Hdr, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN,
    SHUTDOWN_BOTH,
};

/// The port served without `probe.serve.port=`.
pub const DEFAULT_PORT: u32 = 5000;
/// Streams open at once; a further `REQUEST` is reset. Checks come one at a time, some
/// overlapping: a handful is plenty.
pub const MAX_CONNS: usize = 8;
/// Longest request line; a longer one is answered `error`.
pub const MAX_LINE: usize = 32;
/// Environment variables that set the behaviour.
pub const HEALTH_VAR: &[u8] = b"PROBE_HEALTH";
pub const EXIT_AFTER_VAR: &[u8] = b"PROBE_EXIT_AFTER";

/// How checks are answered (`PROBE_HEALTH`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Health {
    /// `ok`: every check passes (the default).
    #[default]
    Ok,
    /// `fail`: every check fails.
    Fail,
    /// `fail-after:N`: the first N checks pass, then all fail.
    FailAfter(u32),
}

impl Health {
    /// Parses a `PROBE_HEALTH` value.
    pub fn parse(v: &[u8]) -> Option<Self> {
        match v {
            b"ok" => Some(Health::Ok),
            b"fail" => Some(Health::Fail),
            _ => v
                .strip_prefix(b"fail-after:")
                .and_then(parse_u32)
                .map(Health::FailAfter),
        }
    }

    /// Whether the check after `answered` others passes.
    pub fn passes(self, answered: u32) -> bool {
        match self {
            Health::Ok => true,
            Health::Fail => false,
            Health::FailAfter(n) => answered < n,
        }
    }
}

/// What `probe.end=serve` does: its command-line word and the instance's environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// The vsock port checks arrive on (`probe.serve.port=P`).
    pub port: u32,
    pub health: Health,
    /// End after answering this many checks (`PROBE_EXIT_AFTER`).
    pub exit_after: Option<u32>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            port: DEFAULT_PORT,
            health: Health::Ok,
            exit_after: None,
        }
    }
}

impl ServeOptions {
    /// Takes a `probe.serve.<key>=<value>` word.
    pub fn word(&mut self, key: &[u8], value: &[u8]) {
        if key == b"port"
            && let Some(port) = parse_u32(value)
        {
            self.port = port;
        }
    }

    /// Takes the variables from the image's `env` (`herd/image.json`), then from the
    /// instance's (`herd/instance.json`), which wins. Values we cannot parse are ignored.
    pub fn apply_env(&mut self, image: Option<&[u8]>, instance: Option<&[u8]>) {
        for doc in [image, instance].into_iter().flatten() {
            if let Some(h) = env::var(doc, HEALTH_VAR).and_then(Health::parse) {
                self.health = h;
            }
            if let Some(n) = env::var(doc, EXIT_AFTER_VAR).and_then(parse_u32) {
                self.exit_after = Some(n);
            }
        }
    }
}

/// One packet to send: its header (ports, op, flags), payload and our `fwd_cnt` for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub hdr: Hdr,
    pub payload: &'static [u8],
    pub fwd: u32,
}

/// What one received packet needs sent, in order (at most an answer and a shutdown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replies {
    list: [Option<Reply>; 2],
}

impl Replies {
    fn one(r: Reply) -> Self {
        Replies {
            list: [Some(r), None],
        }
    }

    /// The packets, in sending order.
    pub fn iter(&self) -> impl Iterator<Item = &Reply> {
        self.list.iter().flatten()
    }
}

/// A stream being served: the host's port (0: free slot), what it has sent so far.
#[derive(Debug, Clone, Copy)]
struct Conn {
    peer: u32,
    /// Bytes taken from the host, our `fwd_cnt` (we consume each packet as it comes).
    fwd: u32,
    line: [u8; MAX_LINE],
    len: usize,
}

const FREE: Conn = Conn {
    peer: 0,
    fwd: 0,
    line: [0; MAX_LINE],
    len: 0,
};

/// The streams on our port and the checks answered.
#[derive(Debug)]
pub struct Server {
    port: u32,
    health: Health,
    conns: [Conn; MAX_CONNS],
    /// Health checks answered so far.
    pub checks: u32,
}

/// Header from us for a packet `h` received (ports swapped).
fn reply_to(h: &Hdr, op: u16, flags: u32) -> Hdr {
    Hdr {
        src_port: h.dst_port,
        dst_port: h.src_port,
        op,
        flags,
        ..Hdr::default()
    }
}

impl Server {
    /// Serves `port`, answering as `health` says.
    pub fn new(port: u32, health: Health) -> Self {
        Server {
            port,
            health,
            conns: [FREE; MAX_CONNS],
            checks: 0,
        }
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.conns.iter().filter(|c| c.peer != 0).count()
    }

    /// Handles one packet from the host; returns what to send back.
    pub fn packet(&mut self, h: &Hdr, payload: &[u8]) -> Replies {
        let ours = h.dst_port == self.port && h.src_port != 0;
        let slot = match ours {
            true => self.conns.iter().position(|c| c.peer == h.src_port),
            false => None,
        };
        let reset = |fwd| {
            Replies::one(Reply {
                hdr: reply_to(h, OP_RST, 0),
                payload: &[],
                fwd,
            })
        };
        match (h.op, slot) {
            (OP_REQUEST, None) if ours => match self.conns.iter().position(|c| c.peer == 0) {
                Some(free) => {
                    self.conns[free] = Conn {
                        peer: h.src_port,
                        ..FREE
                    };
                    Replies::one(Reply {
                        hdr: reply_to(h, OP_RESPONSE, 0),
                        payload: &[],
                        fwd: 0,
                    })
                }
                None => reset(0),
            },
            (OP_RW, Some(i)) => self.data(i, h, payload),
            (OP_CREDIT_REQUEST, Some(i)) => Replies::one(Reply {
                hdr: reply_to(h, OP_CREDIT_UPDATE, 0),
                payload: &[],
                fwd: self.conns[i].fwd,
            }),
            // The host gave up on the stream (or asked to open it twice): drop it.
            (OP_SHUTDOWN | OP_REQUEST, Some(i)) => {
                let fwd = self.conns[i].fwd;
                self.conns[i] = FREE;
                reset(fwd)
            }
            (OP_RST, Some(i)) => {
                self.conns[i] = FREE;
                Replies::default()
            }
            // Opening a port we do not serve, or data for no stream of ours.
            (OP_REQUEST | OP_RW, _) => reset(0),
            _ => Replies::default(),
        }
    }

    /// Takes request bytes on stream `i`; once the line is complete (or too long), answers
    /// it and shuts the stream down.
    fn data(&mut self, i: usize, h: &Hdr, payload: &[u8]) -> Replies {
        let c = &mut self.conns[i];
        c.fwd = c.fwd.wrapping_add(payload.len() as u32);
        let newline = payload.iter().position(|&b| b == b'\n');
        let take = &payload[..newline.unwrap_or(payload.len())];
        let fits = c.len + take.len() <= MAX_LINE;
        if fits {
            c.line[c.len..c.len + take.len()].copy_from_slice(take);
            c.len += take.len();
        }
        if fits && newline.is_none() {
            return Replies::default();
        }
        let line = &c.line[..c.len];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let fwd = c.fwd;
        let answer: &'static [u8] = match (fits, line == b"health") {
            (true, true) => {
                let pass = self.health.passes(self.checks);
                self.checks = self.checks.saturating_add(1);
                if pass { b"ok\n" } else { b"fail\n" }
            }
            _ => b"error\n",
        };
        self.conns[i] = FREE;
        Replies {
            list: [
                Some(Reply {
                    hdr: reply_to(h, OP_RW, 0),
                    payload: answer,
                    fwd,
                }),
                Some(Reply {
                    hdr: reply_to(h, OP_SHUTDOWN, SHUTDOWN_BOTH),
                    payload: &[],
                    fwd,
                }),
            ],
        }
    }
}

/// `probe: serve <what>=<n>`.
pub fn report_num(s: &mut impl Sink, what: &str, n: u64) {
    s.put_bytes(b"probe: serve ");
    s.put_bytes(what.as_bytes());
    s.put(b'=');
    s.put_dec(n);
    s.put(b'\n');
}

#[cfg(test)]
mod tests;
