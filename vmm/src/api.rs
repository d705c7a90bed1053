//! The control socket: newline-delimited JSON requests ([`VmmRequest`]) and
//! responses ([`VmmResponse`]) on a Unix stream socket, served from the event
//! loop without blocking it.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use hull_protocol::vmm_api::{VmmRequest, VmmResponse};

/// A request line may not be longer than this.
const MAX_REQUEST: usize = 4096;
/// At most this many clients at once; more are refused.
const MAX_CLIENTS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("binding the control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    clients: HashMap<RawFd, Client>,
}

struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
}

/// What happened on an API file descriptor.
pub enum ApiEvent {
    Accepted(RawFd),
    Request(RawFd, Result<VmmRequest, String>),
    Closed(RawFd),
}

impl ApiServer {
    pub fn bind(path: &Path) -> Result<Self, ApiError> {
        let bind = |source| ApiError::Bind {
            path: path.into(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        Ok(Self {
            listener,
            path: path.into(),
            clients: HashMap::new(),
        })
    }

    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Accept one pending client (None: nothing pending, or too many).
    pub fn accept(&mut self) -> Option<RawFd> {
        let (stream, _) = self.listener.accept().ok()?;
        if self.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
            return None;
        }
        let fd = stream.as_raw_fd();
        self.clients.insert(
            fd,
            Client {
                stream,
                buf: Vec::new(),
            },
        );
        Some(fd)
    }

    /// Read what a client sent: its complete requests, then `Closed` if it
    /// hung up or overran the request size limit.
    pub fn read(&mut self, fd: RawFd) -> Vec<ApiEvent> {
        let Some(client) = self.clients.get_mut(&fd) else {
            return vec![];
        };
        let mut chunk = [0u8; 1024];
        let mut closed = false;
        while client.buf.len() <= MAX_REQUEST {
            match client.stream.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => client.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    closed = e.kind() != ErrorKind::WouldBlock;
                    break;
                }
            }
        }
        let mut events = Vec::new();
        while let Some(pos) = client.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = client.buf.drain(..=pos).collect();
            let parsed = serde_json::from_slice::<VmmRequest>(&line)
                .map_err(|e| format!("bad request: {e}"));
            events.push(ApiEvent::Request(fd, parsed));
        }
        if closed || client.buf.len() > MAX_REQUEST {
            events.push(ApiEvent::Closed(fd));
        }
        events
    }

    /// Send one response line (best effort: a client that does not read is dropped).
    pub fn respond(&mut self, fd: RawFd, response: &VmmResponse) {
        let Some(client) = self.clients.get_mut(&fd) else {
            return;
        };
        let mut line = serde_json::to_vec(response).expect("responses always serialize");
        line.push(b'\n');
        if client.stream.write_all(&line).is_err() {
            self.close(fd);
        }
    }

    pub fn close(&mut self, fd: RawFd) {
        self.clients.remove(&fd);
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_protocol::vmm_api::VmState;
    use std::io::{BufRead, BufReader};

    #[test]
    fn requests_are_framed_and_bad_lines_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let mut server = ApiServer::bind(&path).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        let fd = loop {
            if let Some(fd) = server.accept() {
                break fd;
            }
        };
        client
            .write_all(b"{\"op\":\"status\"}\n{\"op\":\"reboot\"}\n{\"op\":")
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let events = server.read(fd);
        let reqs: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                ApiEvent::Request(_, r) => Some(r.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0], Ok(VmmRequest::Status));
        assert!(reqs[1].as_ref().unwrap_err().contains("reboot"));
        server.respond(
            fd,
            &VmmResponse::Ok {
                state: VmState::Running,
            },
        );
        let mut line = String::new();
        BufReader::new(&client).read_line(&mut line).unwrap();
        assert_eq!(line, "{\"result\":\"ok\",\"state\":\"running\"}\n");
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(matches!(server.read(fd).last(), Some(ApiEvent::Closed(_))));
        drop(server);
        assert!(!path.exists(), "socket file removed on drop");
    }
}
