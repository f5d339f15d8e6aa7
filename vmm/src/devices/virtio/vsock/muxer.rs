//! The host side of vsock, Firecracker's convention: a listening Unix socket at `uds_path`
//! where host clients connect and write `CONNECT <port>\n` (answered `OK <hostport>\n` once the
//! guest accepts, or closed when it refuses), and guest connections to host port P made to
//! the Unix socket `<uds_path>_P` (a refusal becomes a `RST`).
//!
//! All sockets are non-blocking and watched by an epoll of our own, registered
//! edge-triggered; its fd is the device's one backend fd, so streams come and go without the
//! event loop knowing. Packets for the guest wait in a bounded control queue (replies) or
//! are read from a stream when the guest has a buffer and credit for them; streams with data
//! take turns. A stream the guest closes cleanly lives on until the host socket has taken
//! everything the guest sent (then the guest gets its `RST`), so a close loses no data.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::conn::{BUF_ALLOC, Conn, ConnError, HostRead, State};
use super::packet::{HOST_CID, Header, Op, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use crate::logging::RateLimit;

/// Replies waiting for guest buffers at most; the transmit queue waits while it is full.
pub const MAX_PENDING: usize = 1024;
/// Streams at most at once; more host clients are closed at accept.
pub const MAX_CONNS: usize = 1024;
/// First local port for host-initiated streams.
const FIRST_HOST_PORT: u32 = 1 << 30;
const LISTENER: u64 = 0;

/// Errors setting up the host side.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error("{0} exists and is not a stale socket")]
    Exists(PathBuf),
    #[error("cannot listen on {0}")]
    Bind(PathBuf, #[source] io::Error),
    #[error("cannot create an epoll")]
    Epoll(#[source] io::Error),
}

/// Streams and the sockets behind them.
pub struct Muxer {
    cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<u64, Conn>,
    by_ports: HashMap<(u32, u32), u64>,
    next_id: u64,
    next_port: u32,
    control: VecDeque<Header>,
    ready: VecDeque<u64>,
    log: RateLimit,
}

/// Binds `path`, replacing a stale socket nobody listens on.
fn bind(path: &Path) -> Result<UnixListener, MuxerError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        let stale = meta.file_type().is_socket() && UnixStream::connect(path).is_err();
        if !stale {
            return Err(MuxerError::Exists(path.to_owned()));
        }
        let _ = std::fs::remove_file(path);
    }
    let l = UnixListener::bind(path).map_err(|e| MuxerError::Bind(path.to_owned(), e))?;
    l.set_nonblocking(true)
        .map_err(|e| MuxerError::Bind(path.to_owned(), e))?;
    Ok(l)
}

fn watch_set() -> EventSet {
    EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED
}

