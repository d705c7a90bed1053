//! The calls into youki's libcontainer: build a container's init process,
//! join a running container with another process (tenant), start, pause,
//! resume, delete.
//!
//! libcontainer is written for a short-lived runtime process (youki's CLI),
//! and the agent is PID 1 and lives on; three things follow:
//! - It forks an intermediate process and `waitpid`s it by pid, which the
//!   agent's reaper (`waitpid(-1)`) must not steal: every build runs under a
//!   [`ReapHold`], which the caller keeps until it has registered the new
//!   pid, so the exit of a process that dies at once is not published before
//!   anyone knows whose it is.
//! - It forks from the calling thread, and the agent runs it on the tokio
//!   runtime's only thread (the runtime is current-thread and the agent
//!   makes no other threads), so no lock can be held by another thread
//!   across the fork. The cost: the agent answers nothing else while a
//!   container is being built.
//! - It changes the calling process: `oom_score_adj` (inherited by every
//!   later child) and the dumpable flag. Both are put back after a build.
//!
//! The guest's root is the initramfs, which `pivot_root` cannot leave (the
//! initial rootfs has no parent mount), so containers get their root by
//! `MS_MOVE` + `chroot` (`with_no_pivot`), as runc does on a ramdisk and
//! Kata's agent does in an initrd guest. The move covers the initramfs in
//! the container's own mount namespace, so it is not reachable from inside.

use std::io;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use thiserror::Error;

use super::executor::GuestExecutor;
use super::stdio::ChildStdio;
use crate::reaper::ReapHold;

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("cannot create {path}")]
    StateRoot {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("libcontainer could not {action} container {id}")]
    Container {
        action: &'static str,
        id: String,
        #[source]
        source: Box<LibcontainerError>,
    },
    #[error("cannot set up the console socket {path}")]
    ConsoleSocket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the container's process sent no terminal on {path}")]
    NoTerminal { path: PathBuf },
}

/// How a new process's stdio is connected.
#[derive(Debug)]
pub enum ProcessIo {
    Pipes(ChildStdio),
    /// A pty made in the container; its master comes back on a socket at
    /// this path (which must not exist yet).
    Terminal(PathBuf),
}

/// What a build made.
#[derive(Debug)]
pub struct Built<T> {
    pub made: T,
    pub pid: i32,
    /// The pty master, with [`ProcessIo::Terminal`].
    pub pty_master: Option<OwnedFd>,
}

/// libcontainer with its state under one root directory.
#[derive(Debug, Clone)]
pub struct Runtime {
    state_root: PathBuf,
}

fn lc_error(action: &'static str, id: &str) -> impl FnOnce(LibcontainerError) -> RuntimeError {
    let id = id.to_owned();
    move |source| RuntimeError::Container {
        action,
        id,
        source: Box::new(source),
    }
}

/// What libcontainer changes in the calling process, saved to put back.
struct ProcessAttributes {
    oom_score_adj: Option<String>,
}

impl ProcessAttributes {
    const OOM_SCORE_ADJ: &str = "/proc/self/oom_score_adj";

    fn save() -> Self {
        ProcessAttributes {
            oom_score_adj: std::fs::read_to_string(Self::OOM_SCORE_ADJ).ok(),
        }
    }

    fn restore(self) {
        if let Some(saved) = self.oom_score_adj {
            if std::fs::read_to_string(Self::OOM_SCORE_ADJ).ok().as_ref() != Some(&saved) {
                if let Err(err) = std::fs::write(Self::OOM_SCORE_ADJ, saved.trim()) {
                    log::warn!("cannot restore the agent's oom_score_adj: {err}");
                }
            }
        }
        if let Err(errno) =
            rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::Dumpable)
        {
            log::warn!("cannot make the agent dumpable again: {errno}");
        }
    }
}

