//! herd-vmm's control port (COM2, `/dev/ttyS1` in the guest; `docs/guest-interface.md`):
//! host requests, one line each. Today the only request is `stop`, sent when herd-vmm is asked
//! to stop with a grace period; init treats it exactly like a SIGTERM it received (forwarded
//! to the app, which then has the grace period to exit).
//!
//! Pure: [`Lines`] turns the bytes read from the port, in whatever pieces they arrive, into
//! [`Request`]s.

/// Longest line kept; longer ones are dropped whole (no request is that long).
const MAX_LINE: usize = 128;

/// One host request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Stop the app gracefully.
    Stop,
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
    match line.trim_ascii() {
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
        let long = vec![b'x'; 500];
        let got = requests(&[&long, b"\nstop\n"]);
        assert!(matches!(&got[0], Request::Unknown(s) if s.contains("over 128")));
        assert_eq!(got[1], Request::Stop);
    }
}
