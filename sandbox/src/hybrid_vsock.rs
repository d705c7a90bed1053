//! The host end of hybrid vsock (Firecracker's protocol): connect to the
//! VMM's Unix socket, ask for a guest port with `CONNECT <port>\n`, get
//! `OK <host port>\n` back; the stream then carries the guest connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Longest reply line accepted from the VMM.
const MAX_REPLY: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum HybridVsockError {
    #[error("cannot connect to the VMM's vsock socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("guest port {port}: the VMM closed the connection (nothing listens there, or the guest is gone)")]
    Refused { port: u32 },
    #[error("guest port {port}: unexpected reply {reply:?}")]
    BadReply { port: u32, reply: String },
    #[error("guest port {port}: no reply within {timeout:?}")]
    Timeout { port: u32, timeout: Duration },
    #[error("guest port {port}: I/O error during the handshake")]
    Io {
        port: u32,
        #[source]
        source: std::io::Error,
    },
}

/// Open a stream to `port` in the guest through the VMM socket `uds`.
pub async fn connect(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, HybridVsockError> {
    let stream = UnixStream::connect(uds)
        .await
        .map_err(|source| HybridVsockError::Connect {
            path: uds.into(),
            source,
        })?;
    match tokio::time::timeout(timeout, handshake(stream, port)).await {
        Ok(result) => result,
        Err(_) => Err(HybridVsockError::Timeout { port, timeout }),
    }
}

async fn handshake(mut stream: UnixStream, port: u32) -> Result<UnixStream, HybridVsockError> {
    let io = |source| HybridVsockError::Io { port, source };
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(io)?;
    // Read the reply byte by byte: anything after the newline belongs to the guest.
    let mut reader = BufReader::with_capacity(1, stream);
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await.map_err(io)?;
        let Some(&byte) = buf.first() else {
            return Err(HybridVsockError::Refused { port });
        };
        reader.consume(1);
        if byte == b'\n' {
            break;
        }
        line.push(byte);
        if line.len() > MAX_REPLY {
            break;
        }
    }
    let reply = String::from_utf8_lossy(&line).into_owned();
    match reply.strip_prefix("OK ").map(str::parse::<u32>) {
        Some(Ok(_)) => Ok(reader.into_inner()),
        _ => Err(HybridVsockError::BadReply { port, reply }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    async fn fake_vmm(reply: &'static [u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"CONNECT 1024\n");
            s.write_all(reply).await.unwrap();
        });
        (dir, path)
    }

    #[tokio::test]
    async fn ok_reply_hands_over_the_stream_without_eating_data() {
        let (_dir, path) = fake_vmm(b"OK 1073741824\nhello").await;
        let mut s = connect(&path, 1024, Duration::from_secs(5)).await.unwrap();
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"hello");
    }

    #[tokio::test]
    async fn closed_and_garbage_replies_are_errors() {
        let (_dir, path) = fake_vmm(b"").await;
        assert!(matches!(
            connect(&path, 1024, Duration::from_secs(5)).await,
            Err(HybridVsockError::Refused { port: 1024 })
        ));
        let (_dir, path) = fake_vmm(b"NO\n").await;
        assert!(matches!(
            connect(&path, 1024, Duration::from_secs(5)).await,
            Err(HybridVsockError::BadReply { .. })
        ));
        let missing = std::env::temp_dir().join("hull-no-such.sock");
        assert!(matches!(
            connect(&missing, 1, Duration::from_secs(1)).await,
            Err(HybridVsockError::Connect { .. })
        ));
    }
}
