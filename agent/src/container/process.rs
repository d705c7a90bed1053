//! One process of a container (its init or an exec'd one): its pid, its
//! stdio, and its exit once the reaper has collected it.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::stdio::Stdio;
use crate::reaper::ExitStatus;

/// How a process ended, as `WaitProcess` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exited {
    /// The exit status, or 128 + the signal that killed it.
    pub status: u32,
    /// When the agent learnt of it, in nanoseconds since the Unix epoch.
    pub at_unix_nanos: i64,
}

impl Exited {
    pub fn now(status: ExitStatus) -> Self {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        Exited {
            status: u32::try_from(status.code()).unwrap_or(u32::MAX),
            at_unix_nanos: at,
        }
    }
}

/// A process the agent started in a container.
#[derive(Debug)]
pub struct Process {
    pub pid: i32,
    pub terminal: bool,
    pub stdio: Stdio,
    exit: watch::Sender<Option<Exited>>,
}

impl Process {
    pub fn new(pid: i32, terminal: bool, stdio: Stdio) -> Self {
        Process {
            pid,
            terminal,
            stdio,
            exit: watch::Sender::new(None),
        }
    }

    /// Records the exit (the first one counts) and wakes every waiter.
    pub fn exited(&self, exited: Exited) {
        self.exit.send_if_modified(|slot| {
            if slot.is_none() {
                *slot = Some(exited);
                true
            } else {
                false
            }
        });
    }

    /// The exit, if the process has ended.
    pub fn exit(&self) -> Option<Exited> {
        *self.exit.borrow()
    }

    /// Waits until the process has ended.
    pub async fn wait(&self) -> Exited {
        let mut receiver = self.exit.subscribe();
        loop {
            if let Some(exit) = *receiver.borrow_and_update() {
                return exit;
            }
            if receiver.changed().await.is_err() {
                // The sender lives in `self`: it cannot be gone while we
                // borrow it. Should it ever be, never answer wrongly.
                std::future::pending::<()>().await;
            }
        }
    }
}
