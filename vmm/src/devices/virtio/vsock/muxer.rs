//! The host side of hybrid vsock: the listening Unix socket, host streams
//! waiting for their `CONNECT <port>` line, the connection table keyed by
//! (local port, peer port), and the queue of packets owed to the guest.
//!
//! The muxer is driven through four calls: [`Muxer::handle_event`] for a
//! readiness event on one of its file descriptors, [`Muxer::send_pkt`] for a
//! guest packet, [`Muxer::recv_pkt`] to fill a guest RX buffer and
//! [`Muxer::has_pending_rx`]. It registers its descriptors through an
//! [`EventRegistry`] with tags from [`TAG_DEVICE_BASE`] up, so the device
//! plugs it into the event manager and tests into a plain epoll.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io::{self, ErrorKind, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_manager::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{ConnState, Connection};
use super::packet::{PacketHeader, HOST_CID, OP_REQUEST, OP_RST, TYPE_STREAM};
use crate::devices::virtio::TAG_DEVICE_BASE;
use crate::logger::{guest_debug, guest_error, guest_info, guest_warn, ErrorChain};

/// Tag of the listening socket.
pub const TAG_LISTENER: u32 = TAG_DEVICE_BASE;
/// Tag of the timer that enforces connect, `CONNECT`-line and shutdown deadlines.
pub const TAG_TIMER: u32 = TAG_DEVICE_BASE + 1;
/// Host streams get tags from here up.
const TAG_FIRST_STREAM: u32 = TAG_DEVICE_BASE + 2;

/// Longest `CONNECT <port>` line accepted, newline excluded.
pub const MAX_CONNECT_LINE: usize = 32;
/// RSTs owed to the guest for packets that match no connection; beyond
/// this they are dropped (the guest times out instead).
const MAX_QUEUED_RST: usize = 1024;
/// Host-initiated connections use local ports in [2^30, 2^31).
const LOCAL_PORT_MIN: u32 = 1 << 30;
const LOCAL_PORT_MAX: u32 = (1 << 31) - 1;
/// How long to stop accepting after `accept` fails for lack of resources.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Registration of file descriptors with an event loop.
pub trait EventRegistry {
    fn register(&mut self, fd: RawFd, tag: u32, events: EventSet) -> io::Result<()>;
    fn reregister(&mut self, fd: RawFd, tag: u32, events: EventSet) -> io::Result<()>;
    fn deregister(&mut self, fd: RawFd, tag: u32) -> io::Result<()>;
}

/// Limits and timeouts of the host side.
#[derive(Clone, Debug)]
pub struct MuxerOptions {
    /// Connections plus host streams still waiting for their `CONNECT` line.
    pub max_connections: usize,
    /// A host stream must send its `CONNECT` line within this.
    pub connect_line_timeout: Duration,
    /// The guest must answer a host `CONNECT` (RESPONSE or RST) within this.
    pub connect_timeout: Duration,
    /// A closing connection gets this long to finish before it is reset.
    pub shutdown_timeout: Duration,
}

impl Default for MuxerOptions {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            connect_line_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error("binding the vsock Unix socket {path:?}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating the vsock timer")]
    Timer(#[source] vmm_sys_util::errno::Error),
    #[error("registering event source {tag:#x} with the event loop")]
    Register {
        tag: u32,
        #[source]
        source: io::Error,
    },
    #[error("connecting to host socket {path:?}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the CONNECT line")]
    ConnectRead(#[source] io::Error),
    #[error("host stream closed before a complete CONNECT line")]
    ConnectEof,
    #[error("CONNECT line longer than {MAX_CONNECT_LINE} bytes")]
    ConnectLineTooLong,
    #[error("malformed CONNECT line {line:?}")]
    ConnectLine { line: String },
    #[error("connection limit of {max} reached")]
    TooManyConnections { max: usize },
}

/// A connection's identity: host-side port and guest-side port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

struct ConnEntry {
    conn: Connection,
    tag: u32,
    /// What the host stream is registered for; `None` if it is not.
    registered: Option<EventSet>,
    /// The key sits in `rx_conns`.
    queued: bool,
    /// The local port came from `alloc_local_port`.
    allocated_port: bool,
}

/// A host stream that has not sent its `CONNECT` line yet.
struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    timer: TimerFd,
    timer_deadline: Option<Instant>,
    opts: MuxerOptions,
    active: bool,
    /// Set while accepting is paused after a resource error.
    accept_paused_until: Option<Instant>,
    conns: HashMap<ConnKey, ConnEntry>,
    tags: HashMap<u32, ConnKey>,
    pending: HashMap<u32, PendingHost>,
    next_tag: u32,
    /// Connections that have something to tell the guest.
    rx_conns: VecDeque<ConnKey>,
    /// RSTs owed to the guest; they go out before anything else.
    rx_rsts: VecDeque<ConnKey>,
    local_ports: HashSet<u32>,
    next_local_port: u32,
}

