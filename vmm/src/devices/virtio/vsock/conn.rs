//! One vsock stream between a guest port and a host Unix socket, with virtio-vsock's
//! credit-based flow control (virtio 1.x §5.10.6.3): we never send the guest more than its
//! `buf_alloc` minus what it has not yet consumed, and we give the guest `BUF_ALLOC` bytes of
//! credit, buffering what the host socket cannot take yet; a guest that overruns its credit
//! is reset. Consumption is reported with a `CREDIT_UPDATE` once a quarter of the buffer has
//! been forwarded unreported (every packet we send carries `fwd_cnt` too).
//!
//! Host-initiated streams first read Firecracker's `CONNECT <port>\n` line from the host
//! client; bytes after it wait for the guest to accept.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

/// Credit we give the guest per stream: bytes it may send that we have not forwarded.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Longest `CONNECT <port>\n` line we read.
pub const MAX_LINE: usize = 32;

/// Where a stream is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated, waiting for the client's `CONNECT <port>\n`.
    AwaitingLine,
    /// Host-initiated, `REQUEST` sent to the guest, waiting for its `RESPONSE`.
    Connecting,
    /// Data flows both ways.
    Established,
    /// The guest closed cleanly while the host socket still had to take some of its data:
    /// the stream closes (and the guest gets its `RST`) once that data is written.
    Draining,
}

/// Why a stream is torn down.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("guest sent {extra} bytes beyond its credit")]
    CreditOverrun { extra: usize },
    #[error("operation {op} is not valid in state {state:?}")]
    Unexpected { op: u16, state: State },
    #[error("bad connect line from the host client")]
    BadLine,
    #[error("host socket")]
    Io(#[source] io::Error),
}

/// What reading the host side for the guest produced.
#[derive(Debug, PartialEq, Eq)]
pub enum HostRead {
    /// `n` payload bytes for a `RW` packet.
    Data(usize),
    /// The host client closed its sending side.
    Eof,
    /// Nothing now (no data, no credit or not established).
    Nothing,
}

/// One stream.
#[derive(Debug)]
pub struct Conn {
    pub stream: UnixStream,
    pub state: State,
    /// Our port (the host's end).
    pub local_port: u32,
    /// The guest's port.
    pub peer_port: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Payload bytes sent to the guest.
    rx_cnt: u32,
    /// Payload bytes from the guest forwarded to the host socket.
    fwd_cnt: u32,
    last_fwd_sent: u32,
    /// Guest data the host socket has not taken yet.
    tx_buf: Vec<u8>,
    /// Host bytes read before the guest accepted (after the connect line).
    early: Vec<u8>,
    line: Vec<u8>,
    /// The host socket may have bytes (edge-triggered: no `WouldBlock` since the last event).
    pub readable: bool,
    /// The guest will send no more: shut the host side's write half once `tx_buf` drains.
    pub guest_done_sending: bool,
    /// We told the guest the host side will send no more.
    pub eof_sent: bool,
}

impl Conn {
    /// A stream over `stream` between `local_port` and the guest's `peer_port`.
    pub fn new(stream: UnixStream, state: State, local_port: u32, peer_port: u32) -> Self {
        Self {
            stream,
            state,
            local_port,
            peer_port,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_sent: 0,
            tx_buf: Vec::new(),
            early: Vec::new(),
            line: Vec::new(),
            readable: true,
            guest_done_sending: false,
            eof_sent: false,
        }
    }

    /// Takes the guest's view of its buffer from any packet header.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }

    /// Bytes we may still send the guest (0 when a hostile guest reports nonsense).
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// The `fwd_cnt` to put in a header we send (and remembers that the guest saw it).
    pub fn fwd_cnt_for_header(&mut self) -> u32 {
        self.last_fwd_sent = self.fwd_cnt;
        self.fwd_cnt
    }