impl Runtime {
    /// libcontainer's state goes under `state_root`, created here.
    pub fn new(state_root: PathBuf) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(&state_root).map_err(|source| RuntimeError::StateRoot {
            path: state_root.clone(),
            source,
        })?;
        Ok(Runtime { state_root })
    }

    fn builder(
        &self,
        id: &str,
        io: ProcessIo,
    ) -> Result<(ContainerBuilder, Option<UnixListener>), RuntimeError> {
        let mut builder = ContainerBuilder::new(id.to_owned(), SyscallType::default())
            .with_executor(GuestExecutor::default())
            .with_root_path(&self.state_root)
            .map_err(lc_error("use the state root of", id))?;
        let mut console = None;
        match io {
            ProcessIo::Pipes(child) => {
                builder = builder
                    .with_stdin(child.stdin)
                    .with_stdout(child.stdout)
                    .with_stderr(child.stderr);
            }
            ProcessIo::Terminal(path) => {
                let listener =
                    UnixListener::bind(&path).map_err(|source| RuntimeError::ConsoleSocket {
                        path: path.clone(),
                        source,
                    })?;
                builder = builder.with_console_socket(Some(&path));
                console = Some((listener, path));
            }
        }
        Ok((builder, console.map(|(listener, _)| listener)))
    }

    /// Creates container `id` from `bundle/config.json`: its init process
    /// waits for [`start`](Self::start).
    pub fn create(
        &self,
        _hold: &ReapHold,
        id: &str,
        bundle: &Path,
        io: ProcessIo,
    ) -> Result<Built<Container>, RuntimeError> {
        let console_path = match &io {
            ProcessIo::Terminal(path) => Some(path.clone()),
            ProcessIo::Pipes(_) => None,
        };
        let (builder, console) = self.builder(id, io)?;
        let saved = ProcessAttributes::save();
        let built = builder
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(true)
            .with_no_pivot(true)
            .build();
        saved.restore();
        let container = built.map_err(lc_error("create", id))?;
        let pid = container.pid().map_or(0, |pid| pid.as_raw());
        let pty_master = receive_terminal(console, console_path)?;
        Ok(Built {
            made: container,
            pid,
            pty_master,
        })
    }

    /// Starts a process described by `process_json` (an OCI process) in the
    /// running container `id`.
    pub fn exec(
        &self,
        _hold: &ReapHold,
        id: &str,
        process_json: &Path,
        io: ProcessIo,
    ) -> Result<Built<()>, RuntimeError> {
        let console_path = match &io {
            ProcessIo::Terminal(path) => Some(path.clone()),
            ProcessIo::Pipes(_) => None,
        };
        let (builder, console) = self.builder(id, io)?;
        let saved = ProcessAttributes::save();
        let built = builder
            .as_tenant()
            .with_detach(true)
            .with_process(Some(process_json))
            .build();
        saved.restore();
        let pid = built.map_err(lc_error("exec into", id))?;
        let pty_master = receive_terminal(console, console_path)?;
        Ok(Built {
            made: (),
            pid: pid.as_raw(),
            pty_master,
        })
    }

    pub fn start(&self, container: &mut Container) -> Result<(), RuntimeError> {
        let id = container.id().to_owned();
        container.start().map_err(lc_error("start", &id))
    }

    pub fn pause(&self, container: &mut Container) -> Result<(), RuntimeError> {
        let id = container.id().to_owned();
        container.pause().map_err(lc_error("pause", &id))
    }

    pub fn resume(&self, container: &mut Container) -> Result<(), RuntimeError> {
        let id = container.id().to_owned();
        container.resume().map_err(lc_error("resume", &id))
    }

    /// Deletes libcontainer's state and the cgroup (killing what is left).
    pub fn delete(&self, container: &mut Container) -> Result<(), RuntimeError> {
        let id = container.id().to_owned();
        container.delete(true).map_err(lc_error("delete", &id))
    }

    /// Removes what a failed build may have left of container `id`.
    pub fn forget(&self, id: &str) {
        let dir = self.state_root.join(id);
        if let Err(err) = std::fs::remove_dir_all(&dir) {
            if err.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove {}: {err}", dir.display());
            }
        }
    }
}

/// Takes the pty master that libcontainer's process sent over the console
/// socket (it connected and sent it before the build returned).
fn receive_terminal(
    listener: Option<UnixListener>,
    path: Option<PathBuf>,
) -> Result<Option<OwnedFd>, RuntimeError> {
    let (Some(listener), Some(path)) = (listener, path) else {
        return Ok(None);
    };
    let result = take_fd(&listener);
    let _ = std::fs::remove_file(&path);
    match result {
        Ok(Some(fd)) => Ok(Some(fd)),
        Ok(None) => Err(RuntimeError::NoTerminal { path }),
        Err(source) => Err(RuntimeError::ConsoleSocket { path, source }),
    }
}

fn take_fd(listener: &UnixListener) -> io::Result<Option<OwnedFd>> {
    // The connection is already queued: never block PID 1 on it.
    listener.set_nonblocking(true)?;
    let (stream, _) = listener.accept()?;
    stream.set_nonblocking(false)?;
    let mut name = [0u8; 256];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    rustix::net::recvmsg(
        stream.as_fd(),
        &mut [IoSliceMut::new(&mut name)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut received = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            for fd in fds {
                received.get_or_insert(fd);
            }
        }
    }
    Ok(received)
}
