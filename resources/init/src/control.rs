//! herd-vmm's control port (COM2, `/dev/ttyS1` in the guest; `docs/guest-interface.md`):
//! host requests, one line each. `stop`, sent when herd-vmm is asked to stop with a grace
//! period, init treats exactly like a SIGTERM it received (forwarded to the app, which then
//! has the grace period to exit). `restored <json>`, sent to a VM just restored from a
//! snapshot, gives it a new identity ([`crate::identity`]).
//!
//! Pure: [`Lines`] turns the bytes read from the port, in whatever pieces they arrive, into
//! [`Request`]s.

use crate::boot::one_line;
use crate::identity::Identity;

/// Longest line kept; longer ones are dropped whole. The longest request, `restored`, is
/// herd-vmm's own members plus an identity file of at most 3 KiB.
const MAX_LINE: usize = 4096;

/// One host request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Stop the app gracefully.
    Stop,
    /// The VM was restored from a snapshot: take this identity.
    Restored(Box<Identity>),
    /// A `restored` line that does not hold a valid identity: why (reported, then ignored;
    /// the line itself is not repeated, it holds the entropy).
    BadRestore(String),
    /// A line init does not understand (reported, then ignored).
    Unknown(String),
}

/// Splits the port's byte stream into requests.
#[derive(Debug, Default)]
pub struct Lines {
    line: Vec<u8>,
    /// The current line outgrew [`MAX_LINE`]: skip to its end.
    overlong: bool,
}

impl Lines {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes read from the port; calls `on_request` for each complete line.
    pub fn push(&mut self, bytes: &[u8], mut on_request: impl FnMut(Request)) {
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                if !self.overlong && !self.line.is_empty() {
                    on_request(parse(&self.line));
                } else if self.overlong {
                    on_request(Request::Unknown(format!("(a line over {MAX_LINE} bytes)")));
                }
                self.line.clear();
                self.overlong = false;
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            } else {
                self.overlong = true;
            }
        }
    }
}

fn parse(line: &[u8]) -> Request {
    let line = line.trim_ascii();
    if let Some(json) = line.strip_prefix(b"restored ") {
        let Ok(json) = std::str::from_utf8(json) else {
            return Request::BadRestore("not UTF-8".into());
        };
        return match Identity::from_json(json) {
            Ok(identity) => Request::Restored(Box::new(identity)),
            Err(err) => Request::BadRestore(one_line(&err)),
        };
    }
    match line {
        b"stop" => Request::Stop,
        other => Request::Unknown(String::from_utf8_lossy(other).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(chunks: &[&[u8]]) -> Vec<Request> {
        let mut lines = Lines::new();
        let mut out = Vec::new();
        for chunk in chunks {
            lines.push(chunk, |r| out.push(r));
        }
        out
    }

    #[test]
    fn stop_lines_in_any_pieces_become_stop_requests() {
        assert_eq!(requests(&[b"stop\n"]), [Request::Stop]);
        assert_eq!(requests(&[b"st", b"op", b"\n"]), [Request::Stop]);
        assert_eq!(
            requests(&[b"stop\r\nstop\n"]),
            [Request::Stop, Request::Stop]
        );
        assert_eq!(requests(&[b" stop \n\n\n"]), [Request::Stop]);
        assert_eq!(requests(&[b"stop"]), [], "no request before the line ends");
    }

    #[test]
    fn unknown_and_overlong_lines_are_reported_and_do_not_stop() {
        assert_eq!(
            requests(&[b"reboot\nstop\n"]),
            [Request::Unknown("reboot".into()), Request::Stop]
        );
        let long = vec![b'x'; MAX_LINE + 1];
        let got = requests(&[&long, b"\nstop\n"]);
        assert!(matches!(&got[0], Request::Unknown(s) if s.contains("over 4096")));
        assert_eq!(got[1], Request::Stop);
    }

    const RESTORED: &str = r#"restored {"generation_id":"00112233445566778899aabbccddeeff","entropy":"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f","instance_id":"web-1","hostname":"web-1"}"#;

    #[test]
    fn restored_lines_in_pieces_become_identities() {
        let (head, tail) = RESTORED.as_bytes().split_at(100);
        let got = requests(&[head, tail, b"\r\nstop\n"]);
        let Request::Restored(identity) = &got[0] else {
            panic!("{got:?}");
        };
        assert_eq!(identity.instance_id.as_deref(), Some("web-1"));
        assert_eq!(identity.generation_id, "00112233445566778899aabbccddeeff");
        assert_eq!(got[1], Request::Stop);
        // The longest line kept: padding in the JSON up to MAX_LINE bytes.
        let padded = RESTORED.replacen(
            '{',
            &format!("{{{}", " ".repeat(MAX_LINE - RESTORED.len())),
            1,
        );
        assert_eq!(padded.len(), MAX_LINE);
        assert!(matches!(
            &requests(&[padded.as_bytes(), b"\n"])[0],
            Request::Restored(_)
        ));
    }

    #[test]
    fn bad_restored_lines_are_reported_without_their_content() {
        let unknown_member = RESTORED.replace("\"hostname\"", "\"mtu\":1,\"hostname\"");
        let short_entropy = RESTORED.replace("1e1f", "");
        for (line, why) in [
            (&unknown_member[..], "unknown field `mtu`"),
            (&short_entropy[..], "entropy must be 64 hex digits"),
            ("restored {", "not a JSON object"),
        ] {
            let got = requests(&[line.as_bytes(), b"\n"]);
            let [Request::BadRestore(msg)] = &got[..] else {
                panic!("{line}: {got:?}");
            };
            assert!(msg.contains(why), "{line}: {msg}");
            assert!(
                !msg.contains("0a0b0c"),
                "the entropy is not repeated: {msg}"
            );
        }
        let got = requests(&[b"restored {\xff}\n"]);
        assert_eq!(got, [Request::BadRestore("not UTF-8".into())]);
        assert_eq!(
            requests(&[b"restored\n"]),
            [Request::Unknown("restored".into())],
            "no JSON: not a restore at all"
        );
    }
}