    /// Whether the guest should hear about consumed bytes now.
    pub fn wants_credit_update(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.last_fwd_sent) >= BUF_ALLOC / 4
    }

    /// Guest payload for the host socket: written now as far as it goes, the rest buffered.
    pub fn send_to_host(&mut self, payload: &[u8]) -> Result<(), ConnError> {
        let unforwarded = self.tx_buf.len() + payload.len();
        if unforwarded > BUF_ALLOC as usize {
            let extra = unforwarded - BUF_ALLOC as usize;
            return Err(ConnError::CreditOverrun { extra });
        }
        let mut rest = payload;
        if self.tx_buf.is_empty() {
            // The usual case: straight from the packet, buffering only what does not fit.
            let n = write_until_blocked(&mut self.stream, payload)?;
            self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
            rest = &payload[n..];
        }
        self.tx_buf.extend_from_slice(rest);
        self.flush()
    }

    /// Writes buffered guest data to the host socket until it would block; shuts the write
    /// half once everything is out and the guest will send no more.
    pub fn flush(&mut self) -> Result<(), ConnError> {
        let n = write_until_blocked(&mut self.stream, &self.tx_buf)?;
        self.tx_buf.drain(..n);
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        if self.tx_buf.is_empty() && self.guest_done_sending {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    /// Whether guest data is still waiting for the host socket.
    pub fn has_unflushed(&self) -> bool {
        !self.tx_buf.is_empty()
    }

    /// Reads the client's `CONNECT <port>\n`; `Some(port)` once it is complete.
    pub fn read_connect_line(&mut self) -> Result<Option<u32>, ConnError> {
        let mut buf = [0u8; MAX_LINE];
        loop {
            let n = match self.stream.read(&mut buf[..MAX_LINE - self.line.len()]) {
                Ok(0) => return Err(ConnError::BadLine),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Ok(None);
                }
                Err(e) => return Err(ConnError::Io(e)),
            };
            self.line.extend_from_slice(&buf[..n]);
            if let Some(end) = self.line.iter().position(|&b| b == b'\n') {
                self.early = self.line.split_off(end + 1);
                return parse_connect_line(&self.line).map(Some);
            }
            if self.line.len() >= MAX_LINE {
                return Err(ConnError::BadLine);
            }
        }
    }

    /// The guest accepted a host-initiated stream: tell the client `OK <port>\n`.
    pub fn accepted(&mut self) -> Result<(), ConnError> {
        let ok = format!("OK {}\n", self.local_port);
        self.stream
            .write_all(ok.as_bytes())
            .map_err(ConnError::Io)?;
        self.state = State::Established;
        Ok(())
    }

    /// Reads host bytes for the guest into `buf`, within the guest's credit.
    pub fn read_for_guest(&mut self, buf: &mut [u8]) -> Result<HostRead, ConnError> {
        let max = buf.len().min(self.peer_credit() as usize);
        if self.state != State::Established || max == 0 || self.eof_sent {
            return Ok(HostRead::Nothing);
        }
        if !self.early.is_empty() {
            let n = max.min(self.early.len());
            buf[..n].copy_from_slice(&self.early[..n]);
            self.early.drain(..n);
            return Ok(self.sent(n));
        }
        if !self.readable {
            return Ok(HostRead::Nothing);
        }
        match self.stream.read(&mut buf[..max]) {
            Ok(0) => Ok(HostRead::Eof),
            Ok(n) => Ok(self.sent(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.readable = false;
                Ok(HostRead::Nothing)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(HostRead::Nothing),
            Err(e) => Err(ConnError::Io(e)),
        }
    }

    fn sent(&mut self, n: usize) -> HostRead {
        self.rx_cnt = self.rx_cnt.wrapping_add(n as u32);
        HostRead::Data(n)
    }

    /// Whether the guest may get data from us now (so the device should try this stream).
    pub fn has_data_for_guest(&self) -> bool {
        self.state == State::Established
            && !self.eof_sent
            && (self.readable || !self.early.is_empty())
            && self.peer_credit() > 0
    }
}

/// Writes `data` to `stream` until it is all out or the socket would block; returns how many
/// bytes went.
fn write_until_blocked(stream: &mut UnixStream, data: &[u8]) -> Result<usize, ConnError> {
    let mut done = 0;
    while done < data.len() {
        match stream.write(&data[done..]) {
            Ok(0) => return Err(ConnError::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ConnError::Io(e)),
        }
    }
    Ok(done)
}

/// `CONNECT <port>\n` (Firecracker's host-side handshake) to the port.
pub fn parse_connect_line(line: &[u8]) -> Result<u32, ConnError> {
    let text = std::str::from_utf8(line).map_err(|_| ConnError::BadLine)?;
    let text = text.strip_suffix('\n').ok_or(ConnError::BadLine)?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let port = text.strip_prefix("CONNECT ").ok_or(ConnError::BadLine)?;
    port.trim().parse().map_err(|_| ConnError::BadLine)
}
