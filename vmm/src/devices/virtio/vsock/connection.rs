//! One vsock stream between a guest socket and a host Unix stream: the
//! connection state machine, credit accounting in both directions, and the
//! guest bytes the host has not taken yet.
//!
//! Guest to host: bytes go straight to the host stream; what it will not take
//! now waits in `tx_buf`, which the credit hull advertises
//! ([`CONN_BUF_SIZE`]) bounds. A guest that sends past its credit is reset.
//! Host to guest: nothing is buffered; bytes are read from the host stream
//! straight into a guest RX buffer, never more than the guest's credit.
//!
//! The connection never touches the event loop. [`Connection::interest`]
//! says what it wants polled; the muxer applies it after every call.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use event_manager::EventSet;

use super::packet::{
    PacketHeader, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use crate::logger::guest_debug;

/// The receive buffer hull advertises to the guest (`buf_alloc`) per
/// connection: the most guest bytes it ever holds for a slow host reader.
pub const CONN_BUF_SIZE: u32 = 64 * 1024;
/// Send the guest a credit update once it believes less than this is free.
pub const CREDIT_UPDATE_THRESHOLD: u32 = 16 * 1024;

/// Packets the connection owes the guest.
const PENDING_REQUEST: u8 = 1 << 0;
const PENDING_RESPONSE: u8 = 1 << 1;
const PENDING_SHUTDOWN: u8 = 1 << 2;
/// The host stream may have bytes (or EOF) for the guest.
const PENDING_RW: u8 = 1 << 3;
const PENDING_CREDIT_UPDATE: u8 = 1 << 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: the REQUEST is queued or sent; waiting for RESPONSE.
    LocalInit,
    /// Guest-initiated: the host stream is connected; RESPONSE not yet sent.
    PeerInit,
    /// Data flows; either side may have half-closed.
    Established,
    /// One side closed both directions: the connection ends with an RST when
    /// the guest answers, the buffered bytes reach the host, or the deadline
    /// passes.
    Shutdown,
    /// Over: the muxer drops it, closing the host stream, and resets the guest.
    Killed,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("writing to the host stream")]
    HostWrite(#[source] io::Error),
    #[error("reading from the host stream")]
    HostRead(#[source] io::Error),
    #[error("host stream took {written} of the {len} bytes of the connect acknowledgement")]
    ShortAck { written: usize, len: usize },
    #[error(
        "guest sent {len} bytes with {buffered} buffered, past its {CONN_BUF_SIZE}-byte credit"
    )]
    CreditExceeded { len: usize, buffered: usize },
    #[error("guest sent data in state {state:?} after shutdown flags {peer_shutdown:#x}")]
    UnexpectedData {
        state: ConnState,
        peer_shutdown: u32,
    },
    #[error("host stream hung up in state {state:?}")]
    HostHangup { state: ConnState },
    #[error("timed out in state {state:?}")]
    Timeout { state: ConnState },
}

pub struct Connection {
    stream: UnixStream,
    state: ConnState,
    guest_cid: u64,
    local_port: u32,
    peer_port: u32,
    pending: u8,
    deadline: Option<Instant>,
    shutdown_timeout: Duration,
    kill_reason: Option<ConnectionError>,

    /// Guest bytes the host stream has not taken yet.
    tx_buf: VecDeque<u8>,
    /// Guest bytes accepted, in total.
    recv_cnt: Wrapping<u32>,
    /// Guest bytes written to the host stream, in total (our `fwd_cnt`).
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    last_fwd_cnt_sent: Wrapping<u32>,

    /// The guest's receive buffer and how much of it it has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest, in total.
    rx_cnt: Wrapping<u32>,
    /// A CREDIT_REQUEST is out and the guest's credit is still zero.
    credit_requested: bool,

    /// SHUTDOWN flags the guest sent (ORed).
    peer_shutdown: u32,
    /// SHUTDOWN flags we sent (or owe) the guest.
    local_shutdown: u32,
    /// The host stream reached end of file: it sends no more.
    host_eof: bool,
    /// The host stream hung up: it neither sends nor receives any more.
    host_hup: bool,
    /// We shut down the write half of the host stream.
    host_write_shut: bool,
}

