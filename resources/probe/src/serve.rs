//! `probe.end=serve`: after its report the probe stays up like a long-running app and answers
//! health checks on vsock, so the agent's supervisor can be tested against a guest that
//! turns unhealthy or exits when told to, or is snapshotted and restored as a clone. This
//! module is the logic, apart from any device: what the instance's files ask
//! ([`ServeOptions`], read from `herd/image.json` and `herd/instance.json` by [`env`]), the
//! connection table ([`Server`]) that turns the host's packets into replies, and the control
//! port's requests ([`control`]: stop, or a new identity after a restore). The guest's loop
//! (`serving` in the binary) moves the packets and bytes and sleeps on the local APIC timer
//! between polls.
//!
//! The protocol: a host client connects through herd-vmm's socket (`CONNECT <port>\n`, so the
//! device sends us a `REQUEST`), writes one request line and gets one answer: `health\n` gets
//! `ok\n` or `fail\n` (a health check), `count\n` gets `count=<N>\n` (the timer ticks the
//! loop has counted: it lives in guest RAM, so a restored clone goes on from its snapshot's
//! count), `id\n` gets `id=<instance id>\n` (`id=none` without one); any other line gets
//! `error\n`. Only `health` counts as a check. Either way we then shut the stream down; the
//! host's `RST` that follows finds no stream and is dropped.
//! Lines: `probe: serve port=P` once serving, `probe: serve checks=N` when it ends.

pub mod control;
pub mod env;

use crate::cmdline::parse_u32;
use crate::out::{Sink, dec};
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
/// Longest instance id kept (herd's are a service name of at most 32 bytes, `-` and 8 hex
/// digits); a longer one is not taken.
pub const ID_MAX: usize = 128;
/// Longest answer: `id=`, the longest id and `\n`.
const ANSWER_MAX: usize = 4 + ID_MAX;
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

/// Whether a raw JSON string value is one the probe takes and prints as it is: 1 to `max`
/// bytes of printable ASCII without spaces or backslashes (so no escapes to decode).
pub fn plain(raw: &[u8], max: usize) -> bool {
    (1..=max).contains(&raw.len()) && raw.iter().all(|&b| b.is_ascii_graphic() && b != b'\\')
}

/// The instance's id, as `id` answers it: from `herd/instance.json`, then from each
/// `restored` control request that names one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct InstanceId {
    buf: [u8; ID_MAX],
    /// 0: no id.
    len: usize,
}

impl InstanceId {
    /// No id known.
    pub const NONE: InstanceId = InstanceId {
        buf: [0; ID_MAX],
        len: 0,
    };

    /// The id `raw` (a raw JSON string value), if it is [`plain`] and at most [`ID_MAX`] bytes.
    pub fn new(raw: &[u8]) -> Option<Self> {
        if !plain(raw, ID_MAX) {
            return None;
        }
        let mut id = InstanceId::NONE;
        id.buf[..raw.len()].copy_from_slice(raw);
        id.len = raw.len();
        Some(id)
    }

    /// The id, or `none` without one.
    pub fn as_bytes(&self) -> &[u8] {
        match self.len {
            0 => b"none",
            n => &self.buf[..n],
        }
    }
}

impl Default for InstanceId {
    fn default() -> Self {
        InstanceId::NONE
    }
}

impl core::fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Plain ASCII by construction.
        f.write_str(core::str::from_utf8(self.as_bytes()).unwrap_or("?"))
    }
}

/// What `probe.end=serve` does: its command-line word and the instance's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// The vsock port checks arrive on (`probe.serve.port=P`).
    pub port: u32,
    pub health: Health,
    /// End after answering this many checks (`PROBE_EXIT_AFTER`).
    pub exit_after: Option<u32>,
    /// `instance_id` of `herd/instance.json`.
    pub instance_id: InstanceId,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            port: DEFAULT_PORT,
            health: Health::Ok,
            exit_after: None,
            instance_id: InstanceId::NONE,
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
        if let Some(id) = instance
            .and_then(|doc| env::string(doc, b"instance_id"))
            .and_then(InstanceId::new)
        {
            self.instance_id = id;
        }
    }
}

/// The bytes of one answer (the longest is `id=` with an [`ID_MAX`]-byte id).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    buf: [u8; ANSWER_MAX],
    len: usize,
}

impl Answer {
    /// No payload (a packet without data).
    const EMPTY: Answer = Answer {
        buf: [0; ANSWER_MAX],
        len: 0,
    };

    /// `parts` one after another (cut at [`ANSWER_MAX`] bytes, which no answer reaches).
    fn of(parts: &[&[u8]]) -> Self {
        let mut a = Answer::EMPTY;
        for &b in parts.iter().flat_map(|p| p.iter()) {
            if let Some(slot) = a.buf.get_mut(a.len) {
                *slot = b;
                a.len += 1;
            }
        }
        a
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl core::fmt::Debug for Answer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "\"{}\"", self.as_bytes().escape_ascii())
    }
}

/// One packet to send: its header (ports, op, flags), payload and our `fwd_cnt` for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub hdr: Hdr,
    pub payload: Answer,
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
    /// What `count` answers: the loop's timer ticks, as of its last poll.
    pub ticks: u64,
    /// What `id` answers.
    pub id: InstanceId,
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
            ticks: 0,
            id: InstanceId::NONE,
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
                payload: Answer::EMPTY,
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
                        payload: Answer::EMPTY,
                        fwd: 0,
                    })
                }
                None => reset(0),
            },
            (OP_RW, Some(i)) => self.data(i, h, payload),
            (OP_CREDIT_REQUEST, Some(i)) => Replies::one(Reply {
                hdr: reply_to(h, OP_CREDIT_UPDATE, 0),
                payload: Answer::EMPTY,
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
        let answer = match (fits, line) {
            (true, b"health") => {
                let pass = self.health.passes(self.checks);
                self.checks = self.checks.saturating_add(1);
                Answer::of(&[if pass { b"ok\n" } else { b"fail\n" }])
            }
            (true, b"count") => {
                let mut digits = [0u8; 20];
                let n = dec(self.ticks, &mut digits);
                Answer::of(&[b"count=", &digits[digits.len() - n..], b"\n"])
            }
            (true, b"id") => Answer::of(&[b"id=", self.id.as_bytes(), b"\n"]),
            _ => Answer::of(&[b"error\n"]),
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
                    payload: Answer::EMPTY,
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
