//! `http`: a small HTTP/1.1 server for bootable-app examples and health-check tests. It listens
//! on `0.0.0.0:$PORT` (default 8080) and answers `GET /` with a greeting naming its host and
//! `GET /healthz` with `ok` and `GET /count` with how many requests it has served (this one
//! included: in-memory state, which a snapshot restore keeps); anything else gets 404, a malformed request 400. One thread per
//! connection, `Connection: close`, no dependencies.
//!
//! The name in the greeting is the instance id herd-init last wrote to [`IDENTITY_FILE`],
//! read at each request: that file appears, and changes, when the VM is restored from a
//! snapshot as a clone (`docs/snapshots.md`), so each clone names itself. Without it, the
//! hostname at start.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Requests served since start (in memory only).
static SERVED: AtomicU64 = AtomicU64::new(0);

/// herd-init's record of the instance's current identity after a restore.
const IDENTITY_FILE: &str = "/run/herd/identity.json";

/// A response: status line and body.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: &'static str,
    body: String,
}

/// Routes one request line (`GET /path HTTP/1.1`) for a server named `host` that has served
/// `served` requests, this one included.
fn route(request_line: &str, host: &str, served: u64) -> Response {
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Response {
            status: "400 Bad Request",
            body: "bad request\n".into(),
        };
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return Response {
            status: "400 Bad Request",
            body: "bad request\n".into(),
        };
    }
    if method != "GET" && method != "HEAD" {
        return Response {
            status: "405 Method Not Allowed",
            body: "only GET\n".into(),
        };
    }
    match path.split('?').next().unwrap_or(path) {
        "/" => Response {
            status: "200 OK",
            body: format!("hello from {host}\n"),
        },
        "/healthz" => Response {
            status: "200 OK",
            body: "ok\n".into(),
        },
        "/count" => Response {
            status: "200 OK",
            body: format!("requests={served}\n"),
        },
        _ => Response {
            status: "404 Not Found",
            body: "not found\n".into(),
        },
    }
}

/// The name to greet with: the `instance_id` in the identity file at `path`, else `fallback`.
fn current_name(path: &str, fallback: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .as_deref()
        .and_then(instance_id)
        .unwrap_or(fallback)
        .to_owned()
}

/// `instance_id` of herd-init's compact identity JSON, if it is a string without escapes.
/// Without a JSON parser: `"instance_id":"` cannot occur inside a JSON string (its quotes
/// would be escaped there), so the first occurrence is the member.
fn instance_id(json: &str) -> Option<&str> {
    const MEMBER: &str = r#""instance_id":""#;
    let rest = &json[json.find(MEMBER)? + MEMBER.len()..];
    let value = &rest[..rest.find('"')?];
    (!value.is_empty() && !value.contains('\\')).then_some(value)
}

fn serve(stream: TcpStream, host: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain headers up to the blank line; bodies are not used by any route.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
    let r = route(
        request_line.trim_end(),
        &current_name(IDENTITY_FILE, host),
        served,
    );
    let head_only = request_line.starts_with("HEAD ");
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        r.status,
        r.body.len(),
        if head_only { "" } else { &r.body }
    )?;
    out.flush()
}

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    println!("http: listening on port {port} as {host}");
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                let host = host.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve(s, &host) {
                        eprintln!("http: connection failed: {e}");
                    }
                });
            }
            Err(e) => eprintln!("http: accept failed: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_root_healthz_and_unknown_paths() {
        assert_eq!(
            route("GET / HTTP/1.1", "vm1", 1),
            Response {
                status: "200 OK",
                body: "hello from vm1\n".into()
            }
        );
        assert_eq!(route("GET /healthz?x=1 HTTP/1.0", "vm1", 1).body, "ok\n");
        assert_eq!(route("GET /count HTTP/1.1", "vm1", 7).body, "requests=7\n");
        assert_eq!(
            route("GET /nope HTTP/1.1", "vm1", 1).status,
            "404 Not Found"
        );
        assert_eq!(
            route("POST / HTTP/1.1", "vm1", 1).status,
            "405 Method Not Allowed"
        );
        assert_eq!(route("garbage", "vm1", 1).status, "400 Bad Request");
        assert_eq!(route("GET / SPDY/3", "vm1", 1).status, "400 Bad Request");
    }

    #[test]
    fn the_instance_id_comes_from_the_identity_file_when_there_is_one() {
        let record = r#"{"instance_id":"web-2","hostname":"instance_id","generation_id":"00","network":null}"#;
        assert_eq!(instance_id(record), Some("web-2"));
        for unusable in [
            r#"{"instance_id":null,"hostname":"h"}"#,
            r#"{"instance_id":"","hostname":"h"}"#,
            r#"{"instance_id":"a\"b","hostname":"h"}"#,
            r#"{"hostname":"\"instance_id\":\"x\""}"#,
            r#"{"instance_id":"cut"#,
        ] {
            assert_eq!(instance_id(unusable), None, "{unusable}");
        }
        let path = std::env::temp_dir().join(format!("herd-http-identity-{}", std::process::id()));
        let path_str = path.to_str().unwrap();
        assert_eq!(
            current_name(path_str, "vm1"),
            "vm1",
            "no file: the hostname"
        );
        std::fs::write(&path, record).unwrap();
        assert_eq!(current_name(path_str, "vm1"), "web-2");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn serves_real_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server =
            std::thread::spawn(move || serve(listener.accept().unwrap().0, "test").unwrap());
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut resp = String::new();
        std::io::Read::read_to_string(&mut c, &mut resp).unwrap();
        server.join().unwrap();
        assert!(
            resp.starts_with("HTTP/1.1 200 OK\r\n") && resp.ends_with("\r\n\r\nok\n"),
            "{resp}"
        );
    }
}
