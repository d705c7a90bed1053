//! The muxer driven through its API, with real Unix sockets in a temporary
//! directory and a plain epoll standing in for the event manager.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};

use tempfile::TempDir;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent};

use super::*;
use crate::devices::virtio::vsock::connection::CONN_BUF_SIZE;
use crate::devices::virtio::vsock::packet::{
    MAX_PKT_DATA, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_RESPONSE, OP_RW, OP_SHUTDOWN,
    SHUTDOWN_BOTH, SHUTDOWN_SEND,
};

const GUEST_CID: u64 = 3;
const GUEST_BUF: u32 = 64 * 1024;
const WAIT: Duration = Duration::from_secs(5);

struct TestLoop(Epoll);

impl EventRegistry for TestLoop {
    fn register(&mut self, fd: RawFd, tag: u32, events: EventSet) -> io::Result<()> {
        let ev = EpollEvent::new(events, u64::from(tag));
        self.0.ctl(ControlOperation::Add, fd, ev)
    }

    fn reregister(&mut self, fd: RawFd, tag: u32, events: EventSet) -> io::Result<()> {
        let ev = EpollEvent::new(events, u64::from(tag));
        self.0.ctl(ControlOperation::Modify, fd, ev)
    }

    fn deregister(&mut self, fd: RawFd, _tag: u32) -> io::Result<()> {
        self.0
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }
}

struct Harness {
    dir: TempDir,
    path: PathBuf,
    muxer: Muxer,
    ev: TestLoop,
    buf: Vec<u8>,
}

impl Harness {
    fn new() -> Self {
        Self::with_opts(MuxerOptions::default())
    }

    fn with_opts(opts: MuxerOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let mut muxer = Muxer::new(GUEST_CID, &path, opts).unwrap();
        let mut ev = TestLoop(Epoll::new().unwrap());
        muxer.activate(&mut ev).unwrap();
        Self {
            dir,
            path,
            muxer,
            ev,
            buf: vec![0; MAX_PKT_DATA],
        }
    }

    /// Dispatch whatever becomes ready within `ms`; returns the event count.
    fn pump(&mut self, ms: i32) -> usize {
        let mut events = [EpollEvent::default(); 16];
        let n = self.ev.0.wait(ms, &mut events).unwrap();
        for e in &events[..n] {
            self.muxer
                .handle_event(e.data() as u32, e.event_set(), &mut self.ev);
        }
        n
    }

    fn pump_until(&mut self, what: &str, mut done: impl FnMut(&Muxer) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(&self.muxer) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.pump(20);
        }
    }

    /// The next packet for the guest, pumping events until there is one.
    fn expect_pkt(&mut self) -> (PacketHeader, Vec<u8>) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(h) = self.muxer.recv_pkt(&mut self.buf, &mut self.ev) {
                assert_eq!(
                    (h.src_cid, h.dst_cid, h.type_),
                    (HOST_CID, GUEST_CID, TYPE_STREAM)
                );
                return (h, self.buf[..h.len as usize].to_vec());
            }
            assert!(Instant::now() < deadline, "no packet for the guest");
            self.pump(20);
        }
    }

    /// Nothing for the guest, and the event loop goes quiet (a stray timer
    /// tick aside): nothing registered is stuck ready.
    fn expect_nothing(&mut self) {
        self.assert_quiet();
        let pkt = self.muxer.recv_pkt(&mut self.buf, &mut self.ev);
        assert!(pkt.is_none(), "unexpected packet {pkt:?}");
    }

    fn assert_quiet(&mut self) {
        let quiet = (0..5).any(|_| self.pump(20) == 0);
        assert!(quiet, "the event loop keeps spinning");
    }

    fn guest_send(&mut self, hdr: PacketHeader, data: &[u8]) {
        self.muxer.send_pkt(&hdr, data, &mut self.ev);
    }

    fn host_connect(&self, line: &[u8]) -> UnixStream {
        let mut s = UnixStream::connect(&self.path).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(line).unwrap();
        s
    }

    /// A host-initiated connection to guest port `port`, established.
    fn established(&mut self, port: u32) -> (UnixStream, u32) {
        let mut host = self.host_connect(format!("CONNECT {port}\n").as_bytes());
        let (req, _) = self.expect_pkt();
        assert_eq!((req.op, req.dst_port), (OP_REQUEST, port));
        assert!(req.src_port >= LOCAL_PORT_MIN);
        assert_eq!(req.buf_alloc, CONN_BUF_SIZE);
        let local = req.src_port;
        self.guest_send(guest_hdr(OP_RESPONSE, port, local), &[]);
        assert_eq!(read_line(&mut host), format!("OK {local}\n"));
        (host, local)
    }
}