impl Muxer {
    /// Bind the listening socket at `uds_path`; it is removed again when
    /// the muxer is dropped. Nothing is registered until [`Self::activate`].
    pub fn new(guest_cid: u64, uds_path: &Path, opts: MuxerOptions) -> Result<Self, MuxerError> {
        let bind_err = |source| MuxerError::Bind {
            path: uds_path.to_owned(),
            source,
        };
        // Everything that can fail before the bind: once bound, the socket
        // file is only removed by `Drop`.
        let timer = TimerFd::new().map_err(MuxerError::Timer)?;
        let listener = UnixListener::bind(uds_path).map_err(bind_err)?;
        let muxer = Self {
            guest_cid,
            uds_path: uds_path.to_owned(),
            listener,
            timer,
            timer_deadline: None,
            opts,
            active: false,
            accept_paused_until: None,
            conns: HashMap::new(),
            tags: HashMap::new(),
            pending: HashMap::new(),
            next_tag: TAG_FIRST_STREAM,
            rx_conns: VecDeque::new(),
            rx_rsts: VecDeque::new(),
            local_ports: HashSet::new(),
            next_local_port: LOCAL_PORT_MAX,
        };
        muxer.listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(muxer)
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Start accepting host connections (once the guest driver is up).
    pub fn activate(&mut self, reg: &mut dyn EventRegistry) -> Result<(), MuxerError> {
        if self.active {
            return Ok(());
        }
        reg.register(self.listener.as_raw_fd(), TAG_LISTENER, EventSet::IN)
            .map_err(|source| MuxerError::Register {
                tag: TAG_LISTENER,
                source,
            })?;
        if let Err(source) = reg.register(self.timer.as_raw_fd(), TAG_TIMER, EventSet::IN) {
            let _ = reg.deregister(self.listener.as_raw_fd(), TAG_LISTENER);
            return Err(MuxerError::Register {
                tag: TAG_TIMER,
                source,
            });
        }
        self.active = true;
        Ok(())
    }

    /// Drop every connection and stop polling (the guest driver went away).
    /// The listening socket stays bound: host connections queue until the
    /// next activation.
    pub fn deactivate(&mut self, reg: &mut dyn EventRegistry) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove_conn(key, reg);
        }
        let tags: Vec<u32> = self.pending.keys().copied().collect();
        for tag in tags {
            self.close_pending(tag, reg);
        }
        self.rx_conns.clear();
        self.rx_rsts.clear();
        if self.active {
            if self.accept_paused_until.take().is_none() {
                let _ = reg.deregister(self.listener.as_raw_fd(), TAG_LISTENER);
            }
            let _ = reg.deregister(self.timer.as_raw_fd(), TAG_TIMER);
            self.active = false;
        }
        self.accept_paused_until = None;
        self.timer_deadline = None;
        if let Err(e) = self.timer.clear() {
            guest_warn!("vsock: disarming timer: {e}");
        }
    }

    /// Whether the guest is owed a packet.
    pub fn has_pending_rx(&self) -> bool {
        !self.rx_rsts.is_empty() || !self.rx_conns.is_empty()
    }

    /// Number of connections in the table.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// A readiness event for `tag`.
    pub fn handle_event(&mut self, tag: u32, events: EventSet, reg: &mut dyn EventRegistry) {
        match tag {
            TAG_LISTENER => self.accept_host(reg),
            TAG_TIMER => self.sweep(reg),
            _ if self.pending.contains_key(&tag) => self.read_connect_line(tag, reg),
            _ => match self.tags.get(&tag) {
                Some(&key) => {
                    if let Some(e) = self.conns.get_mut(&key) {
                        e.conn.notify(events);
                    }
                    self.sync(key, reg);
                }
                None => guest_debug!("vsock: event {events:?} for unknown tag {tag:#x}"),
            },
        }
    }

    /// A packet from the guest; `data` is its payload for `OP_RW`.
    pub fn send_pkt(&mut self, hdr: &PacketHeader, data: &[u8], reg: &mut dyn EventRegistry) {
        if hdr.dst_cid != HOST_CID || hdr.src_cid != self.guest_cid {
            guest_warn!(
                "vsock: dropping packet from CID {} to CID {}",
                hdr.src_cid,
                hdr.dst_cid
            );
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if hdr.type_ != TYPE_STREAM {
            if hdr.op != OP_RST {
                self.enqueue_rst(key);
            }
            return;
        }
        let Some(entry) = self.conns.get_mut(&key) else {
            match hdr.op {
                OP_REQUEST => self.connect_to_host(hdr, reg),
                OP_RST => {}
                _ => self.enqueue_rst(key),
            }
            return;
        };
        if hdr.op == OP_RST {
            self.remove_conn(key, reg);
            return;
        }
        entry.conn.send_pkt(hdr, data);
        self.sync(key, reg);
    }

    /// The next packet for the guest, its data (at most `buf.len()` bytes)
    /// read into `buf`.
    pub fn recv_pkt(
        &mut self,
        buf: &mut [u8],
        reg: &mut dyn EventRegistry,
    ) -> Option<PacketHeader> {
        // Each queued connection gets one try; those with more to say go to
        // the back, so one busy stream cannot starve the others.
        for _ in 0..self.rx_conns.len() + 1 {
            if let Some(key) = self.rx_rsts.pop_front() {
                return Some(self.rst_header(key));
            }
            let key = self.rx_conns.pop_front()?;
            let Some(entry) = self.conns.get_mut(&key) else {
                continue;
            };
            entry.queued = false;
            let pkt = entry.conn.recv_pkt(buf);
            self.sync(key, reg);
            if pkt.is_some() {
                return pkt;
            }
        }
        self.rx_rsts.pop_front().map(|key| self.rst_header(key))
    }

    fn rst_header(&self, key: ConnKey) -> PacketHeader {
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.local_port,
            dst_port: key.peer_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..PacketHeader::default()
        }
    }

    fn enqueue_rst(&mut self, key: ConnKey) {
        if self.rx_rsts.len() >= MAX_QUEUED_RST {
            guest_warn!("vsock: RST queue full; dropping RST for {key:?}");
            return;
        }
        self.rx_rsts.push_back(key);
    }

    /// Apply what a connection wants after it changed: drop it if it is
    /// over, queue it for RX, arm its deadline, update its registration.
    fn sync(&mut self, key: ConnKey, reg: &mut dyn EventRegistry) {
        let Some(e) = self.conns.get_mut(&key) else {
            return;
        };
        if e.conn.state() == ConnState::Killed {
            if let Some(reason) = e.conn.take_kill_reason() {
                guest_info!("vsock: resetting {key:?}: {}", ErrorChain(&reason));
            }
            self.remove_conn(key, reg);
            self.enqueue_rst(key);
            return;
        }
        if e.conn.has_pending_rx() && !e.queued {
            e.queued = true;
            self.rx_conns.push_back(key);
        }
        let want = e.conn.interest();
        let fd = e.conn.as_raw_fd();
        let res = match (e.registered, want) {
            (old, new) if old == new => Ok(()),
            (None, Some(events)) => reg.register(fd, e.tag, events),
            (Some(_), Some(events)) => reg.reregister(fd, e.tag, events),
            (Some(_), None) => reg.deregister(fd, e.tag),
            (None, None) => Ok(()),
        };
        let deadline = e.conn.deadline();
        match res {
            Ok(()) => e.registered = want,
            Err(err) => {
                guest_error!("vsock: updating event registration of {key:?}: {err}");
                self.remove_conn(key, reg);
                self.enqueue_rst(key);
                return;
            }
        }
        if let Some(deadline) = deadline {
            self.arm_timer(deadline);
        }
    }

    fn remove_conn(&mut self, key: ConnKey, reg: &mut dyn EventRegistry) {
        let Some(e) = self.conns.remove(&key) else {
            return;
        };
        if e.registered.is_some() {
            if let Err(err) = reg.deregister(e.conn.as_raw_fd(), e.tag) {
                guest_warn!("vsock: deregistering {key:?}: {err}");
            }
        }
        self.tags.remove(&e.tag);
        if e.allocated_port {
            self.local_ports.remove(&key.local_port);
        }
        // Dropping the entry closes the host stream.
    }

    fn has_room(&self) -> bool {
        self.conns.len() + self.pending.len() < self.opts.max_connections
    }

    fn alloc_tag(&mut self) -> u32 {
        loop {
            let tag = self.next_tag;
            self.next_tag = tag.checked_add(1).unwrap_or(TAG_FIRST_STREAM);
            if !self.tags.contains_key(&tag) && !self.pending.contains_key(&tag) {
                return tag;
            }
        }
    }

    /// A free local port for a host-initiated connection to `peer_port`.
    /// Terminates: at most `max_connections` ports are in use out of 2^30.
    fn alloc_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = if self.next_local_port >= LOCAL_PORT_MAX {
                LOCAL_PORT_MIN
            } else {
                self.next_local_port + 1
            };
            self.next_local_port = port;
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.conns.contains_key(&key) && self.local_ports.insert(port) {
                return port;
            }
        }
    }

    fn accept_host(&mut self, reg: &mut dyn EventRegistry) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    // Out of descriptors or memory: the listener stays ready,
                    // so stop polling it for a while rather than spin.
                    guest_warn!("vsock: accepting a host connection: {e}; pausing");
                    let until = Instant::now() + ACCEPT_BACKOFF;
                    let _ = reg.deregister(self.listener.as_raw_fd(), TAG_LISTENER);
                    self.accept_paused_until = Some(until);
                    self.arm_timer(until);
                    return;
                }
            };
            if !self.has_room() {
                guest_warn!(
                    "vsock: closing host stream: {}",
                    MuxerError::TooManyConnections {
                        max: self.opts.max_connections
                    }
                );
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                guest_warn!("vsock: setting a host stream non-blocking: {e}");
                continue;
            }
            let tag = self.alloc_tag();
            if let Err(e) = reg.register(stream.as_raw_fd(), tag, EventSet::IN) {
                guest_error!("vsock: registering a host stream: {e}");
                continue;
            }
            let deadline = Instant::now() + self.opts.connect_line_timeout;
            self.pending.insert(
                tag,
                PendingHost {
                    stream,
                    line: Vec::with_capacity(MAX_CONNECT_LINE),
                    deadline,
                },
            );
            self.arm_timer(deadline);
        }
    }

    fn close_pending(&mut self, tag: u32, reg: &mut dyn EventRegistry) {
        if let Some(p) = self.pending.remove(&tag) {
            if let Err(e) = reg.deregister(p.stream.as_raw_fd(), tag) {
                guest_warn!("vsock: deregistering a host stream: {e}");
            }
        }
    }

    /// Read what there is of a pending stream's `CONNECT` line, a byte at a
    /// time so nothing after the newline is consumed.
    fn read_connect_line(&mut self, tag: u32, reg: &mut dyn EventRegistry) {
        let Some(p) = self.pending.get_mut(&tag) else {
            return;
        };
        let outcome = loop {
            let mut byte = [0u8; 1];
            match p.stream.read(&mut byte) {
                Ok(0) => break Err(MuxerError::ConnectEof),
                Ok(_) if byte[0] == b'\n' => break parse_connect_line(&p.line).map(Some),
                Ok(_) if p.line.len() >= MAX_CONNECT_LINE => {
                    break Err(MuxerError::ConnectLineTooLong)
                }
                Ok(_) => p.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Err(MuxerError::ConnectRead(e)),
            }
        };
        match outcome {
            Ok(None) => {}
            Ok(Some(port)) => self.start_host_connection(tag, port, reg),
            Err(e) => {
                guest_info!("vsock: closing host stream: {}", ErrorChain(&e));
                self.close_pending(tag, reg);
            }
        }
    }

    /// The pending stream `tag` asked for guest port `peer_port`.
    fn start_host_connection(&mut self, tag: u32, peer_port: u32, reg: &mut dyn EventRegistry) {
        let Some(p) = self.pending.remove(&tag) else {
            return;
        };
        let local_port = self.alloc_local_port(peer_port);
        let key = ConnKey {
            local_port,
            peer_port,
        };
        let conn = Connection::local_init(
            p.stream,
            self.guest_cid,
            (local_port, peer_port),
            Instant::now() + self.opts.connect_timeout,
            self.opts.shutdown_timeout,
        );
        let entry = ConnEntry {
            conn,
            tag,
            registered: Some(EventSet::IN),
            queued: false,
            allocated_port: true,
        };
        self.conns.insert(key, entry);
        self.tags.insert(tag, key);
        self.sync(key, reg);
    }

    /// The guest asked for host port `hdr.dst_port`: connect to
    /// `<uds_path>_<port>`, RESPONSE on success, RST otherwise.
    fn connect_to_host(&mut self, hdr: &PacketHeader, reg: &mut dyn EventRegistry) {
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if !self.has_room() {
            guest_warn!(
                "vsock: refusing guest connection {key:?}: {}",
                MuxerError::TooManyConnections {
                    max: self.opts.max_connections
                }
            );
            self.enqueue_rst(key);
            return;
        }
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", hdr.dst_port));
        let path = PathBuf::from(path);
        let stream = match connect_nonblocking(&path) {
            Ok(stream) => stream,
            Err(source) => {
                let e = MuxerError::Connect { path, source };
                guest_debug!(
                    "vsock: refusing guest connection {key:?}: {}",
                    ErrorChain(&e)
                );
                self.enqueue_rst(key);
                return;
            }
        };
        let conn = Connection::peer_init(stream, self.guest_cid, hdr, self.opts.shutdown_timeout);
        let tag = self.alloc_tag();
        let entry = ConnEntry {
            conn,
            tag,
            registered: None,
            queued: false,
            allocated_port: false,
        };
        self.conns.insert(key, entry);
        self.tags.insert(tag, key);
        self.sync(key, reg);
    }

    /// Make the timer fire no later than `deadline`.
    fn arm_timer(&mut self, deadline: Instant) {
        if self.timer_deadline.is_some_and(|d| d <= deadline) {
            return;
        }
        let after = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        match self.timer.reset(after, None) {
            Ok(()) => self.timer_deadline = Some(deadline),
            Err(e) => guest_error!("vsock: arming timer: {e}"),
        }
    }

    /// The timer fired: expire what is due and re-arm for the rest. The
    /// timer is never read: re-arming or clearing it resets its readiness,
    /// and a read after a re-arm would block.
    fn sweep(&mut self, reg: &mut dyn EventRegistry) {
        let now = Instant::now();
        self.timer_deadline = None;
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            if let Err(e) = reg.register(self.listener.as_raw_fd(), TAG_LISTENER, EventSet::IN) {
                guest_error!("vsock: resuming accept: {e}");
            }
        }
        let expired: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&tag, _)| tag)
            .collect();
        for tag in expired {
            guest_info!("vsock: host stream sent no CONNECT line in time");
            self.close_pending(tag, reg);
        }
        let expired: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, e)| e.conn.deadline().is_some_and(|d| d <= now))
            .map(|(&key, _)| key)
            .collect();
        for key in expired {
            if let Some(e) = self.conns.get_mut(&key) {
                e.conn.check_deadline(now);
            }
            self.sync(key, reg);
        }
        let next = self
            .pending
            .values()
            .map(|p| p.deadline)
            .chain(self.conns.values().filter_map(|e| e.conn.deadline()))
            .chain(self.accept_paused_until)
            .min();
        match next {
            Some(deadline) => self.arm_timer(deadline),
            None => {
                if let Err(e) = self.timer.clear() {
                    guest_error!("vsock: disarming timer: {e}");
                }
            }
        }
    }
}

