//! A process's stdio as the host sees it: output pumped from pipes (or a
//! pty master) into bounded buffers in the agent, served by long-polling
//! reads; input written through to the process.
//!
//! Each output stream has one pump task reading its fd into an
//! [`OutputBuffer`]. When a buffer is full the pump stops reading, so a
//! process writing faster than the host reads blocks on its pipe instead of
//! growing the agent's memory. A read returns what is buffered, waits when
//! nothing is, and returns empty data once the stream has ended and
//! everything was read.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::pin;
use std::sync::{Arc, Mutex};

use rustix::fs::OFlags;
use rustix::io::Errno;
use rustix::pipe::PipeFlags;
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;

use hull_protocol::agent_api::agent::StdioOptions;

/// How much output the agent keeps per stream before the process blocks.
pub const BUFFER_LIMIT: usize = 1 << 20;
/// How much one `read` of the pump takes.
const PUMP_CHUNK: usize = 32 << 10;
/// The largest answer to one read request.
pub const MAX_READ: usize = 1 << 20;
/// End-of-file for a terminal's line discipline (^D), sent by CloseStdin.
const VEOF: u8 = 0x04;

#[derive(Debug, Error)]
pub enum StdioError {
    #[error("cannot create a pipe")]
    Pipe(#[source] Errno),
    #[error("cannot open /dev/null")]
    DevNull(#[source] Errno),
    #[error("cannot watch a stdio fd")]
    Register(#[source] io::Error),
    #[error("stdin was not requested for this process")]
    NoStdin,
    #[error("stdin is closed")]
    StdinClosed,
    #[error("the process has no terminal")]
    NoTerminal,
    #[error("cannot write to the process's stdin")]
    Write(#[source] io::Error),
    #[error("cannot resize the terminal")]
    Resize(#[source] Errno),
}

/// The ends the container's process gets (for libcontainer's builder).
#[derive(Debug)]
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// The agent's side of a process's stdio.
#[derive(Debug)]
pub struct Stdio {
    stdin: Mutex<Option<Arc<AsyncFd<OwnedFd>>>>,
    stdin_requested: bool,
    stdout: Arc<OutputBuffer>,
    stderr: Arc<OutputBuffer>,
    /// The pty master, for resizing (with a terminal).
    pty: Option<Arc<AsyncFd<OwnedFd>>>,
}

fn devnull(flags: OFlags) -> Result<OwnedFd, StdioError> {
    rustix::fs::open(
        "/dev/null",
        flags | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(StdioError::DevNull)
}

fn nonblocking(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>, StdioError> {
    let flags = rustix::fs::fcntl_getfl(&fd).map_err(|e| StdioError::Register(e.into()))?;
    rustix::fs::fcntl_setfl(&fd, flags | OFlags::NONBLOCK)
        .map_err(|e| StdioError::Register(e.into()))?;
    async_fd(fd).map_err(StdioError::Register)
}

/// Registers an owned fd with the tokio reactor (inside the runtime).
pub(crate) fn async_fd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is an open fd that it alone closes, on drop; the
    // `AsyncFd` owns it until it is dropped, and `as_raw_fd` always returns
    // that same fd.
    unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)
}

/// `(agent end, child end)` of a pipe; `agent_reads` says which way.
fn pipe(agent_reads: bool) -> Result<(OwnedFd, OwnedFd), StdioError> {
    let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).map_err(StdioError::Pipe)?;
    Ok(if agent_reads {
        (read, write)
    } else {
        (write, read)
    })
}

impl Stdio {
    /// Pipes as `options` asks (the streams not asked for are /dev/null).
    /// Must run inside the tokio runtime: the pumps start at once.
    pub fn pipes(options: &StdioOptions) -> Result<(Stdio, ChildStdio), StdioError> {
        let (stdin, child_stdin) = if options.stdin {
            let (agent, child) = pipe(false)?;
            (Some(Arc::new(nonblocking(agent)?)), child)
        } else {
            (None, devnull(OFlags::RDONLY)?)
        };
        let output = |wanted: bool| -> Result<(Arc<OutputBuffer>, OwnedFd), StdioError> {
            if wanted {
                let (agent, child) = pipe(true)?;
                Ok((OutputBuffer::pumping(Arc::new(nonblocking(agent)?)), child))
            } else {
                Ok((OutputBuffer::ended(), devnull(OFlags::WRONLY)?))
            }
        };
        let (stdout, child_stdout) = output(options.stdout)?;
        let (stderr, child_stderr) = output(options.stderr)?;
        Ok((
            Stdio {
                stdin: Mutex::new(stdin),
                stdin_requested: options.stdin,
                stdout,
                stderr,
                pty: None,
            },
            ChildStdio {
                stdin: child_stdin,
                stdout: child_stdout,
                stderr: child_stderr,
            },
        ))
    }

    /// A terminal: `master` carries the output (as stdout) and the input;
    /// stderr is empty.
    pub fn terminal(master: OwnedFd, options: &StdioOptions) -> Result<Stdio, StdioError> {
        let master = Arc::new(nonblocking(master)?);
        let stdin = options.stdin.then(|| Arc::clone(&master));
        Ok(Stdio {
            stdin: Mutex::new(stdin),
            stdin_requested: options.stdin,
            stdout: OutputBuffer::pumping(Arc::clone(&master)),
            stderr: OutputBuffer::ended(),
            pty: Some(master),
        })
    }

    pub fn stdout(&self) -> &OutputBuffer {
        &self.stdout
    }

    pub fn stderr(&self) -> &OutputBuffer {
        &self.stderr
    }

    fn stdin(&self) -> Result<Arc<AsyncFd<OwnedFd>>, StdioError> {
        let guard = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(fd) => Ok(Arc::clone(fd)),
            None if self.stdin_requested => Err(StdioError::StdinClosed),
            None => Err(StdioError::NoStdin),
        }
    }

    /// Writes all of `data` to stdin (waiting while the pipe is full).
    pub async fn write_stdin(&self, data: &[u8]) -> Result<usize, StdioError> {
        let fd = self.stdin()?;
        let mut written = 0;
        while written < data.len() {
            let result = fd
                .async_io(Interest::WRITABLE, |fd| {
                    rustix::io::write(fd, &data[written..]).map_err(io::Error::from)
                })
                .await;
            match result {
                Ok(n) => written += n,
                Err(err) => return Err(StdioError::Write(err)),
            }
        }
        Ok(written)
    }

    /// Closes stdin: the process reads end-of-file. With a terminal, the
    /// line discipline's EOF character is sent instead (the pty stays open
    /// for the output).
    pub async fn close_stdin(&self) -> Result<(), StdioError> {
        let taken = self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take();
        match (taken, &self.pty) {
            (Some(master), Some(_)) => {
                let _ = master
                    .async_io(Interest::WRITABLE, |fd| {
                        rustix::io::write(fd, &[VEOF]).map_err(io::Error::from)
                    })
                    .await
                    .map_err(StdioError::Write)?;
                Ok(())
            }
            (Some(_pipe), None) => Ok(()),
            (None, _) => Ok(()),
        }
    }

    /// Sets the terminal's window size (TIOCSWINSZ on the master); the
    /// process gets SIGWINCH.
    pub fn resize(&self, rows: u16, columns: u16) -> Result<(), StdioError> {
        let pty = self.pty.as_ref().ok_or(StdioError::NoTerminal)?;
        let size = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: columns,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(pty.get_ref(), size).map_err(StdioError::Resize)
    }
}

#[derive(Debug, Default)]
struct Buffered {
    data: VecDeque<u8>,
    ended: bool,
}

/// One output stream's buffer, filled by its pump.
#[derive(Debug, Default)]
pub struct OutputBuffer {
    state: Mutex<Buffered>,
    /// Readers wait on it for data or the end.
    filled: Notify,
    /// The pump waits on it for room.
    drained: Notify,
}

impl OutputBuffer {
    fn ended() -> Arc<Self> {
        let buffer = OutputBuffer::default();
        buffer.lock().ended = true;
        Arc::new(buffer)
    }

    fn pumping(fd: Arc<AsyncFd<OwnedFd>>) -> Arc<Self> {
        let buffer = Arc::new(OutputBuffer::default());
        tokio::spawn(pump(fd, Arc::clone(&buffer)));
        buffer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffered> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Up to `max` bytes, waiting until there are some; empty at the end.
    pub async fn read(&self, max: usize) -> Vec<u8> {
        let max = max.clamp(1, MAX_READ);
        loop {
            let mut filled = pin!(self.filled.notified());
            filled.as_mut().enable();
            {
                let mut state = self.lock();
                if !state.data.is_empty() {
                    let n = max.min(state.data.len());
                    let chunk: Vec<u8> = state.data.drain(..n).collect();
                    drop(state);
                    self.drained.notify_one();
                    return chunk;
                }
                if state.ended {
                    return Vec::new();
                }
            }
            filled.await;
        }
    }

    /// Ends the stream for readers (the pump stops at the next wake-up).
    pub fn end(&self) {
        self.lock().ended = true;
        self.filled.notify_waiters();
        self.drained.notify_one();
    }

    fn push(&self, data: &[u8]) {
        self.lock().data.extend(data);
        self.filled.notify_waiters();
    }

    async fn wait_for_room(&self) -> bool {
        loop {
            let mut drained = pin!(self.drained.notified());
            drained.as_mut().enable();
            {
                let state = self.lock();
                if state.ended {
                    return false;
                }
                if state.data.len() < BUFFER_LIMIT {
                    return true;
                }
            }
            drained.await;
        }
    }
}

/// Reads `fd` into `buffer` until end-of-file (or EIO: a pty whose last
/// slave closed), then marks the buffer ended.
async fn pump(fd: Arc<AsyncFd<OwnedFd>>, buffer: Arc<OutputBuffer>) {
    let mut chunk = vec![0u8; PUMP_CHUNK];
    loop {
        if !buffer.wait_for_room().await {
            return;
        }
        let result = fd
            .async_io(Interest::READABLE, |fd| {
                rustix::io::read(fd, &mut chunk[..]).map_err(io::Error::from)
            })
            .await;
        match result {
            Ok(0) => break,
            Ok(n) => buffer.push(&chunk[..n]),
            Err(err) if err.raw_os_error() == Some(Errno::IO.raw_os_error()) => break,
            Err(err) => {
                log::warn!("stdio fd {}: {err}", fd.as_fd().as_raw_fd());
                break;
            }
        }
    }
    buffer.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(stdin: bool) -> StdioOptions {
        StdioOptions {
            stdin,
            stdout: true,
            stderr: true,
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn output_is_buffered_until_read_then_ends() {
        let (stdio, child) = Stdio::pipes(&options(false)).unwrap();
        rustix::io::write(&child.stdout, b"hello ").unwrap();
        rustix::io::write(&child.stdout, b"world").unwrap();
        drop(child);
        let mut out = Vec::new();
        loop {
            let chunk = stdio.stdout().read(4).await;
            if chunk.is_empty() {
                break;
            }
            assert!(chunk.len() <= 4);
            out.extend(chunk);
        }
        assert_eq!(out, b"hello world");
        assert!(stdio.stderr().read(10).await.is_empty());
        assert!(matches!(
            stdio.write_stdin(b"x").await,
            Err(StdioError::NoStdin)
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stdin_is_written_through_and_closed() {
        let (stdio, child) = Stdio::pipes(&options(true)).unwrap();
        assert_eq!(stdio.write_stdin(b"abc").await.unwrap(), 3);
        stdio.close_stdin().await.unwrap();
        assert!(matches!(
            stdio.write_stdin(b"x").await,
            Err(StdioError::StdinClosed)
        ));
        let mut buf = [0u8; 8];
        assert_eq!(rustix::io::read(&child.stdin, &mut buf).unwrap(), 3);
        assert_eq!(rustix::io::read(&child.stdin, &mut buf).unwrap(), 0);
        assert!(matches!(stdio.resize(24, 80), Err(StdioError::NoTerminal)));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiting_read_wakes_on_output() {
        let (stdio, child) = Stdio::pipes(&options(false)).unwrap();
        let stdio = Arc::new(stdio);
        let reader = tokio::spawn({
            let stdio = Arc::clone(&stdio);
            async move { stdio.stdout().read(100).await }
        });
        tokio::task::yield_now().await;
        rustix::io::write(&child.stdout, b"late").unwrap();
        assert_eq!(reader.await.unwrap(), b"late");
    }
}
