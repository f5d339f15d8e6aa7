//! Health probes: one attempt of a service's check against one instance, bounded by the
//! check's timeout. The supervisor runs a probe loop per instance and counts the results.
//!
//! - vsock: through the instance's herd-vmm socket with Firecracker's convention (`CONNECT
//!   <port>\n`, answered `OK <n>\n`), then `health\n`; the guest answers a line starting `ok`;
//! - tcp: the guest accepts a connection on its address;
//! - http: `GET path` on its address answers with a 2xx or 3xx status.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

use crate::fleet::ProbeKind;

/// Where an instance can be reached.
#[derive(Clone, Debug)]
pub struct Target<'a> {
    pub vsock_socket: &'a Path,
    pub address: Option<Ipv4Addr>,
}

/// Runs one probe; true when the instance passed.
pub async fn probe(kind: &ProbeKind, target: &Target<'_>, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, attempt(kind, target))
        .await
        .unwrap_or(Ok(false))
        .unwrap_or(false)
}

async fn attempt(kind: &ProbeKind, target: &Target<'_>) -> std::io::Result<bool> {
    match kind {
        ProbeKind::Vsock { port } => vsock(target.vsock_socket, *port).await,
        ProbeKind::Tcp { port } => {
            let Some(addr) = target.address else {
                return Ok(false);
            };
            TcpStream::connect((addr, *port)).await.map(|_| true)
        }
        ProbeKind::Http { port, path } => {
            let Some(addr) = target.address else {
                return Ok(false);
            };
            http(addr, *port, path).await
        }
    }
}

async fn vsock(socket: &Path, port: u32) -> std::io::Result<bool> {
    // The socket lies in a directory the jailed herd-vmm owns: connect only to a socket
    // there, never through a link it may have put in its place (seccomp already keeps it
    // from making links; this is the second wall).
    let kind = tokio::fs::symlink_metadata(socket).await?.file_type();
    if !std::os::unix::fs::FileTypeExt::is_socket(&kind) {
        return Ok(false);
    }
    let stream = UnixStream::connect(socket).await?;
    let mut stream = BufReader::new(stream);
    stream
        .get_mut()
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    if !line.starts_with("OK ") {
        return Ok(false);
    }
    stream.get_mut().write_all(b"health\n").await?;
    line.clear();
    stream.read_line(&mut line).await?;
    Ok(line.starts_with("ok"))
}

async fn http(addr: Ipv4Addr, port: u16, path: &str) -> std::io::Result<bool> {
    let stream = TcpStream::connect((addr, port)).await?;
    let mut stream = BufReader::new(stream);
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {addr}:{port}\r\nUser-Agent: herd-agent\r\n\r\n");
    stream.get_mut().write_all(request.as_bytes()).await?;
    let mut status = String::new();
    stream.read_line(&mut status).await?;
    Ok(http_status_ok(&status))
}

/// Whether an HTTP status line reports 2xx or 3xx.
fn http_status_ok(line: &str) -> bool {
    let mut words = line.split_whitespace();
    words.next().is_some_and(|v| v.starts_with("HTTP/1."))
        && words
            .next()
            .and_then(|c| c.parse::<u16>().ok())
            .is_some_and(|c| (200..400).contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn status_lines_2xx_and_3xx_pass() {
        assert!(http_status_ok("HTTP/1.1 200 OK\r\n"));
        assert!(http_status_ok("HTTP/1.0 302 Found\r\n"));
        assert!(!http_status_ok("HTTP/1.1 503 Busy\r\n"));
        assert!(!http_status_ok("SSH-2.0\r\n"));
        assert!(!http_status_ok(""));
    }

    /// A fake herd-vmm vsock socket: answers CONNECT, then the guest's `reply`.
    async fn fake_guest(path: &Path, reply: &'static [u8]) {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).await.unwrap();
                assert_eq!(&buf[..n], b"CONNECT 5000\n");
                s.write_all(b"OK 1073741824\n").await.unwrap();
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
            }
        });
    }

    #[tokio::test(flavor = "current_thread")]
    async fn vsock_probes_pass_on_ok_and_fail_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let kind = ProbeKind::Vsock { port: 5000 };
        let t = Duration::from_secs(5);
        for (name, reply, want) in [("ok", &b"ok\n"[..], true), ("bad", b"fail\n", false)] {
            let path = dir.path().join(name);
            fake_guest(&path, reply).await;
            let target = Target {
                vsock_socket: &path,
                address: None,
            };
            assert_eq!(probe(&kind, &target, t).await, want, "{name}");
        }
        let missing = dir.path().join("missing");
        let target = Target {
            vsock_socket: &missing,
            address: None,
        };
        assert!(!probe(&kind, &target, t).await);
        // A link in the socket's place is not followed, even to a guest that would pass.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("ok"), &link).unwrap();
        let target = Target {
            vsock_socket: &link,
            address: None,
        };
        assert!(!probe(&kind, &target, t).await);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_probe_that_hangs_fails_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hang");
        let _listener = tokio::net::UnixListener::bind(&path).unwrap();
        let target = Target {
            vsock_socket: &path,
            address: None,
        };
        let kind = ProbeKind::Vsock { port: 1 };
        assert!(!probe(&kind, &target, Duration::from_millis(50)).await);
    }
}
