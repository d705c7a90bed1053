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
//!
//! One exception: youki's libcontainer forks an intermediate process while
//! it builds a container and waits for it by pid. Code that lets a library
//! wait for its own children takes a [`ReapHold`] first: while one is held
//! the reaper does not sweep, and dropping it asks for a sweep at once.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustix::io::Errno;
use rustix::process::{wait, WaitOptions, WaitStatus};
use thiserror::Error;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Notify;

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

/// `__WALL`: also children whose exit signal is not SIGCHLD. libcontainer
/// clones container processes with `CLONE_PARENT` and no exit signal at
/// all: their exits raise no SIGCHLD and `waitpid(-1)` without `__WALL`
/// never reports them. Whoever starts such a child wakes the reaper with
/// [`Reaper::sweep_soon`] when it ends (e.g. from a pidfd).
const WALL: WaitOptions = WaitOptions::from_bits_retain(0x4000_0000);

/// How often the reaper sweeps even without a SIGCHLD.
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Reaps every child of the agent and tells its subscribers. Clones share
/// the subscribers.
#[derive(Debug, Clone, Default)]
pub struct Reaper {
    subscribers: Arc<Mutex<Vec<UnboundedSender<Exit>>>>,
    /// How many [`ReapHold`]s are live; no sweep while it is not 0.
    holds: Arc<AtomicUsize>,
    /// Wakes the reaping task when the last hold is dropped.
    kick: Arc<Notify>,
}

/// While it lives, the reaper leaves every child alone, so a library may
/// `waitpid` its own children by pid (see the module documentation).
#[derive(Debug)]
#[must_use = "the reaper sweeps again as soon as the hold is dropped"]
pub struct ReapHold {
    holds: Arc<AtomicUsize>,
    kick: Arc<Notify>,
}

impl Drop for ReapHold {
    fn drop(&mut self) {
        if self.holds.fetch_sub(1, Ordering::SeqCst) == 1 {
            // Exits that happened meanwhile are collected now.
            self.kick.notify_one();
        }
    }
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

    /// Asks the reaping task for a sweep now (a child ended that raises no
    /// SIGCHLD, see [`WALL`]).
    pub fn sweep_soon(&self) {
        self.kick.notify_one();
    }

    /// Suspends reaping until the returned hold is dropped.
    pub fn hold(&self) -> ReapHold {
        self.holds.fetch_add(1, Ordering::SeqCst);
        ReapHold {
            holds: Arc::clone(&self.holds),
            kick: Arc::clone(&self.kick),
        }
    }

    /// Installs the SIGCHLD handler and spawns the reaping task on the
    /// current tokio runtime. Children that ended before are reaped at once.
    ///
    /// The task sweeps on every SIGCHLD and, as a safety net, at least every
    /// [`SWEEP_INTERVAL`]: a wake-up lost anywhere between the kernel and
    /// tokio's signal driver (seen, rarely, under host load) then delays an
    /// exit by at most that long instead of losing it. The extra sweep is one
    /// `waitpid` a second.
    pub fn start(&self) -> Result<(), ReaperError> {
        let sigchld = signal(SignalKind::child()).map_err(ReaperError::Signal)?;
        let reaper = self.clone();
        tokio::spawn(async move {
            let mut sigchld = Some(sigchld);
            loop {
                reaper.reap();
                // SIGCHLDs coalesce: one wake-up may stand for many exits,
                // which the next sweep collects. PID 1 never stops reaping: if
                // the signal stream ends, the periodic sweep carries on alone.
                match sigchld.as_mut() {
                    Some(stream) => tokio::select! {
                        received = stream.recv() => if received.is_none() {
                            log::warn!("SIGCHLD stream ended; reaping every {SWEEP_INTERVAL:?}");
                            sigchld = None;
                        },
                        () = reaper.kick.notified() => {}
                        () = tokio::time::sleep(SWEEP_INTERVAL) => {}
                    },
                    None => tokio::select! {
                        () = reaper.kick.notified() => {}
                        () = tokio::time::sleep(SWEEP_INTERVAL) => {}
                    },
                }
            }
        });
        Ok(())
    }

    /// Reaps every child that has ended, publishing each; returns how many.
    /// Reaps nothing while a [`ReapHold`] is live.
    pub fn reap(&self) -> usize {
        let mut reaped = 0;
        if self.holds.load(Ordering::SeqCst) != 0 {
            return reaped;
        }
        loop {
            // `wait`, i.e. wait4(-1): rustix's `waitpid(None)` is wait4(0),
            // only the agent's own process group, and container processes
            // run in sessions of their own.
            match wait(WaitOptions::NOHANG | WALL) {
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

    /// How many subscriptions are live (dropped ones are forgotten at the
    /// next exit published).
    pub fn subscriber_count(&self) -> usize {
        self.lock().len()
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
