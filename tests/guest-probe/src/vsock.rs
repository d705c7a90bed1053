//! The vsock check: a guest-initiated connection to the host (CID 2), which
//! hull's hybrid vsock forwards to the Unix socket `<uds>_<port>` on the host.
//! The probe sends [`HELLO`] and reads one reply line.
//!
//! Report lines (`HULL_PROBE` prefix omitted):
//! - `vsock ok port=5000 reply="..."`
//! - `vsock error port=5000 step=connect errno=ECONNRESET`

use std::os::fd::AsRawFd;
use std::time::Duration;

use rustix::fd::OwnedFd;
use rustix::io::Errno;
use rustix::net::sockopt::{set_socket_timeout, Timeout};
use rustix::net::{socket_with, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

use crate::report::{errno_name, Report};

/// The line the probe sends to the host.
pub const HELLO: &str = "hello from hull-guest-probe\n";
/// Longest reply read.
const MAX_REPLY: usize = 256;
/// No send or receive may block longer (the host test fails on its own
/// timeout anyway; this keeps the probe from hanging past it).
const IO_TIMEOUT: Duration = Duration::from_secs(30);

struct StepError {
    step: &'static str,
    errno: Errno,
}

fn at(step: &'static str) -> impl FnOnce(Errno) -> StepError {
    move |errno| StepError { step, errno }
}

/// Talk to host port `port` and report the outcome.
pub fn probe(port: u32, report: &mut Report) {
    let line = match exchange(port) {
        Ok(reply) => format!("vsock ok port={port} reply={reply:?}"),
        Err(e) => format!(
            "vsock error port={port} step={} errno={}",
            e.step,
            errno_name(e.errno.raw_os_error())
        ),
    };
    report.line(&line);
}

/// Connect, send [`HELLO`], return the host's reply up to its newline.
fn exchange(port: u32) -> Result<String, StepError> {
    let fd = socket_with(
        AddressFamily::VSOCK,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(at("socket"))?;
    set_socket_timeout(&fd, Timeout::Recv, Some(IO_TIMEOUT)).map_err(at("setsockopt"))?;
    set_socket_timeout(&fd, Timeout::Send, Some(IO_TIMEOUT)).map_err(at("setsockopt"))?;
    connect_host(&fd, port).map_err(at("connect"))?;
    send_all(&fd, HELLO.as_bytes()).map_err(at("send"))?;
    recv_line(&fd).map_err(at("recv"))
}

/// Send all of `bytes`.
fn send_all(fd: &OwnedFd, mut bytes: &[u8]) -> Result<(), Errno> {
    while !bytes.is_empty() {
        let n = rustix::net::send(fd, bytes, SendFlags::NOSIGNAL)?;
        bytes = bytes.get(n..).unwrap_or_default();
    }
    Ok(())
}

/// Read up to the first newline (at most [`MAX_REPLY`] bytes, or until the
/// peer closes); the text before it.
fn recv_line(fd: &OwnedFd) -> Result<String, Errno> {
    let mut line = Vec::new();
    let mut chunk = [0u8; 64];
    while line.len() < MAX_REPLY && !line.contains(&b'\n') {
        match rustix::net::recv(fd, &mut chunk, RecvFlags::empty())? {
            (0, _) => break,
            (n, _) => line.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
    }
    let text = String::from_utf8_lossy(&line);
    Ok(text.split('\n').next().unwrap_or_default().to_string())
}

/// Listen on vsock `port`, accept one connection (within [`IO_TIMEOUT`]),
/// read one line and answer `echo <line>`; returns the line.
pub fn serve_one(port: u32) -> Result<String, String> {
    fn err(step: &'static str) -> impl Fn(Errno) -> String {
        move |e| format!("{step} {}", errno_name(e.raw_os_error()))
    }
    let fd = socket_with(
        AddressFamily::VSOCK,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(err("socket"))?;
    set_socket_timeout(&fd, Timeout::Recv, Some(IO_TIMEOUT)).map_err(err("setsockopt"))?;
    let addr = vm_addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: `fd` is an open socket; `addr` is a fully initialised
    // sockaddr_vm that lives across the call, passed with its exact size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!("bind {}", std::io::Error::last_os_error()));
    }
    rustix::net::listen(&fd, 1).map_err(err("listen"))?;
    // accept(2) honours the receive timeout.
    let conn = rustix::net::accept(&fd).map_err(err("accept"))?;
    set_socket_timeout(&conn, Timeout::Recv, Some(IO_TIMEOUT)).map_err(err("setsockopt"))?;
    let text = recv_line(&conn).map_err(err("recv"))?;
    send_all(&conn, format!("echo {text}\n").as_bytes()).map_err(err("send"))?;
    Ok(text)
}

fn vm_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    libc::sockaddr_vm {
        svm_family: libc::AF_VSOCK as libc::sa_family_t,
        svm_reserved1: 0,
        svm_port: port,
        svm_cid: cid,
        svm_zero: [0; 4],
    }
}

/// `connect(2)` to the host CID. rustix has no vsock address type, so the
/// `sockaddr_vm` is built and passed with libc.
fn connect_host(fd: &OwnedFd, port: u32) -> Result<(), Errno> {
    let addr = vm_addr(libc::VMADDR_CID_HOST, port);
    // SAFETY: `fd` is an open socket owned by the caller for the whole call;
    // `addr` is a fully initialised sockaddr_vm that lives across the call,
    // and the length passed is exactly its size.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ))
    }
}
