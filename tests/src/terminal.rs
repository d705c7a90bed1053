//! A pseudo-terminal for a command under test, as a user's terminal is to
//! `ctr run -t`: the command gets the terminal's slave side as stdin,
//! stdout and stderr, the test reads what it shows from the master side.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::containerd::wait_within;

/// How long the terminal's output may take to drain after the command ended.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Both sides of a new pseudo-terminal of `rows` x `columns`, close-on-exec
/// (the command gets copies of the slave as its stdio, nothing else).
fn open((rows, columns): (u16, u16)) -> (File, File) {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the two valid out-pointers;
    // the name may be null, and the termios (null: defaults) and window size
    // pointers are only read during the call.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty succeeded: both descriptors are new and owned by
    // nothing else in this process.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        // SAFETY: fcntl on a descriptor we own, setting a descriptor flag.
        let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        assert_eq!(rc, 0, "FD_CLOEXEC: {}", std::io::Error::last_os_error());
    }
    (File::from(master), File::from(slave))
}

/// Runs `command` on a new terminal of `size` (rows, columns) and waits up
/// to `limit` for it; kills it and fails the test when it takes longer.
/// Returns its exit status and everything it wrote to the terminal.
pub fn run(
    mut command: Command,
    size: (u16, u16),
    limit: Duration,
    what: &str,
) -> (ExitStatus, String) {
    let (mut master, slave) = open(size);
    let stdio = |f: &File| Stdio::from(f.try_clone().expect("dup the terminal"));
    let child = command
        .stdin(stdio(&slave))
        .stdout(stdio(&slave))
        .stderr(stdio(&slave))
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: starting: {e}"));
    // The command holds the only slave descriptors now (`command` kept
    // copies for its stdio): when it (and whatever it started on the
    // terminal) is gone, reading the master ends with EIO.
    drop(command);
    drop(slave);
    let (tx, screen) = mpsc::channel();
    std::thread::spawn(move || {
        let mut shown = Vec::new();
        // Read until EIO (no slave left); what came before stays in `shown`.
        let _ = master.read_to_end(&mut shown);
        let _ = tx.send(shown);
    });
    let status = wait_within(child, limit, what);
    let shown = screen
        .recv_timeout(DRAIN_TIMEOUT)
        .unwrap_or_else(|_| panic!("{what}: the terminal stayed open after it exited"));
    (status, String::from_utf8_lossy(&shown).into_owned())
}
