//! One process of a container as the shim tracks it: the init process
//! (exec id "") or an exec'd one; its state, exit and stdio copies.

use std::time::SystemTime;

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::{watch, Mutex};

use crate::stdio::{StdioCopies, StdioPaths};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped {
        exit_status: u32,
        exited_at: SystemTime,
    },
}

pub struct Process {
    pub exec_id: String,
    pub stdio: StdioPaths,
    /// The OCI process (JSON) of an exec'd process, until it starts.
    pub exec_spec: Option<Vec<u8>>,
    pub pid: std::sync::atomic::AtomicU32,
    status: watch::Sender<Status>,
    pub copies: Mutex<Option<StdioCopies>>,
}

impl Process {
    pub fn new(exec_id: &str, stdio: StdioPaths, exec_spec: Option<Vec<u8>>) -> Self {
        Self {
            exec_id: exec_id.to_owned(),
            stdio,
            exec_spec,
            pid: 0.into(),
            status: watch::channel(Status::Created).0,
            copies: Mutex::new(None),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    pub fn set_running(&self, pid: u32) {
        self.pid.store(pid, std::sync::atomic::Ordering::SeqCst);
        self.status.send_replace(Status::Running);
    }

    /// Records the exit once; later calls keep the first.
    pub fn set_stopped(&self, exit_status: u32, exited_at: SystemTime) -> bool {
        self.status.send_if_modified(|s| match s {
            Status::Stopped { .. } => false,
            _ => {
                *s = Status::Stopped {
                    exit_status,
                    exited_at,
                };
                true
            }
        })
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> (u32, SystemTime) {
        let mut rx = self.status.subscribe();
        loop {
            if let Status::Stopped {
                exit_status,
                exited_at,
            } = *rx.borrow()
            {
                return (exit_status, exited_at);
            }
            if rx.changed().await.is_err() {
                return (255, SystemTime::now());
            }
        }
    }
}

pub fn timestamp(at: SystemTime) -> Timestamp {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
        ..Default::default()
    }
}

pub fn from_unix_nanos(nanos: i64) -> SystemTime {
    if nanos <= 0 {
        return SystemTime::now();
    }
    SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(nanos as u64)
}