impl Connection {
    /// A connection the host asked for with `CONNECT`; answers within `deadline`.
    pub fn local_init(
        stream: UnixStream,
        guest_cid: u64,
        (local_port, peer_port): (u32, u32),
        deadline: Instant,
        shutdown_timeout: Duration,
    ) -> Self {
        let mut c = Self::new(stream, guest_cid, local_port, peer_port, shutdown_timeout);
        c.state = ConnState::LocalInit;
        c.pending = PENDING_REQUEST;
        c.deadline = Some(deadline);
        c
    }

    /// A connection the guest asked for with `request`, already connected on
    /// the host side.
    pub fn peer_init(
        stream: UnixStream,
        guest_cid: u64,
        request: &PacketHeader,
        shutdown_timeout: Duration,
    ) -> Self {
        let mut c = Self::new(
            stream,
            guest_cid,
            request.dst_port,
            request.src_port,
            shutdown_timeout,
        );
        c.state = ConnState::PeerInit;
        c.pending = PENDING_RESPONSE;
        c.peer_buf_alloc = request.buf_alloc;
        c.peer_fwd_cnt = Wrapping(request.fwd_cnt);
        c
    }

    fn new(
        stream: UnixStream,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
        shutdown_timeout: Duration,
    ) -> Self {
        Self {
            stream,
            state: ConnState::LocalInit,
            guest_cid,
            local_port,
            peer_port,
            pending: 0,
            deadline: None,
            shutdown_timeout,
            kill_reason: None,
            tx_buf: VecDeque::new(),
            recv_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            credit_requested: false,
            peer_shutdown: 0,
            local_shutdown: 0,
            host_eof: false,
            host_hup: false,
            host_write_shut: false,
        }
    }

    pub fn state(&self) -> ConnState {
        self.state
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn has_pending_rx(&self) -> bool {
        self.pending != 0
    }

    /// Guest bytes waiting for the host stream.
    pub fn tx_buffered(&self) -> usize {
        self.tx_buf.len()
    }

    /// Why the connection was killed, if it died of an error (once).
    pub fn take_kill_reason(&mut self) -> Option<ConnectionError> {
        self.kill_reason.take()
    }

    /// What to poll the host stream for: `None` to leave it out of the
    /// event loop altogether. An empty set still reports a hang-up, which is
    /// how a connection notices the host going away while it waits on the
    /// guest; once the hang-up is seen it is never asked for again, so a
    /// closed stream cannot spin the loop.
    pub fn interest(&self) -> Option<EventSet> {
        if self.state == ConnState::Killed {
            return None;
        }
        let mut events = EventSet::empty();
        if !self.tx_buf.is_empty() {
            events |= EventSet::OUT;
        }
        // While an Rw is pending the bytes wait for a guest RX buffer;
        // polling IN meanwhile would only spin.
        if self.may_read_host() && self.pending & PENDING_RW == 0 && self.peer_credit() > 0 {
            events |= EventSet::IN;
        }
        if events.is_empty() && self.host_hup {
            None
        } else {
            Some(events)
        }
    }

    /// The event loop reported `events` on the host stream.
    pub fn notify(&mut self, events: EventSet) {
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            self.host_hup = true;
            match self.state {
                ConnState::LocalInit | ConnState::PeerInit => {
                    let state = self.state;
                    self.kill(ConnectionError::HostHangup { state });
                    return;
                }
                // Bytes may still wait in the stream: read them to EOF first.
                _ if self.may_read_host() => self.pending |= PENDING_RW,
                _ => self.host_closed(),
            }
        }
        if events.contains(EventSet::IN) && self.may_read_host() {
            self.pending |= PENDING_RW;
        }
        if events.contains(EventSet::OUT) {
            self.flush();
        }
    }

