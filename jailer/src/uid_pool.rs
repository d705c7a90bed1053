//! Jail uids handed out so that no two live sandboxes share one.
//!
//! A sandbox's default uid is derived from its id (stable, so logs and
//! `ps` read the same across restarts), but 2^20 uids for hashed ids
//! collide (about 38 % for 1,000 sandboxes), and two VMMs with one uid
//! could signal and ptrace each other. So a uid is *leased*: the jailer's
//! supervisor holds an exclusive `flock` on `<dir>/<uid>` for the
//! sandbox's whole life, probing the next uids when the derived one is
//! taken. The lock lives in the supervisor, not the shim, so it survives
//! shim and containerd restarts, and the kernel drops it when the
//! supervisor dies, however it dies. An explicit `--uid` is leased too and
//! refused while another sandbox holds it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where the leases are (tmpfs: none survives a reboot, as no sandbox does).
pub const LEASE_DIR: &str = "/run/hull/jail-uids";
/// How many uids after the derived one are tried before giving up.
const PROBES: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum UidPoolError {
    #[error("cannot use the uid lease directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lease uid {uid} ({path})")]
    Lock {
        uid: u32,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("uid {uid} is in use by another live sandbox: give each sandbox its own")]
    InUse { uid: u32 },
    #[error("no free jail uid among {PROBES} from {first}")]
    Exhausted { first: u32 },
}

/// A uid held for one sandbox until dropped.
#[derive(Debug)]
pub struct UidLease {
    uid: u32,
    path: PathBuf,
    // Holds the flock; closed (releasing it) on drop.
    _file: File,
}

impl UidLease {
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Leases `uid` exactly.
    pub fn exact(dir: &Path, uid: u32) -> Result<Self, UidPoolError> {
        prepare(dir)?;
        try_lease(dir, uid)?.ok_or(UidPoolError::InUse { uid })
    }

    /// Leases the first free uid from `first`, wrapping within
    /// `[base, base + range)`.
    pub fn first_free(dir: &Path, first: u32, base: u32, range: u32) -> Result<Self, UidPoolError> {
        prepare(dir)?;
        for step in 0..PROBES.min(range) {
            let uid = base + (first - base + step) % range;
            if let Some(lease) = try_lease(dir, uid)? {
                return Ok(lease);
            }
        }
        Err(UidPoolError::Exhausted { first })
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        // Unlinked while still locked: a jailer that opened the old file
        // finds, after taking the lock, that the path no longer names it
        // and tries again (see `try_lease`).
        let _ = std::fs::remove_file(&self.path);
    }
}

fn prepare(dir: &Path) -> Result<(), UidPoolError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| UidPoolError::Dir {
            path: dir.into(),
            source,
        })?;
    sweep(dir);
    Ok(())
}

/// Removes the lease files of sandboxes whose supervisor was SIGKILLed
/// (the kernel dropped their lock, but nobody unlinked the file): each one
/// that can be locked now is held by nobody.
fn sweep(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(uid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // Dropping the lease unlinks the file while it is still locked.
        if let Ok(Some(stale)) = try_lease(dir, uid) {
            drop(stale);
        }
    }
}

/// `Some` lease if `uid` is free, `None` if another sandbox holds it.
fn try_lease(dir: &Path, uid: u32) -> Result<Option<UidLease>, UidPoolError> {
    let path = dir.join(uid.to_string());
    let err = |source| UidPoolError::Lock {
        uid,
        path: path.clone(),
        source,
    };
    loop {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(err)?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let source = std::io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(None);
            }
            return Err(err(source));
        }
        // The holder before us may have unlinked the file after we opened
        // it: our lock is then on a file nobody else will ever see.
        let held = file.metadata().map_err(err)?;
        match std::fs::metadata(&path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                return Ok(Some(UidLease {
                    uid,
                    path,
                    _file: file,
                }))
            }
            _ => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_uid_is_never_leased_twice_and_is_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let a = UidLease::first_free(dir.path(), 1007, 1000, 8).unwrap();
        assert_eq!(a.uid(), 1007);
        // The same derived uid: the next free one, wrapping in the range.
        let b = UidLease::first_free(dir.path(), 1007, 1000, 8).unwrap();
        assert_eq!(b.uid(), 1000);
        assert!(matches!(
            UidLease::exact(dir.path(), 1007),
            Err(UidPoolError::InUse { uid: 1007 })
        ));
        drop(a);
        assert_eq!(UidLease::exact(dir.path(), 1007).unwrap().uid(), 1007);
        let c = UidLease::first_free(dir.path(), 1000, 1000, 1);
        assert!(matches!(c, Err(UidPoolError::Exhausted { first: 1000 })));
        drop(b);
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "leases are removed"
        );
    }

    #[test]
    fn a_killed_holders_lease_file_is_swept() {
        let dir = tempfile::tempdir().unwrap();
        // What a SIGKILLed supervisor leaves: a file nobody locks.
        std::fs::write(dir.path().join("3000"), "").unwrap();
        let held = UidLease::exact(dir.path(), 3001).unwrap();
        assert!(
            !dir.path().join("3000").exists(),
            "a stale lease file was kept"
        );
        assert!(dir.path().join("3001").exists(), "a held lease was swept");
        drop(held);
    }

    #[test]
    fn a_lease_excludes_every_other_open_file() {
        // flock is per open file: what holds for this second one holds for
        // another jailer process.
        let dir = tempfile::tempdir().unwrap();
        let lease = UidLease::exact(dir.path(), 2000).unwrap();
        let path = dir.path().join("2000");
        let other = File::options().write(true).open(&path).unwrap();
        // SAFETY: flock on a descriptor this test owns.
        let rc = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_ne!(rc, 0, "a second open file description got the lock");
        drop(lease);
    }
}
