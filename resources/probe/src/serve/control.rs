//! The control port (COM2) while serving: herd-vmm's requests, one line each. A line starting
//! `restored ` is what herd-vmm sends a VM it has just restored from a snapshot
//! (`docs/snapshots.md`, "Clone identity"): the probe takes the new `instance_id` (if the
//! line names one) for its `id` answers, reports the restore and keeps serving. Any other
//! line (herd-vmm's `stop`) ends serving, as it always did.
//!
//! [`ControlLine`] assembles lines from the UART's bytes as they arrive, [`Request::parse`]
//! says what one asks and [`handle`] carries it out on the [`Server`]; the guest's loop only
//! moves the bytes. Lines: `probe: restored id=<id> generation=<generation_id>` (`id` is the
//! one `id` answers from now on, `none` if there is none), `probe: restored error <why>` for a
//! `restored` line the probe cannot read (then ignored), `probe: control=<line>` for a stop.

use super::{InstanceId, Server, env, plain};
use crate::out::Sink;
use crate::report;

/// Longest control line kept: herd-vmm's `restored` line is its own two members plus an
/// identity file of at most 3 KiB. The rest of a longer line is dropped.
pub const CONTROL_MAX: usize = 4096;
/// Longest generation id taken (herd-vmm's are 32 hex digits).
pub const GENERATION_MAX: usize = 64;

/// What one control line asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// End serving: `stop`, or any line that is not a restore (the line, cut at
    /// [`CONTROL_MAX`]).
    Stop(&'a [u8]),
    /// The VM was restored: its new instance id if the line names one, and its generation id.
    Restored {
        id: Option<InstanceId>,
        generation: &'a [u8],
    },
    /// A `restored` line the probe cannot read: why.
    BadRestore(&'static str),
}

impl<'a> Request<'a> {
    /// Classifies `line` (without its `\r\n`); `overlong`: bytes past [`CONTROL_MAX`] were
    /// dropped, so a restore's JSON is cut short and is not trusted.
    pub fn parse(line: &'a [u8], overlong: bool) -> Self {
        match line.strip_prefix(b"restored ") {
            None => Request::Stop(line),
            Some(_) if overlong => Request::BadRestore("overlong"),
            Some(json) => Self::restored(json),
        }
    }

    /// The members of a `restored` line's JSON object the probe uses.
    fn restored(json: &'a [u8]) -> Self {
        if !env::whole_object(json) {
            return Request::BadRestore("bad-json");
        }
        let generation = match env::string(json, b"generation_id") {
            None => return Request::BadRestore("no-generation-id"),
            Some(g) if !plain(g, GENERATION_MAX) => {
                return Request::BadRestore("bad-generation-id");
            }
            Some(g) => g,
        };
        let id = match env::string(json, b"instance_id").map(InstanceId::new) {
            None => None,
            Some(None) => return Request::BadRestore("bad-instance-id"),
            Some(id) => id,
        };
        Request::Restored { id, generation }
    }
}

/// A control line being received, byte by byte as the UART has them.
#[derive(Debug)]
pub struct ControlLine {
    buf: [u8; CONTROL_MAX],
    len: usize,
    /// Bytes of the current line were dropped for want of room.
    overlong: bool,
    /// The line in `buf` was handed out: the next byte starts a new one.
    done: bool,
}

impl Default for ControlLine {
    fn default() -> Self {
        ControlLine {
            buf: [0; CONTROL_MAX],
            len: 0,
            overlong: false,
            done: false,
        }
    }
}

impl ControlLine {
    /// Takes bytes from `next` until it has no more or a line is complete; then that line's
    /// request. Bytes after the newline stay with `next` for the following call.
    pub fn poll(&mut self, mut next: impl FnMut() -> Option<u8>) -> Option<Request<'_>> {
        if self.done {
            (self.len, self.overlong, self.done) = (0, false, false);
        }
        while let Some(b) = next() {
            if b == b'\n' {
                self.done = true;
                let line = &self.buf[..self.len];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                return Some(Request::parse(line, self.overlong));
            }
            match self.buf.get_mut(self.len) {
                Some(slot) => {
                    *slot = b;
                    self.len += 1;
                }
                None => self.overlong = true,
            }
        }
        None
    }
}

/// Carries out `request` on `server`, reporting on `s`; returns whether serving ends.
pub fn handle(s: &mut impl Sink, server: &mut Server, request: Request<'_>) -> bool {
    match request {
        Request::Stop(line) => {
            report::control(s, line);
            return true;
        }
        Request::Restored { id, generation } => {
            if let Some(id) = id {
                server.id = id;
            }
            s.put_bytes(b"probe: restored id=");
            s.put_bytes(server.id.as_bytes());
            s.put_bytes(b" generation=");
            s.put_bytes(generation);
        }
        Request::BadRestore(why) => {
            s.put_bytes(b"probe: restored error ");
            s.put_bytes(why.as_bytes());
        }
    }
    s.put(b'\n');
    false
}

#[cfg(test)]
mod tests {
    use std::string::String;
    use std::vec::Vec;

    use super::*;
    use crate::serve::Health;

    const GEN: &[u8] = b"00112233445566778899aabbccddeeff";

