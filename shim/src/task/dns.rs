//! The host's half of the DNS relay for Docker's embedded DNS (the guest's
//! half: agent/src/dns.rs). The guest connects to vsock port
//! [`DNS_VSOCK_PORT`], which the VMM's hybrid vsock turns into a
//! connection to `<vsock socket>_1053` here; each query, a two-byte
//! big-endian length and the message, is sent as it is to 127.0.0.11:53
//! from a socket inside the sandbox's network namespace, where Docker's
//! resolver answers, and the answer goes back the same way (an empty one
//! when none came in time). Nothing here reads the messages.

use std::fs::File;
use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use hull_protocol::agent_api::DNS_VSOCK_PORT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// How long Docker's resolver may take for one answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// The relay's listener; stopped and its socket removed when dropped.
pub struct DnsRelay {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl DnsRelay {
    /// Listens at `<vsock_path>_1053` (for the jailed VMM to connect:
    /// owned by the state directory's owner, the jail's uid) and relays
    /// into `netns`.
    pub fn start(vsock_path: &Path, state_dir: &Path, netns: File) -> io::Result<Self> {
        let path = PathBuf::from(format!("{}_{DNS_VSOCK_PORT}", vsock_path.display()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        let owner = std::fs::metadata(state_dir)?.uid();
        std::os::unix::fs::chown(&path, Some(owner), Some(owner))?;
        let netns = Arc::new(netns);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, netns.clone()));
            }
        });
        Ok(DnsRelay { path, task })
    }
}

impl Drop for DnsRelay {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A UDP socket in `netns`, connected to Docker's resolver address.
fn resolver_socket(netns: &File) -> io::Result<tokio::net::UdpSocket> {
    let fd = netns.as_raw_fd();
    let socket = std::thread::scope(|scope| {
        scope
            .spawn(|| -> io::Result<UdpSocket> {
                // SAFETY: setns with the namespace descriptor the caller
                // keeps open; only this scoped thread changes namespace.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                let socket = UdpSocket::bind("127.0.0.1:0")?;
                socket.connect("127.0.0.11:53")?;
                Ok(socket)
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the DNS socket thread panicked")))
    })?;
    socket.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(socket)
}

async fn serve(mut stream: UnixStream, netns: Arc<File>) {
    let udp = match resolver_socket(&netns) {
        Ok(udp) => udp,
        Err(e) => {
            log::warn!("DNS relay: no socket in the sandbox's namespace: {e}");
            return;
        }
    };
    let mut answer = vec![0u8; 65535];
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        let got = async {
            udp.send(&query).await?;
            udp.recv(&mut answer).await
        };
        let n = match tokio::time::timeout(ANSWER_WITHIN, got).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                log::warn!("DNS relay: Docker's resolver: {e}");
                0
            }
            Err(_) => {
                log::warn!("DNS relay: no answer from Docker's resolver in {ANSWER_WITHIN:?}");
                0
            }
        };
        let mut framed = Vec::with_capacity(n + 2);
        framed.extend_from_slice(&(n as u16).to_be_bytes());
        framed.extend_from_slice(&answer[..n]);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// The host file the container's `/etc/resolv.conf` is bound from
/// (Docker's), if any.
pub fn resolv_conf_source(spec: &hull_sandbox::spec::Spec) -> Option<PathBuf> {
    spec.mounts()
        .iter()
        .flatten()
        .find(|m| m.destination() == Path::new("/etc/resolv.conf"))
        .and_then(|m| m.source().clone())
}

/// Whether the resolv.conf at `path` names Docker's embedded DNS.
pub fn names_embedded_dns(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| {
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["nameserver", "127.0.0.11"])
    })
}