fn guest_hdr(op: u16, src_port: u32, dst_port: u32) -> PacketHeader {
    PacketHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: GUEST_BUF,
        ..PacketHeader::default()
    }
}

fn guest_rw(src_port: u32, dst_port: u32, data: &[u8]) -> PacketHeader {
    PacketHeader {
        len: data.len() as u32,
        ..guest_hdr(OP_RW, src_port, dst_port)
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        assert_eq!(s.read(&mut b).unwrap(), 1, "stream closed mid-line");
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

fn assert_closed(s: &mut UnixStream) {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => {}
        Ok(n) => panic!("expected EOF, read {:?}", &b[..n]),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
}

#[test]
fn host_connect_data_credit_and_guest_shutdown() {
    let mut h = Harness::new();
    let (mut host, local) = h.established(1234);

    host.write_all(b"ping").unwrap();
    let (p, data) = h.expect_pkt();
    assert_eq!((p.op, p.src_port, p.dst_port), (OP_RW, local, 1234));
    assert_eq!(data, b"ping");

    h.guest_send(guest_rw(1234, local, b"pong"), b"pong");
    let mut b = [0u8; 4];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"pong");

    h.guest_send(guest_hdr(OP_CREDIT_REQUEST, 1234, local), &[]);
    let (u, _) = h.expect_pkt();
    assert_eq!(
        (u.op, u.fwd_cnt, u.buf_alloc),
        (OP_CREDIT_UPDATE, 4, CONN_BUF_SIZE)
    );

    let sd = PacketHeader {
        flags: SHUTDOWN_BOTH,
        ..guest_hdr(OP_SHUTDOWN, 1234, local)
    };
    h.guest_send(sd, &[]);
    let (r, _) = h.expect_pkt();
    assert_eq!((r.op, r.src_port, r.dst_port), (OP_RST, local, 1234));
    assert_closed(&mut host);
    assert_eq!(h.muxer.connection_count(), 0);
    h.expect_nothing();
}

#[test]
fn host_close_shuts_down_then_guest_resets() {
    let mut h = Harness::new();
    let (mut host, local) = h.established(1234);
    host.write_all(b"last words").unwrap();
    drop(host);
    let (p, data) = h.expect_pkt();
    assert_eq!((p.op, data.as_slice()), (OP_RW, b"last words".as_slice()));
    let (s, _) = h.expect_pkt();
    assert_eq!((s.op, s.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
    h.guest_send(guest_hdr(OP_RST, 1234, local), &[]);
    assert_eq!(h.muxer.connection_count(), 0);
    h.expect_nothing();
}

#[test]
fn host_half_close_keeps_the_other_direction() {
    let mut h = Harness::new();
    let (mut host, local) = h.established(1234);
    host.shutdown(Shutdown::Write).unwrap();
    let (s, _) = h.expect_pkt();
    assert_eq!((s.op, s.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    h.guest_send(guest_rw(1234, local, b"reply"), b"reply");
    let mut b = [0u8; 5];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"reply");
    h.expect_nothing();
    assert_eq!(h.muxer.connection_count(), 1);
}

#[test]
fn guest_refusal_closes_the_host_stream() {
    let mut h = Harness::new();
    let mut host = h.host_connect(b"CONNECT 99\n");
    let (req, _) = h.expect_pkt();
    assert_eq!(req.op, OP_REQUEST);
    h.guest_send(guest_hdr(OP_RST, 99, req.src_port), &[]);
    assert_closed(&mut host);
    assert_eq!(h.muxer.connection_count(), 0);
    h.expect_nothing();
}

#[test]
fn unanswered_connect_times_out() {
    let mut h = Harness::with_opts(MuxerOptions {
        connect_timeout: Duration::from_millis(50),
        ..MuxerOptions::default()
    });
    let mut host = h.host_connect(b"connect 99\r\n");
    let (req, _) = h.expect_pkt();
    assert_eq!(req.op, OP_REQUEST);
    h.pump_until("the connect timeout", |m| m.connection_count() == 0);
    assert_closed(&mut host);
    let (r, _) = h.expect_pkt();
    assert_eq!((r.op, r.src_port, r.dst_port), (OP_RST, req.src_port, 99));
    // A late answer gets an RST too, and nothing reaches the closed stream.
    h.guest_send(guest_hdr(OP_RESPONSE, 99, req.src_port), &[]);
    assert_eq!(h.expect_pkt().0.op, OP_RST);
}

#[test]
fn garbage_connect_lines_close_the_stream() {
    let mut h = Harness::with_opts(MuxerOptions {
        connect_line_timeout: Duration::from_millis(50),
        ..MuxerOptions::default()
    });
    let long = [b'A'; MAX_CONNECT_LINE + 8];
    let lines: [&[u8]; 8] = [
        b"HELLO 12\n",
        b"CONNECT\n",
        b"CONNECT 12 13\n",
        b"CONNECT -1\n",
        b"CONNECT 4294967296\n",
        b"\xff\xfe 1\n",
        &long,
        // Never finished: closed by the CONNECT-line timeout.
        b"CONNE",
    ];
    for line in lines {
        let mut host = h.host_connect(line);
        h.pump_until("the stream to be accepted", |m| !m.pending.is_empty());
        h.pump_until("the stream to be closed", |m| m.pending.is_empty());
        assert_closed(&mut host);
    }
    assert_eq!(h.muxer.connection_count(), 0);
    h.expect_nothing();
}

#[test]
fn guest_connects_to_host_listener_or_gets_rst() {
    let mut h = Harness::new();
    let listener = UnixListener::bind(h.dir.path().join("v.sock_5000")).unwrap();
    h.guest_send(guest_hdr(OP_REQUEST, 777, 5000), &[]);
    let (resp, _) = h.expect_pkt();
    assert_eq!(
        (resp.op, resp.src_port, resp.dst_port),
        (OP_RESPONSE, 5000, 777)
    );
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();

    h.guest_send(guest_rw(777, 5000, b"hello"), b"hello");
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello");
    s.write_all(b"world").unwrap();
    let (p, data) = h.expect_pkt();
    assert_eq!((p.op, data.as_slice()), (OP_RW, b"world".as_slice()));

    // Nobody listens on port 5001.
    h.guest_send(guest_hdr(OP_REQUEST, 778, 5001), &[]);
    let (r, _) = h.expect_pkt();
    assert_eq!((r.op, r.src_port, r.dst_port), (OP_RST, 5001, 778));
    assert_eq!(h.muxer.connection_count(), 1);
}

#[test]
fn unroutable_packets_get_rst_or_are_dropped() {
    let mut h = Harness::new();
    h.guest_send(guest_rw(1, 2, b"x"), b"x");
    let (r, _) = h.expect_pkt();
    assert_eq!((r.op, r.src_port, r.dst_port), (OP_RST, 2, 1));
    // No RST in answer to an RST.
    h.guest_send(guest_hdr(OP_RST, 1, 2), &[]);
    // Not addressed to the host, or spoofing another CID: dropped.
    h.guest_send(
        PacketHeader {
            dst_cid: 7,
            ..guest_hdr(OP_REQUEST, 1, 2)
        },
        &[],
    );
    h.guest_send(
        PacketHeader {
            src_cid: 9,
            ..guest_hdr(OP_REQUEST, 1, 2)
        },
        &[],
    );
    h.expect_nothing();
    // Not a stream: refused.
    h.guest_send(
        PacketHeader {
            type_: 2,
            ..guest_hdr(OP_REQUEST, 1, 2)
        },
        &[],
    );
    assert_eq!(h.expect_pkt().0.op, OP_RST);
}

#[test]
fn connection_limit_is_enforced() {
    let mut h = Harness::with_opts(MuxerOptions {
        max_connections: 2,
        ..MuxerOptions::default()
    });
    let _a = h.established(1);
    let _b = h.established(2);
    let mut c = h.host_connect(b"CONNECT 3\n");
    h.pump(50);
    assert_closed(&mut c);
    h.guest_send(guest_hdr(OP_REQUEST, 9, 5000), &[]);
    assert_eq!(h.expect_pkt().0.op, OP_RST);
    assert_eq!(h.muxer.connection_count(), 2);
}

#[test]
fn slow_host_back_pressure_loses_nothing() {
    let mut h = Harness::new();
    let (mut host, local) = h.established(1234);
    let key = ConnKey {
        local_port: local,
        peer_port: 1234,
    };
    // Bytes numbered by their offset in the stream.
    let mut sent = 0usize;
    let mut send = |h: &mut Harness, n: usize| {
        let data: Vec<u8> = (sent..sent + n).map(|i| i as u8).collect();
        h.guest_send(guest_rw(1234, local, &data), &data);
        sent += n;
    };
    // One-byte packets fill the socket long before the credit runs out.
    while h.muxer.conns[&key].conn.tx_buffered() == 0 {
        send(&mut h, 1);
    }
    assert_eq!(
        h.muxer.conns[&key].registered,
        Some(EventSet::IN | EventSet::OUT)
    );
    // Keep within the credit until the guest is owed an update.
    while !h.muxer.has_pending_rx() {
        send(&mut h, 1024);
    }
    let sent = sent;
    assert!(h.muxer.conns[&key].conn.tx_buffered() <= CONN_BUF_SIZE as usize);
    host.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + WAIT;
    while got.len() < sent {
        assert!(
            Instant::now() < deadline,
            "host got {} of {sent}",
            got.len()
        );
        match host.read(&mut chunk) {
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                h.pump(20);
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(got.iter().enumerate().all(|(i, &b)| b == i as u8));
    assert_eq!(h.muxer.conns[&key].registered, Some(EventSet::IN));
    // The guest learns everything reached the host.
    let (u, _) = h.expect_pkt();
    assert_eq!((u.op, u.fwd_cnt as usize), (OP_CREDIT_UPDATE, sent));
}

#[test]
fn socket_file_is_removed_on_drop() {
    let h = Harness::new();
    let path = h.path.clone();
    assert!(path.exists());
    let dir = h.dir;
    drop(h.muxer);
    assert!(!path.exists());
    // Binding over an existing socket fails cleanly.
    let _l = UnixListener::bind(&path).unwrap();
    let err = Muxer::new(GUEST_CID, &path, MuxerOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, MuxerError::Bind { .. }));
    drop(dir);
}

#[test]
fn undeliverable_host_data_does_not_spin() {
    let mut h = Harness::new();
    let (mut host, local) = h.established(1234);
    // The guest posts no RX buffer: the bytes wait in the socket.
    host.write_all(b"queued").unwrap();
    h.pump_until("the host data", |m| m.has_pending_rx());
    h.assert_quiet();
    // The host goes away meanwhile: one hang-up, then silence.
    drop(host);
    h.assert_quiet();
    let (p, data) = h.expect_pkt();
    assert_eq!((p.op, data.as_slice()), (OP_RW, b"queued".as_slice()));
    let (s, _) = h.expect_pkt();
    assert_eq!((s.op, s.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
    // The guest never answers: reset after the shutdown timeout.
    h.expect_nothing();
    assert_eq!(h.muxer.connection_count(), 1);
    let key = ConnKey {
        local_port: local,
        peer_port: 1234,
    };
    assert!(h.muxer.conns[&key].conn.deadline().is_some());
}

#[test]
fn shutdown_timeout_resets_a_silent_guest() {
    let mut h = Harness::with_opts(MuxerOptions {
        shutdown_timeout: Duration::from_millis(50),
        ..MuxerOptions::default()
    });
    let (host, local) = h.established(1234);
    drop(host);
    let (s, _) = h.expect_pkt();
    assert_eq!((s.op, s.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
    h.pump_until("the shutdown timeout", |m| m.connection_count() == 0);
    let (r, _) = h.expect_pkt();
    assert_eq!((r.op, r.src_port, r.dst_port), (OP_RST, local, 1234));
    h.expect_nothing();
}

/// The muxer never reads its timer (a read after a re-arm would block); it
/// relies on re-arming to reset the timer's readiness.
#[test]
fn rearming_the_timer_clears_its_readiness() {
    let mut timer = TimerFd::new().unwrap();
    let epoll = Epoll::new().unwrap();
    let ev = EpollEvent::new(EventSet::IN, 0);
    epoll
        .ctl(ControlOperation::Add, timer.as_raw_fd(), ev)
        .unwrap();
    let mut out = [EpollEvent::default(); 1];
    timer.reset(Duration::from_millis(1), None).unwrap();
    assert_eq!(epoll.wait(1000, &mut out).unwrap(), 1);
    timer.reset(Duration::from_secs(60), None).unwrap();
    assert_eq!(epoll.wait(0, &mut out).unwrap(), 0);
    timer.reset(Duration::from_millis(1), None).unwrap();
    assert_eq!(epoll.wait(1000, &mut out).unwrap(), 1);
    timer.clear().unwrap();
    assert_eq!(epoll.wait(0, &mut out).unwrap(), 0);
}

#[test]
fn deactivate_drops_everything_and_activate_resumes() {
    let mut h = Harness::new();
    let (mut host, _) = h.established(1);
    let mut waiting = h.host_connect(b"CONN");
    h.pump_until("the stream to be accepted", |m| !m.pending.is_empty());
    h.muxer.deactivate(&mut h.ev);
    assert_closed(&mut host);
    assert_closed(&mut waiting);
    assert_eq!(h.muxer.connection_count(), 0);
    assert!(!h.muxer.has_pending_rx());
    // Host connections queue on the still-bound socket until re-activation.
    let _queued = h.host_connect(b"CONNECT 2\n");
    assert_eq!(h.pump(20), 0);
    h.muxer.activate(&mut h.ev).unwrap();
    let (req, _) = h.expect_pkt();
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 2));
}