    /// Feeds `bytes` to `line` in one poll; the request it completes, if any.
    fn feed<'a>(line: &'a mut ControlLine, bytes: &mut &[u8]) -> Option<Request<'a>> {
        line.poll(|| {
            let (&b, rest) = bytes.split_first()?;
            *bytes = rest;
            Some(b)
        })
    }

    fn restored(json: &str) -> Vec<u8> {
        [b"restored ", json.as_bytes()].concat()
    }

    #[test]
    fn restored_lines_give_the_new_id_and_generation() {
        let line = restored(
            r#"{"generation_id":"00112233445566778899aabbccddeeff","entropy":"ab","instance_id":"web-1","hostname":"web-1","network":{"address":"10.0.0.7/24","gateway":"10.0.0.1","dns":[]}}"#,
        );
        let Request::Restored { id, generation } = Request::parse(&line, false) else {
            panic!("not a restore");
        };
        assert_eq!((id.unwrap().as_bytes(), generation), (&b"web-1"[..], GEN));
        let bare = restored(r#"{ "entropy" : "ab", "generation_id" : "g-2" }"#);
        assert_eq!(
            Request::parse(&bare, false),
            Request::Restored {
                id: None,
                generation: b"g-2"
            },
            "no instance_id: none given"
        );
    }

    #[test]
    fn unreadable_restored_lines_are_refused_and_other_lines_stop() {
        for (json, why) in [
            (r#"{"instance_id":"web-1"}"#, "no-generation-id"),
            (r#"{"generation_id":""}"#, "bad-generation-id"),
            (r#"{"generation_id":"a\"b"}"#, "bad-generation-id"),
            (
                r#"{"generation_id":"g","instance_id":"a b"}"#,
                "bad-instance-id",
            ),
            (r#"{"generation_id":"g""#, "bad-json"),
            (r#"{"generation_id":"g"}}"#, "bad-json"),
            (r#"{"generation_id":"g"} x"#, "bad-json"),
            (r#"["generation_id","g"]"#, "bad-json"),
            ("garbage", "bad-json"),
        ] {
            let line = restored(json);
            assert_eq!(
                Request::parse(&line, false),
                Request::BadRestore(why),
                "{json}"
            );
        }
        let fine = restored(r#"{"generation_id":"g"}"#);
        assert_eq!(Request::parse(&fine, true), Request::BadRestore("overlong"));
        assert_eq!(Request::parse(b"stop", false), Request::Stop(b"stop"));
        assert_eq!(
            Request::parse(b"restored", false),
            Request::Stop(b"restored")
        );
        assert_eq!(Request::parse(b"", true), Request::Stop(b""));
    }

    #[test]
    fn lines_are_assembled_across_polls_and_start_afresh_after_each() {
        let mut line = ControlLine::default();
        let mut bytes: &[u8] = b"rest";
        assert_eq!(feed(&mut line, &mut bytes), None, "waits for the newline");
        let mut bytes: &[u8] = b"ored {\"generation_id\":\"g\"}\r\nstop\nnext";
        assert!(matches!(
            feed(&mut line, &mut bytes),
            Some(Request::Restored {
                id: None,
                generation: b"g"
            })
        ));
        assert_eq!(feed(&mut line, &mut bytes), Some(Request::Stop(b"stop")));
        assert_eq!(feed(&mut line, &mut bytes), None);
        assert_eq!(bytes, b"", "every byte taken");
        let mut bytes: &[u8] = b"\n";
        assert_eq!(feed(&mut line, &mut bytes), Some(Request::Stop(b"next")));
    }

    #[test]
    fn an_overlong_line_keeps_its_head_and_does_not_spill_into_the_next() {
        let mut line = ControlLine::default();
        let mut long = restored(r#"{"generation_id":"g","pad":""#);
        long.resize(CONTROL_MAX + 100, b'x');
        long.extend_from_slice(b"\"}\nrestored {\"generation_id\":\"h\"}\n");
        let mut bytes = &long[..];
        assert_eq!(
            feed(&mut line, &mut bytes),
            Some(Request::BadRestore("overlong"))
        );
        assert!(matches!(
            feed(&mut line, &mut bytes),
            Some(Request::Restored {
                generation: b"h",
                ..
            })
        ));
        let mut stop = [b's'; CONTROL_MAX + 1].to_vec();
        stop.push(b'\n');
        let mut bytes = &stop[..];
        assert_eq!(
            feed(&mut line, &mut bytes),
            Some(Request::Stop(&[b's'; CONTROL_MAX][..])),
            "any long line still stops"
        );
    }

    #[test]
    fn a_restore_changes_the_id_served_and_only_a_stop_ends_serving() {
        let mut server = Server::new(5000, Health::Ok);
        server.id = InstanceId::new(b"web-1").unwrap();
        let mut out = Vec::new();
        let restore = |id: Option<&[u8]>| Request::Restored {
            id: id.map(|id| InstanceId::new(id).unwrap()),
            generation: GEN,
        };
        assert!(!handle(&mut out, &mut server, restore(Some(b"web-2"))));
        assert_eq!(server.id.as_bytes(), b"web-2");
        assert!(!handle(&mut out, &mut server, restore(None)));
        assert_eq!(server.id.as_bytes(), b"web-2", "kept without a new one");
        assert!(!handle(
            &mut out,
            &mut server,
            Request::BadRestore("overlong")
        ));
        assert!(handle(&mut out, &mut server, Request::Stop(b"stop")));
        let want = "probe: restored id=web-2 generation=00112233445566778899aabbccddeeff\n\
            probe: restored id=web-2 generation=00112233445566778899aabbccddeeff\n\
            probe: restored error overlong\n\
            probe: control=stop\n";
        assert_eq!(String::from_utf8(out).unwrap(), want);
        let mut fresh = Server::new(5000, Health::Ok);
        let mut out = Vec::new();
        handle(&mut out, &mut fresh, restore(None));
        assert!(out.starts_with(b"probe: restored id=none generation="));
    }
}