impl Muxer {
    /// Listens on `uds_path` for host clients of the guest with CID `cid`.
    pub fn new(cid: u64, uds_path: &Path) -> Result<Self, MuxerError> {
        let listener = bind(uds_path)?;
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        let ev = EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, LISTENER);
        epoll
            .ctl(ControlOperation::Add, listener.as_raw_fd(), ev)
            .map_err(MuxerError::Epoll)?;
        Ok(Self {
            cid,
            uds_path: uds_path.to_owned(),
            listener,
            epoll,
            conns: HashMap::new(),
            by_ports: HashMap::new(),
            next_id: 1,
            next_port: FIRST_HOST_PORT,
            control: VecDeque::new(),
            ready: VecDeque::new(),
            log: RateLimit::new(5),
        })
    }

    /// The fd the event loop watches (readable when a socket has news).
    pub fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Streams open now.
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether the control queue is full (the transmit queue should wait).
    pub fn backed_up(&self) -> bool {
        self.control.len() >= MAX_PENDING
    }

    /// Forgets every stream (the guest reset the device); the listener stays.
    pub fn reset(&mut self) {
        self.conns.clear();
        self.by_ports.clear();
        self.control.clear();
        self.ready.clear();
    }

    fn warn(&self, what: &str, e: &dyn std::fmt::Display) {
        if self.log.allow() {
            tracing::warn!(device = "virtio-vsock", "{what}: {e}");
        }
    }

    fn header(&mut self, id: Option<u64>, ports: (u32, u32), op: Op, flags: u32) -> Header {
        let fwd_cnt = id
            .and_then(|id| self.conns.get_mut(&id))
            .map_or(0, Conn::fwd_cnt_for_header);
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: ports.0,
            dst_port: ports.1,
            len: 0,
            type_: TYPE_STREAM,
            op: op as u16,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt,
        }
    }

    /// Queues a reply without payload from our `ports.0` to the guest's `ports.1`.
    fn reply(&mut self, id: Option<u64>, ports: (u32, u32), op: Op, flags: u32) {
        let h = self.header(id, ports, op, flags);
        self.control.push_back(h);
    }

    fn add(&mut self, conn: Conn) -> io::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let ev = EpollEvent::new(watch_set(), id);
        self.epoll
            .ctl(ControlOperation::Add, conn.stream.as_raw_fd(), ev)?;
        if conn.state != State::AwaitingLine {
            self.by_ports.insert((conn.local_port, conn.peer_port), id);
        }
        self.conns.insert(id, conn);
        Ok(id)
    }

    /// Drops stream `id` (its socket closes), resetting the guest's end when `rst`.
    fn close(&mut self, id: u64, rst: bool) {
        let Some(mut c) = self.conns.remove(&id) else {
            return;
        };
        let _ = c.flush();
        let ports = (c.local_port, c.peer_port);
        if c.state != State::AwaitingLine {
            self.by_ports.remove(&ports);
        }
        if rst && c.state != State::AwaitingLine {
            self.reply(None, ports, Op::Rst, 0);
        }
    }

    /// The guest closed stream `id` cleanly: close it now, or once the host socket has taken
    /// everything the guest sent (a graceful close loses no data; the guest's `RST` waits).
    fn finish(&mut self, id: u64) {
        if let Some(c) = self.conns.get_mut(&id)
            && c.flush().is_ok()
            && c.has_unflushed()
        {
            c.state = State::Draining;
            return;
        }
        self.close(id, true);
    }

    /// Resets the stream a packet with sound addresses but an unknown type or operation was
    /// for.
    pub fn refuse(&mut self, hdr: &Header) {
        let ports = (hdr.dst_port, hdr.src_port);
        match self.by_ports.get(&ports) {
            Some(&id) => self.close(id, true),
            None => self.reply(None, ports, Op::Rst, 0),
        }
    }

    /// Handles one checked packet from the guest.
    pub fn from_guest(&mut self, hdr: &Header, op: Op, payload: &[u8]) {
        let ports = (hdr.dst_port, hdr.src_port);
        let Some(&id) = self.by_ports.get(&ports) else {
            match op {
                Op::Request => self.guest_connect(hdr),
                Op::Rst => {}
                _ => self.reply(None, ports, Op::Rst, 0),
            }
            return;
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.update_peer_credit(hdr.buf_alloc, hdr.fwd_cnt);
        let outcome = match (op, c.state) {
            (Op::Response, State::Connecting) => c.accepted().map(|()| true),
            (Op::Rw, State::Established) => c.send_to_host(payload).map(|()| true),
            (Op::Shutdown, _) => Ok(shutdown(c, hdr.flags)),
            (Op::CreditUpdate, _) => Ok(true),
            (Op::CreditRequest, _) => {
                self.reply(Some(id), ports, Op::CreditUpdate, 0);
                return;
            }
            (Op::Rst, _) => Ok(false),
            // A second REQUEST, a stray RESPONSE, data before the handshake.
            (op, state) => Err(ConnError::Unexpected {
                op: op as u16,
                state,
            }),
        };
        match outcome {
            Ok(true) => self.credit_check(id),
            Ok(false) if op == Op::Rst => self.close(id, false),
            Ok(false) => self.finish(id),
            Err(e) => {
                self.warn("stream reset", &e);
                self.close(id, true);
            }
        }
    }

    fn credit_check(&mut self, id: u64) {
        if let Some(c) = self.conns.get(&id)
            && c.wants_credit_update()
        {
            let ports = (c.local_port, c.peer_port);
            self.reply(Some(id), ports, Op::CreditUpdate, 0);
        }
    }

    /// The guest connects to host port `hdr.dst_port`: `<uds_path>_<port>`.
    fn guest_connect(&mut self, hdr: &Header) {
        let ports = (hdr.dst_port, hdr.src_port);
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", hdr.dst_port));
        let stream = UnixStream::connect(&path).and_then(|s| {
            s.set_nonblocking(true)?;
            Ok(s)
        });
        let added = match stream {
            Ok(s) if self.conns.len() < MAX_CONNS => {
                let mut c = Conn::new(s, State::Established, ports.0, ports.1);
                c.update_peer_credit(hdr.buf_alloc, hdr.fwd_cnt);
                self.add(c)
            }
            Ok(_) => Err(io::ErrorKind::OutOfMemory.into()),
            Err(e) => Err(e),
        };
        match added {
            Ok(id) => self.reply(Some(id), ports, Op::Response, 0),
            Err(e) => {
                if self.log.allow() {
                    tracing::debug!(device = "virtio-vsock", "guest connect to {path:?}: {e}");
                }
                self.reply(None, ports, Op::Rst, 0);
            }
        }
    }

    /// Handles everything the sockets have to report, without blocking.
    pub fn process_host_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.warn("epoll", &e);
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    LISTENER => self.accept_all(),
                    id => self.socket_event(id, ev.event_set()),
                }
            }
            // Streams accepted just now may already be in the ready list: wait until empty.
            if n == 0 {
                return;
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => return self.warn("accept", &e),
            };
            if self.conns.len() >= MAX_CONNS || stream.set_nonblocking(true).is_err() {
                continue;
            }
            let port = self.free_port();
            let c = Conn::new(stream, State::AwaitingLine, port, 0);
            if let Err(e) = self.add(c) {
                self.warn("cannot watch a host client", &e);
            }
        }
    }

    /// After a restore, host-initiated streams take local ports from a random place: the
    /// guest may still hold streams of the snapshotted VM (a driver that ignores the transport
    /// reset), whose ports this process would otherwise hand out again from the start.
    pub fn skip_stale_ports(&mut self) {
        let mut r = [0u8; 4];
        if crate::sys::random::fill(&mut r).is_ok() {
            // Above the first 2^20 ports, below 2^31: far from the ones used so far.
            let offset = (u32::from_le_bytes(r) % (FIRST_HOST_PORT - (1 << 20))) + (1 << 20);
            self.next_port = FIRST_HOST_PORT + offset;
        }
    }

    /// A local port no stream uses (host-initiated streams get one each).
    fn free_port(&mut self) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            if !self.conns.values().any(|c| c.local_port == p) {
                return p;
            }
        }
    }

    fn socket_event(&mut self, id: u64, set: EventSet) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if set.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            c.readable = true;
        }
        let mut result = Ok(());
        if set.contains(EventSet::OUT) {
            result = c.flush();
        }
        if result.is_ok() && c.state == State::Draining && !c.has_unflushed() {
            return self.close(id, true);
        }
        if result.is_ok() && c.state == State::AwaitingLine && c.readable {
            match c.read_connect_line() {
                Ok(Some(port)) => {
                    c.state = State::Connecting;
                    c.peer_port = port;
                    let ports = (c.local_port, port);
                    self.by_ports.insert(ports, id);
                    self.reply(Some(id), ports, Op::Request, 0);
                    return;
                }
                Ok(None) => {}
                Err(e) => result = Err(e),
            }
        }
        match result {
            Ok(()) => self.credit_check(id),
            Err(e) => {
                tracing::debug!(device = "virtio-vsock", "host stream closed: {e}");
                self.close(id, true);
            }
        }
    }

    /// The next packet for the guest: a reply, or up to `buf.len()` bytes of stream data
    /// (then `len` is set and the payload is in `buf`). Streams take turns: `ready` is one
    /// round, each stream with data in it once, and the next round is built only when it is
    /// done, so a busy stream cannot keep one that got data later waiting.
    pub fn next_packet(&mut self, buf: &mut [u8]) -> Option<Header> {
        if let Some(h) = self.control.pop_front() {
            return Some(h);
        }
        if self.ready.is_empty() {
            let ids = self.conns.iter().filter(|(_, c)| c.has_data_for_guest());
            self.ready = ids.map(|(&id, _)| id).collect();
        }
        while let Some(id) = self.ready.pop_front() {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            let ports = (c.local_port, c.peer_port);
            match c.read_for_guest(buf) {
                Ok(HostRead::Data(n)) => {
                    let mut h = self.header(Some(id), ports, Op::Rw, 0);
                    h.len = n as u32;
                    return Some(h);
                }
                Ok(HostRead::Eof) => {
                    c.eof_sent = true;
                    let flags = SHUTDOWN_SEND;
                    return Some(self.header(Some(id), ports, Op::Shutdown, flags));
                }
                Ok(HostRead::Nothing) => {}
                Err(e) => {
                    tracing::debug!(device = "virtio-vsock", "host stream read: {e}");
                    self.close(id, true);
                    return self.control.pop_front();
                }
            }
        }
        None
    }
}

/// The guest shut down (part of) its end; returns whether the stream lives on.
fn shutdown(c: &mut Conn, flags: u32) -> bool {
    if flags & SHUTDOWN_SEND != 0 {
        c.guest_done_sending = true;
        let _ = c.flush();
    }
    let both = SHUTDOWN_SEND | SHUTDOWN_RCV;
    !(flags & both == both || (flags & SHUTDOWN_SEND != 0 && c.eof_sent))
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

impl std::fmt::Debug for Muxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxer")
            .field("uds_path", &self.uds_path)
            .field("conns", &self.conns.len())
            .field("pending", &self.control.len())
            .finish()
    }
}
