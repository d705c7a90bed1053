//! The guest's log for the host: the kernel's ring buffer, read through
//! `/dev/kmsg`, which also holds the agent's own lines (as PID 1 the agent
//! logs there, see [`crate::logger`]). The ring buffer bounds it; a reader
//! that falls behind loses the oldest records, never blocks the guest.
//!
//! Each read returns whole lines, `[seconds.micros] message\n`, waiting
//! until there is at least one the host has not read yet.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

const KMSG: &str = "/dev/kmsg";
/// What a read returns when the host does not say (`max_bytes` 0).
const DEFAULT_READ: usize = 64 << 10;
const MAX_READ: usize = 1 << 20;
/// The kernel's largest record (PRINTK_MESSAGE_MAX plus the prefix).
const RECORD_MAX: usize = 8192;

#[derive(Debug, Error)]
pub enum GuestLogError {
    #[error("cannot open {KMSG}")]
    Open(#[source] io::Error),
    #[error("cannot read {KMSG}")]
    Read(#[source] io::Error),
}

/// The reader; opened on first use and kept, so each read goes on where
/// the last one stopped.
#[derive(Debug, Default, Clone)]
pub struct GuestLog {
    kmsg: Arc<Mutex<Option<Arc<AsyncFd<OwnedFd>>>>>,
}

impl GuestLog {
    fn open(&self) -> Result<Arc<AsyncFd<OwnedFd>>, GuestLogError> {
        let mut slot = self.kmsg.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fd) = slot.as_ref() {
            return Ok(Arc::clone(fd));
        }
        let fd = rustix::fs::open(
            KMSG,
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| GuestLogError::Open(errno.into()))?;
        let fd = Arc::new(crate::container::stdio::async_fd(fd).map_err(GuestLogError::Open)?);
        *slot = Some(Arc::clone(&fd));
        Ok(fd)
    }

    /// Whole lines, at most `max_bytes` (but at least one line), waiting
    /// until there is one.
    pub async fn read(&self, max_bytes: u32) -> Result<Vec<u8>, GuestLogError> {
        let max = match usize::try_from(max_bytes).unwrap_or(MAX_READ) {
            0 => DEFAULT_READ,
            n => n.min(MAX_READ),
        };
        let kmsg = self.open()?;
        let mut out = Vec::new();
        let mut record = vec![0u8; RECORD_MAX];
        loop {
            let result = kmsg
                .async_io(Interest::READABLE, |fd| loop {
                    match rustix::io::read(fd, &mut record[..]) {
                        // Records were overwritten before we read them:
                        // the next read returns the oldest one left.
                        Err(Errno::PIPE) => continue,
                        // With something read already, do not wait for more.
                        Err(Errno::AGAIN) if !out.is_empty() => return Ok(0),
                        other => return other.map_err(io::Error::from),
                    }
                })
                .await;
            match result {
                Ok(0) => return Ok(out),
                Ok(n) => {
                    let line = format_record(&record[..n]);
                    if !out.is_empty() && out.len() + line.len() > max {
                        // Kept for the next read? /dev/kmsg cannot unread:
                        // the caller's limit is a hint, one record over it
                        // is better than a lost one.
                        out.extend(line);
                        return Ok(out);
                    }
                    out.extend(line);
                    if out.len() >= max {
                        return Ok(out);
                    }
                }
                Err(err) => return Err(GuestLogError::Read(err)),
            }
        }
    }
}

/// `pri,seq,usec,flags[,...];text\n[ KEY=value\n...]` as
/// `[seconds.micros] text\n`.
fn format_record(record: &[u8]) -> Vec<u8> {
    let record = String::from_utf8_lossy(record);
    let first = record.lines().next().unwrap_or("");
    let (prefix, text) = first.split_once(';').unwrap_or(("", first));
    let usec: u64 = prefix
        .split(',')
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    format!("[{:5}.{:06}] {text}\n", usec / 1_000_000, usec % 1_000_000).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_become_timestamped_lines() {
        let line = format_record(b"6,339,5140900,-;hull-agent: serving\n SUBSYSTEM=x\n");
        assert_eq!(line, b"[    5.140900] hull-agent: serving\n");
        assert_eq!(format_record(b"junk"), b"[    0.000000] junk\n");
    }
}
