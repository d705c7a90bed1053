//! The orphan reaper: PID 1 inherits every orphaned process in the guest and
//! must collect each one's exit, or zombies pile up.
//!
//! On SIGCHLD the reaper calls `waitpid(-1, WNOHANG)` until nothing is left
//! and publishes every `(pid, status)` to its subscribers. Since it reaps
//! *all* children, nobody else in the agent may wait for a child itself
//! (no `Child::wait`, no `tokio::process`): a container supervisor gets its
//! children's exits by subscribing, and must [`Reaper::subscribe`] before it
//! forks, so that no exit can be reaped before it listens (the same rule as
//! containerd-shim's `monitor_subscribe`).

use std::io;
use std::sync::{Arc, Mutex};

use rustix::io::Errno;
use rustix::process::{waitpid, WaitOptions, WaitStatus};
use thiserror::Error;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It called `exit` with this status.
    Exited(i32),
    /// It was killed by this signal.
    Signaled(i32),
}

impl ExitStatus {
    /// The status as a shell reports it: the exit status, or 128 + signal.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(status) => status,
            ExitStatus::Signaled(signal) => 128 + signal,
        }
    }

    fn from_wait_status(status: WaitStatus) -> Option<Self> {
        if let Some(code) = status.exit_status() {
            Some(ExitStatus::Exited(code))
        } else {
            status.terminating_signal().map(ExitStatus::Signaled)
        }
    }
}

/// One reaped child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: i32,
    pub status: ExitStatus,
}

#[derive(Debug, Error)]
pub enum ReaperError {
    #[error("cannot install the SIGCHLD handler")]
    Signal(#[source] io::Error),
}

/// Reaps every child of the agent and tells its subscribers. Clones share
/// the subscribers.
#[derive(Debug, Clone, Default)]
pub struct Reaper {
    subscribers: Arc<Mutex<Vec<UnboundedSender<Exit>>>>,
}

/// Exits published after [`Reaper::subscribe`]; nothing is dropped.
#[derive(Debug)]
pub struct ExitSubscription {
    exits: UnboundedReceiver<Exit>,
}

impl ExitSubscription {
    /// The next exit, or `None` if the reaper is gone.
    pub async fn recv(&mut self) -> Option<Exit> {
        self.exits.recv().await
    }

    /// How `pid` ended; exits of other processes are skipped.
    pub async fn wait_for(&mut self, pid: i32) -> Option<ExitStatus> {
        while let Some(exit) = self.exits.recv().await {
            if exit.pid == pid {
                return Some(exit.status);
            }
        }
        None
    }
}

impl Reaper {
    pub fn new() -> Self {
        Self::default()
    }

    /// Receives every exit reaped from now on. Call it before forking the
    /// children whose exits you want. Dropping the subscription unsubscribes.
    pub fn subscribe(&self) -> ExitSubscription {
        let (sender, exits) = unbounded_channel();
        self.lock().push(sender);
        ExitSubscription { exits }
    }

    /// Installs the SIGCHLD handler and spawns the reaping task on the
    /// current tokio runtime. Children that ended before are reaped at once.
    pub fn start(&self) -> Result<(), ReaperError> {
        let mut sigchld = signal(SignalKind::child()).map_err(ReaperError::Signal)?;
        let reaper = self.clone();
        tokio::spawn(async move {
            loop {
                reaper.reap();
                // SIGCHLDs coalesce: one wake-up may stand for many exits,
                // which the next sweep collects.
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(())
    }

    /// Reaps every child that has ended, publishing each; returns how many.
    pub fn reap(&self) -> usize {
        let mut reaped = 0;
        loop {
            match waitpid(None, WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => {
                    if let Some(status) = ExitStatus::from_wait_status(status) {
                        self.publish(Exit {
                            pid: pid.as_raw_nonzero().get(),
                            status,
                        });
                        reaped += 1;
                    }
                }
                Ok(None) | Err(Errno::CHILD) => return reaped,
                Err(Errno::INTR) => {}
                Err(errno) => {
                    log::warn!("waitpid(-1) failed: {errno}");
                    return reaped;
                }
            }
        }
    }

    fn publish(&self, exit: Exit) {
        // A send fails only when that subscription was dropped: forget it.
        self.lock()
            .retain(|subscriber| subscriber.send(exit).is_ok());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<UnboundedSender<Exit>>> {
        self.subscribers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::time::Duration;

    use tokio::time::timeout;

    use super::*;

    // The reaper, not `Child::wait`, collects it: that is what is tested.
    #[allow(clippy::zombie_processes)]
    fn spawn_shell(script: &str) -> i32 {
        let child = Command::new("sh")
            .args(["-c", script])
            .spawn()
            .expect("spawn sh");
        i32::try_from(child.id()).expect("pid fits i32")
    }

    // One test only: every reaper in this process reaps all its children.
    #[tokio::test(flavor = "current_thread")]
    async fn exits_reach_every_subscriber_with_their_status() {
        let reaper = Reaper::new();
        let mut first = reaper.subscribe();
        let mut second = reaper.subscribe();
        let dropped = reaper.subscribe();
        drop(dropped);
        reaper.start().expect("install SIGCHLD handler");

        let exited = spawn_shell("exit 3");
        let killed = spawn_shell("kill -9 $$");
        let wait = Duration::from_secs(20);

        let status = timeout(wait, first.wait_for(exited))
            .await
            .expect("exit in time");
        assert_eq!(status, Some(ExitStatus::Exited(3)));
        let status = timeout(wait, first.wait_for(killed))
            .await
            .expect("exit in time");
        assert_eq!(status, Some(ExitStatus::Signaled(9)));
        assert_eq!(status.map(ExitStatus::code), Some(137));

        let mut seen = Vec::new();
        while seen.len() < 2 {
            let exit = timeout(wait, second.recv())
                .await
                .expect("exit in time")
                .expect("reaper alive");
            seen.push(exit.pid);
        }
        seen.sort_unstable();
        let mut expected = vec![exited, killed];
        expected.sort_unstable();
        assert_eq!(seen, expected);
        assert_eq!(
            reaper.lock().len(),
            2,
            "the dropped subscription is forgotten"
        );
    }
}
