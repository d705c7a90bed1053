//! Docker's embedded DNS, inside the guest. On a user-defined network
//! Docker gives the container `nameserver 127.0.0.11` and answers there
//! inside the container's network namespace, which for hull is the
//! host-side sandbox namespace: the guest's 127.0.0.11 is its own loopback.
//! So the agent answers there itself, relaying each query over vsock (to
//! host port [`DNS_VSOCK_PORT`]) to the shim, which asks Docker's resolver
//! in the sandbox's namespace and sends the answer back. Neither side reads
//! the DNS messages; the relay carries them with a two-byte length in
//! front, one at a time.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use hull_protocol::agent_api::DNS_VSOCK_PORT;

/// Where Docker's resolvers answer.
const EMBEDDED_DNS: &str = "127.0.0.11:53";
/// The host's CID (VMADDR_CID_HOST).
const HOST_CID: u32 = 2;
/// How long the loop waits for a query before looking at its stop flag.
const POLL: Duration = Duration::from_secs(1);
/// How long one query may take on the host.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// The relay of one container; its thread stops (within [`POLL`], with
/// its socket) once this is dropped.
#[derive(Debug)]
pub struct DnsForwarder {
    stop: Arc<AtomicBool>,
}

impl DnsForwarder {
    /// Answers 127.0.0.11:53 in the network namespace `netns`.
    pub fn start(netns: File, container_id: &str) -> io::Result<Self> {
        let socket = std::thread::spawn(move || -> io::Result<UdpSocket> {
            // SAFETY: setns with an open namespace descriptor; only this
            // thread, which ends here, changes namespace. The socket stays
            // in the namespace it was made in.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            UdpSocket::bind(EMBEDDED_DNS)
        })
        .join()
        .map_err(|_| io::Error::other("the DNS set-up thread panicked"))??;
        socket.set_read_timeout(Some(POLL))?;
        let stop = Arc::new(AtomicBool::new(false));
        let id = container_id.to_owned();
        std::thread::Builder::new()
            .name("dns-relay".into())
            .spawn({
                let stop = stop.clone();
                move || relay(&socket, &stop, &id)
            })?;
        Ok(DnsForwarder { stop })
    }
}

impl Drop for DnsForwarder {
    fn drop(&mut self) {
        // Not joined: the agent's event loop must not wait for it.
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn relay(socket: &UdpSocket, stop: &AtomicBool, id: &str) {
    let mut host: Option<File> = None;
    let mut query = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let (len, client) = match socket.recv_from(&mut query) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => {
                log::warn!("container {id}: DNS relay: {e}");
                return;
            }
        };
        if host.is_none() {
            host = connect_host()
                .map_err(|e| log::warn!("container {id}: DNS relay: {e}"))
                .ok();
        }
        let Some(conn) = host.as_mut() else {
            continue;
        };
        match exchange(conn, &query[..len]) {
            // Empty: the host had no answer in time; the client asks again.
            Ok(answer) if answer.is_empty() => {}
            Ok(answer) => {
                let _ = socket.send_to(&answer, client);
            }
            Err(e) => {
                // The client asks again; the next query reconnects.
                log::warn!("container {id}: DNS relay to the host: {e}");
                host = None;
            }
        }
    }
}

/// One query out, its answer back, each with its length (big-endian u16).
fn exchange(conn: &mut File, query: &[u8]) -> io::Result<Vec<u8>> {
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
    framed.extend_from_slice(query);
    conn.write_all(&framed)?;
    let mut len = [0u8; 2];
    conn.read_exact(&mut len)?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    conn.read_exact(&mut answer)?;
    Ok(answer)
}

/// A vsock stream to the host's [`DNS_VSOCK_PORT`].
fn connect_host() -> io::Result<File> {
    // SAFETY: socket() with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; zeroed, then its fields set.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = HOST_CID;
    addr.svm_port = DNS_VSOCK_PORT;
    // SAFETY: connect reads a sockaddr_vm of the size given, which lives
    // across the call.
    let done = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if done != 0 {
        return Err(io::Error::last_os_error());
    }
    let file = File::from(fd);
    let timeout = libc::timeval {
        tv_sec: ANSWER_WITHIN.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO reads one timeval, which lives across the call.
    unsafe {
        libc::setsockopt(
            file.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_and_its_answer_travel_with_their_length() {
        let (mut host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut guest = File::from(OwnedFd::from(guest));
        let echo = std::thread::spawn(move || {
            let mut len = [0u8; 2];
            host.read_exact(&mut len).unwrap();
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
            host.read_exact(&mut query).unwrap();
            query.reverse();
            host.write_all(&len).unwrap();
            host.write_all(&query).unwrap();
        });
        assert_eq!(exchange(&mut guest, b"abc").unwrap(), b"cba");
        echo.join().unwrap();
    }
}