impl Drop for Muxer {
    #[allow(clippy::disallowed_macros, reason = "once, when the device goes")]
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.uds_path) {
            log::warn!("vsock: removing {:?}: {e}", self.uds_path);
        }
    }
}

/// Parse `CONNECT <port>` (keyword in any case, `\r` tolerated).
fn parse_connect_line(line: &[u8]) -> Result<u32, MuxerError> {
    let bad = || MuxerError::ConnectLine {
        line: String::from_utf8_lossy(line).into_owned(),
    };
    let text = std::str::from_utf8(line).map_err(|_| bad())?;
    let mut words = text.trim_end_matches('\r').split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some(cmd), Some(port), None) if cmd.eq_ignore_ascii_case("connect") => {
            port.parse().map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

/// Connect to the Unix socket at `path` without blocking: a listener whose
/// backlog is full fails with `WouldBlock` instead of stalling the event
/// loop (std's `UnixStream::connect` would block).
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    let mut addr = libc::sockaddr_un {
        sun_family: libc::AF_UNIX as libc::sa_family_t,
        sun_path: [0; 108],
    };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket(2) takes no pointers; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is an initialized sockaddr_un that outlives the call,
    // and `len` (at most its size, checked above) covers the family and the
    // NUL-terminated path.
    let ret = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(sock))
}

#[cfg(test)]
mod tests;