    /// Kill the connection if its deadline has passed.
    pub fn check_deadline(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| d <= now) {
            let state = self.state;
            self.kill(ConnectionError::Timeout { state });
        }
    }

    /// A packet from the guest for this connection (RST is the muxer's).
    pub fn send_pkt(&mut self, hdr: &PacketHeader, data: &[u8]) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
        match (self.state, hdr.op) {
            (ConnState::Established | ConnState::Shutdown, OP_RW)
                if self.peer_shutdown & SHUTDOWN_SEND == 0 =>
            {
                self.write_from_guest(data)
            }
            (state, OP_RW) => self.kill(ConnectionError::UnexpectedData {
                state,
                peer_shutdown: self.peer_shutdown,
            }),
            (ConnState::LocalInit, OP_RESPONSE) => {
                self.state = ConnState::Established;
                self.deadline = None;
                self.acknowledge_host();
            }
            (ConnState::Established | ConnState::Shutdown, OP_SHUTDOWN) => {
                self.peer_shutdown(hdr.flags)
            }
            // The credit came with the header.
            (_, OP_CREDIT_UPDATE) => {}
            (_, OP_CREDIT_REQUEST) => self.pending |= PENDING_CREDIT_UPDATE,
            (state, op) => guest_debug!(
                "vsock: ignoring op {op} in state {state:?} (lp={}, pp={})",
                self.local_port,
                self.peer_port
            ),
        }
    }

    /// The next packet for the guest, with up to `buf.len()` bytes of data
    /// read into `buf`; `None` if there is nothing to say now.
    pub fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<PacketHeader> {
        if self.take(PENDING_RESPONSE) {
            self.state = ConnState::Established;
            return Some(self.emit(OP_RESPONSE, 0, 0));
        }
        if self.take(PENDING_REQUEST) {
            return Some(self.emit(OP_REQUEST, 0, 0));
        }
        if self.take(PENDING_SHUTDOWN) {
            return Some(self.emit(OP_SHUTDOWN, 0, self.local_shutdown));
        }
        if self.pending & PENDING_RW != 0 {
            if let Some(hdr) = self.read_host(buf) {
                return Some(hdr);
            }
        }
        if self.take(PENDING_CREDIT_UPDATE) {
            return Some(self.emit(OP_CREDIT_UPDATE, 0, 0));
        }
        None
    }

    fn take(&mut self, bit: u8) -> bool {
        let set = self.pending & bit != 0;
        self.pending &= !bit;
        set
    }

    /// A header for the guest. Every packet carries our credit, so none is
    /// owed after it.
    fn emit(&mut self, op: u16, len: u32, flags: u32) -> PacketHeader {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending &= !PENDING_CREDIT_UPDATE;
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    fn kill(&mut self, reason: ConnectionError) {
        self.finish();
        self.kill_reason = Some(reason);
    }

    /// End the connection without error: the muxer sends the RST.
    fn finish(&mut self) {
        self.state = ConnState::Killed;
        self.pending = 0;
        self.deadline = None;
        self.tx_buf.clear();
    }

    fn may_read_host(&self) -> bool {
        self.state == ConnState::Established
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
    }

    /// How many bytes the guest can take now.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn read_host(&mut self, buf: &mut [u8]) -> Option<PacketHeader> {
        if !self.may_read_host() {
            self.pending &= !PENDING_RW;
            return None;
        }
        let credit = self.peer_credit() as usize;
        if credit == 0 {
            // IN is not polled again until the guest grants credit.
            self.pending &= !PENDING_RW;
            if self.credit_requested {
                return None;
            }
            self.credit_requested = true;
            return Some(self.emit(OP_CREDIT_REQUEST, 0, 0));
        }
        let max = buf.len().min(credit);
        if max == 0 {
            // This RX buffer has no room for data; keep Rw for the next one.
            return None;
        }
        match self.stream.read(&mut buf[..max]) {
            Ok(0) => {
                self.host_eof = true;
                self.pending &= !(PENDING_RW | PENDING_SHUTDOWN);
                self.local_shutdown |= if self.host_hup {
                    SHUTDOWN_BOTH
                } else {
                    SHUTDOWN_SEND
                };
                if self.local_shutdown == SHUTDOWN_BOTH {
                    self.enter_shutdown();
                }
                Some(self.emit(OP_SHUTDOWN, 0, self.local_shutdown))
            }
            Ok(n) => {
                // Bounded by the credit, a u32. Rw stays pending: there may be more.
                self.rx_cnt += n as u32;
                Some(self.emit(OP_RW, n as u32, 0))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.pending &= !PENDING_RW;
                None
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => None,
            Err(e) => {
                self.kill(ConnectionError::HostRead(e));
                None
            }
        }
    }

    /// The host closed both directions (hang-up after EOF, or while the
    /// guest no longer reads): tell the guest and wait for its RST.
    fn host_closed(&mut self) {
        self.host_eof = true;
        self.pending &= !PENDING_RW;
        if self.local_shutdown != SHUTDOWN_BOTH {
            self.local_shutdown = SHUTDOWN_BOTH;
            self.pending |= PENDING_SHUTDOWN;
        }
        self.enter_shutdown();
    }

    fn enter_shutdown(&mut self) {
        if self.state != ConnState::Shutdown {
            self.state = ConnState::Shutdown;
            self.deadline = Some(Instant::now() + self.shutdown_timeout);
        }
    }

    fn peer_shutdown(&mut self, flags: u32) {
        self.peer_shutdown |= flags & SHUTDOWN_BOTH;
        if self.peer_shutdown & SHUTDOWN_RCV != 0 {
            self.pending &= !PENDING_RW;
        }
        if self.peer_shutdown == SHUTDOWN_BOTH {
            if self.tx_buf.is_empty() {
                self.finish();
                return;
            }
            self.enter_shutdown();
        }
        self.after_drain();
    }

    fn acknowledge_host(&mut self) {
        let ack = format!("OK {}\n", self.local_port);
        match self.stream.write(ack.as_bytes()) {
            Ok(n) if n == ack.len() => {}
            // A fresh stream that cannot take a dozen bytes is broken.
            Ok(n) => self.kill(ConnectionError::ShortAck {
                written: n,
                len: ack.len(),
            }),
            Err(e) => self.kill(ConnectionError::HostWrite(e)),
        }
    }

    fn write_from_guest(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let buffered = self.tx_buf.len();
        if buffered + data.len() > CONN_BUF_SIZE as usize {
            self.kill(ConnectionError::CreditExceeded {
                len: data.len(),
                buffered,
            });
            return;
        }
        // At most MAX_PKT_DATA.
        self.recv_cnt += data.len() as u32;
        let mut written = 0;
        if self.tx_buf.is_empty() {
            match write_some(&mut self.stream, data) {
                Ok(n) => written = n,
                Err(e) => {
                    self.kill(ConnectionError::HostWrite(e));
                    return;
                }
            }
        }
        self.fwd_cnt += written as u32;
        self.tx_buf.extend(&data[written..]);
        self.check_credit_update();
    }

    /// Move buffered guest bytes to the host stream (on EPOLLOUT).
    fn flush(&mut self) {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match write_some(&mut self.stream, front) {
                Ok(0) => break,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    // Bounded by CONN_BUF_SIZE.
                    self.fwd_cnt += n as u32;
                }
                Err(e) => {
                    self.kill(ConnectionError::HostWrite(e));
                    return;
                }
            }
        }
        if self.tx_buf.is_empty() {
            if self.state == ConnState::Shutdown && self.peer_shutdown == SHUTDOWN_BOTH {
                self.finish();
                return;
            }
            self.after_drain();
        }
        self.check_credit_update();
    }

    /// Once the guest's bytes are all out, pass its half-close on to the host.
    fn after_drain(&mut self) {
        if self.peer_shutdown & SHUTDOWN_SEND != 0
            && self.tx_buf.is_empty()
            && !self.host_write_shut
        {
            self.host_write_shut = true;
            if let Err(e) = self.stream.shutdown(Shutdown::Write) {
                guest_debug!("vsock: half-closing host stream: {e}");
            }
        }
    }

    fn check_credit_update(&mut self) {
        let believed_used = (self.recv_cnt - self.last_fwd_cnt_sent).0;
        let believed_free = CONN_BUF_SIZE.saturating_sub(believed_used);
        if believed_free < CREDIT_UPDATE_THRESHOLD && self.fwd_cnt != self.last_fwd_cnt_sent {
            self.pending |= PENDING_CREDIT_UPDATE;
        }
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

/// Write as much of `data` as the non-blocking `stream` takes now.
fn write_some(stream: &mut UnixStream, data: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < data.len() {
        match stream.write(&data[written..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST_CID: u64 = 3;
    const LOCAL: u32 = 1 << 30;
    const PEER: u32 = 5000;

    fn guest_hdr(op: u16, len: u32, buf_alloc: u32, fwd_cnt: u32) -> PacketHeader {
        PacketHeader {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: PEER,
            dst_port: LOCAL,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc,
            fwd_cnt,
        }
    }

    /// An established guest-initiated connection and the host's end of it.
    fn established(guest_buf_alloc: u32) -> (Connection, UnixStream) {
        let (ours, host) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut req = guest_hdr(OP_REQUEST, 0, guest_buf_alloc, 0);
        req.dst_port = LOCAL;
        let mut c = Connection::peer_init(ours, GUEST_CID, &req, Duration::from_secs(1));
        assert_eq!(c.interest(), Some(EventSet::empty()));
        let resp = c.recv_pkt(&mut []).unwrap();
        assert_eq!(resp.op, OP_RESPONSE);
        assert_eq!((resp.src_port, resp.dst_port), (LOCAL, PEER));
        assert_eq!(c.state(), ConnState::Established);
        (c, host)
    }

    #[test]
    fn host_bytes_are_limited_by_guest_credit() {
        let (mut c, mut host) = established(4);
        host.write_all(b"0123456789").unwrap();
        assert_eq!(c.interest(), Some(EventSet::IN));
        c.notify(EventSet::IN);
        let mut buf = [0u8; 64];
        let p = c.recv_pkt(&mut buf).unwrap();
        assert_eq!((p.op, p.len), (OP_RW, 4));
        assert_eq!(&buf[..4], b"0123");
        // Credit exhausted: one CREDIT_REQUEST, then silence and no IN polling.
        assert_eq!(c.recv_pkt(&mut buf).unwrap().op, OP_CREDIT_REQUEST);
        assert!(c.recv_pkt(&mut buf).is_none());
        assert_eq!(c.interest(), Some(EventSet::empty()));
        // An update that grants nothing does not provoke another request.
        c.send_pkt(&guest_hdr(OP_CREDIT_UPDATE, 0, 4, 0), &[]);
        assert!(!c.has_pending_rx());
        c.send_pkt(&guest_hdr(OP_CREDIT_UPDATE, 0, 4, 4), &[]);
        assert_eq!(c.interest(), Some(EventSet::IN));
        c.notify(EventSet::IN);
        let p = c.recv_pkt(&mut buf).unwrap();
        assert_eq!((p.op, p.len), (OP_RW, 4));
        assert_eq!(&buf[..4], b"4567");
    }

    #[test]
    fn slow_host_is_buffered_within_credit_then_flushed() {
        let (mut c, mut host) = established(1 << 20);
        // One-byte packets fill the socket's buffer long before 64 KiB.
        let mut sent = 0u32;
        while c.tx_buffered() == 0 {
            c.send_pkt(&guest_hdr(OP_RW, 1, 1 << 20, 0), &[sent as u8]);
            sent += 1;
            assert!(sent < CONN_BUF_SIZE, "host stream never pushed back");
        }
        assert_eq!(c.interest(), Some(EventSet::OUT | EventSet::IN));
        // Keep going until the guest believes little is free: it is owed a
        // credit update carrying what actually reached the host.
        while !c.has_pending_rx() {
            c.send_pkt(&guest_hdr(OP_RW, 1, 1 << 20, 0), &[sent as u8]);
            sent += 1;
            assert!(sent <= CONN_BUF_SIZE - CREDIT_UPDATE_THRESHOLD + 1);
        }
        let update = c.recv_pkt(&mut []).unwrap();
        assert_eq!(update.op, OP_CREDIT_UPDATE);
        assert_eq!(update.fwd_cnt as usize, sent as usize - c.tx_buffered());
        // Sending past the credit kills the connection.
        let big = vec![0u8; CONN_BUF_SIZE as usize];
        let (mut doomed, _doomed_host) = established(1 << 20);
        while doomed.tx_buffered() == 0 {
            doomed.send_pkt(&guest_hdr(OP_RW, 1, 1 << 20, 0), &[0]);
        }
        doomed.send_pkt(&guest_hdr(OP_RW, big.len() as u32, 1 << 20, 0), &big);
        assert_eq!(doomed.state(), ConnState::Killed);
        assert!(matches!(
            doomed.take_kill_reason(),
            Some(ConnectionError::CreditExceeded { .. })
        ));
        // The host drains; every byte arrives in order.
        host.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while got.len() < sent as usize {
            match host.read(&mut chunk) {
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => c.notify(EventSet::OUT),
                Err(e) => panic!("{e}"),
            }
        }
        assert!(got.iter().enumerate().all(|(i, &b)| b == i as u8));
        assert_eq!(c.tx_buffered(), 0);
        assert_eq!(c.interest(), Some(EventSet::IN));
    }

    #[test]
    fn host_half_close_then_hangup() {
        let (mut c, host) = established(1 << 16);
        host.shutdown(Shutdown::Write).unwrap();
        c.notify(EventSet::IN);
        let p = c.recv_pkt(&mut [0u8; 16]).unwrap();
        assert_eq!((p.op, p.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
        assert_eq!(c.state(), ConnState::Established);
        // Guest bytes still reach the half-closed host.
        c.send_pkt(&guest_hdr(OP_RW, 2, 1 << 16, 0), b"hi");
        let mut host = host;
        let mut b = [0u8; 2];
        host.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hi");
        // Watching for hang-up only.
        assert_eq!(c.interest(), Some(EventSet::empty()));
        drop(host);
        c.notify(EventSet::HANG_UP);
        let p = c.recv_pkt(&mut [0u8; 16]).unwrap();
        assert_eq!((p.op, p.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
        assert_eq!(c.state(), ConnState::Shutdown);
        assert_eq!(c.interest(), None);
        assert!(c.deadline().is_some());
        c.check_deadline(Instant::now() + Duration::from_secs(2));
        assert_eq!(c.state(), ConnState::Killed);
    }

    #[test]
    fn guest_shutdown_half_closes_host_then_ends() {
        let (mut c, mut host) = established(1 << 16);
        let mut sd = guest_hdr(OP_SHUTDOWN, 0, 1 << 16, 0);
        sd.flags = SHUTDOWN_SEND;
        c.send_pkt(&sd, &[]);
        let mut rest = Vec::new();
        host.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert_eq!(c.state(), ConnState::Established);
        sd.flags = SHUTDOWN_RCV;
        c.send_pkt(&sd, &[]);
        assert_eq!(c.state(), ConnState::Killed);
        assert!(c.take_kill_reason().is_none());
    }

    #[test]
    fn local_init_sends_request_and_acknowledges_host() {
        let (ours, mut host) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut c = Connection::local_init(
            ours,
            GUEST_CID,
            (LOCAL, PEER),
            deadline,
            Duration::from_secs(1),
        );
        let req = c.recv_pkt(&mut []).unwrap();
        assert_eq!(
            (req.op, req.src_cid, req.dst_cid),
            (OP_REQUEST, HOST_CID, GUEST_CID)
        );
        assert_eq!(req.buf_alloc, CONN_BUF_SIZE);
        // Data before RESPONSE is a protocol error.
        let mut early = established(16).0;
        early.state = ConnState::PeerInit;
        early.send_pkt(&guest_hdr(OP_RW, 1, 16, 0), b"x");
        assert_eq!(early.state(), ConnState::Killed);

        c.send_pkt(&guest_hdr(OP_RESPONSE, 0, 1024, 0), &[]);
        assert_eq!(c.state(), ConnState::Established);
        assert_eq!(c.deadline(), None);
        let mut ack = [0u8; 14];
        host.read_exact(&mut ack).unwrap();
        assert_eq!(&ack, format!("OK {LOCAL}\n").as_bytes());
    }
}
