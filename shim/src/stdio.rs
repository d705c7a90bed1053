//! A process's stdio between containerd's FIFOs and the agent, which holds
//! the process's pipes (or terminal) in the guest: stdout and stderr are
//! pulled with ReadStdout/ReadStderr until the agent reports the end,
//! stdin is pushed with WriteStdin until containerd's CloseIO.
//!
//! The output FIFOs are opened read-write, so opening never blocks for
//! lack of a reader; stdin is opened read-only and ends when containerd's
//! side closes it, or on CloseIO.

use std::path::PathBuf;
use std::sync::Arc;

use hull_protocol::agent_api::agent::{CloseStdinRequest, ReadStreamRequest, WriteStreamRequest};
use hull_protocol::agent_api::agent_ttrpc::AgentClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use ttrpc::context;

/// The FIFO paths containerd gave for one process (empty: not wanted).
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// How much one read asks for.
const CHUNK: u32 = 64 * 1024;

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// The running copies of one process's stdio.
pub struct StdioCopies {
    outputs: Vec<JoinHandle<()>>,
    close_stdin: Arc<Notify>,
    stdin: Option<JoinHandle<()>>,
}

impl StdioCopies {
    /// Starts copying; call once the process exists in the guest.
    pub fn start(agent: Arc<AgentClient>, id: &str, exec_id: &str, paths: &StdioPaths) -> Self {
        let mut outputs = Vec::new();
        for (path, stream) in [
            (&paths.stdout, Stream::Stdout),
            (&paths.stderr, Stream::Stderr),
        ] {
            if path.is_empty() || (paths.terminal && matches!(stream, Stream::Stderr)) {
                continue;
            }
            outputs.push(tokio::spawn(copy_out(
                agent.clone(),
                id.to_owned(),
                exec_id.to_owned(),
                PathBuf::from(path),
                stream,
            )));
        }
        let close_stdin = Arc::new(Notify::new());
        let stdin = (!paths.stdin.is_empty()).then(|| {
            tokio::spawn(copy_in(
                agent,
                id.to_owned(),
                exec_id.to_owned(),
                PathBuf::from(&paths.stdin),
                close_stdin.clone(),
            ))
        });
        Self {
            outputs,
            close_stdin,
            stdin,
        }
    }

    /// containerd's CloseIO: stdin ends (what was read so far is sent).
    pub fn close_stdin(&self) {
        self.close_stdin.notify_one();
    }

    /// Waits until stdout and stderr have been copied to the end.
    pub async fn drained(&mut self) {
        for handle in self.outputs.drain(..) {
            let _ = handle.await;
        }
    }
}

impl Drop for StdioCopies {
    fn drop(&mut self) {
        for handle in &self.outputs {
            handle.abort();
        }
        if let Some(stdin) = &self.stdin {
            stdin.abort();
        }
    }
}

async fn copy_out(
    agent: Arc<AgentClient>,
    id: String,
    exec_id: String,
    path: PathBuf,
    stream: Stream,
) {
    let mut fifo = match pipe::OpenOptions::new().read_write(true).open_sender(&path) {
        Ok(fifo) => fifo,
        Err(e) => {
            log::warn!("{id}/{exec_id}: opening {}: {e}", path.display());
            return;
        }
    };
    let request = ReadStreamRequest {
        container_id: id.clone(),
        exec_id: exec_id.clone(),
        max_bytes: CHUNK,
        ..Default::default()
    };
    loop {
        // No deadline: the call returns when the process writes or ends.
        let read = match stream {
            Stream::Stdout => {
                agent
                    .read_stdout(context::Context::default(), &request)
                    .await
            }
            Stream::Stderr => {
                agent
                    .read_stderr(context::Context::default(), &request)
                    .await
            }
        };
        match read {
            Ok(response) if response.data.is_empty() => return,
            Ok(response) => {
                if let Err(e) = fifo.write_all(&response.data).await {
                    log::warn!("{id}/{exec_id}: writing {}: {e}", path.display());
                    return;
                }
            }
            Err(e) => {
                log::debug!("{id}/{exec_id}: output ended: {e}");
                return;
            }
        }
    }
}

async fn copy_in(
    agent: Arc<AgentClient>,
    id: String,
    exec_id: String,
    path: PathBuf,
    close: Arc<Notify>,
) {
    // Read-only, so the writer closing it (containerd's client reaching
    // the end of its stdin) reads as EOF. Linux reports no hang-up to a
    // FIFO reader before a first writer came, so a late writer is fine.
    let mut fifo = match pipe::OpenOptions::new().open_receiver(&path) {
        Ok(fifo) => fifo,
        Err(e) => {
            log::warn!("{id}/{exec_id}: opening {}: {e}", path.display());
            return;
        }
    };
    let mut buf = vec![0u8; CHUNK as usize];
    loop {
        let n = tokio::select! {
            // Data already in the FIFO goes first.
            biased;
            read = fifo.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            () = close.notified() => {
                // Drain what is left without waiting.
                loop {
                    match fifo.try_read(&mut buf) {
                        Ok(n) if n > 0 => send(&agent, &id, &exec_id, &buf[..n]).await,
                        _ => break,
                    }
                }
                break;
            }
        };
        send(&agent, &id, &exec_id, &buf[..n]).await;
    }
    let request = CloseStdinRequest {
        container_id: id.clone(),
        exec_id: exec_id.clone(),
        ..Default::default()
    };
    if let Err(e) = agent
        .close_stdin(context::Context::default(), &request)
        .await
    {
        log::debug!("{id}/{exec_id}: CloseStdin: {e}");
    }
}

async fn send(agent: &AgentClient, id: &str, exec_id: &str, data: &[u8]) {
    let request = WriteStreamRequest {
        container_id: id.to_owned(),
        exec_id: exec_id.to_owned(),
        data: data.to_vec(),
        ..Default::default()
    };
    if let Err(e) = agent
        .write_stdin(context::Context::default(), &request)
        .await
    {
        log::debug!("{id}/{exec_id}: WriteStdin: {e}");
    }
}
