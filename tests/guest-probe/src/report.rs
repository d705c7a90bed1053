//! How the probe reports: one `HULL_PROBE <text>` line per result, written
//! to `/dev/kmsg` at priority 3 (error), which the kernel prints on the
//! serial console synchronously even with `quiet`. Until `/dev` is mounted,
//! or if `/dev/kmsg` cannot be opened, lines go to stdout (the console).

use std::io::Write;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{mount, MountFlags};

/// What every report line starts with; the tests look for it.
pub const PREFIX: &str = "HULL_PROBE";
/// `/dev/kmsg` rejects records longer than about 1 KiB.
const MAX_TEXT: usize = 800;

pub struct Report {
    kmsg: Option<std::fs::File>,
}

impl Report {
    /// Mount devtmpfs on `/dev` (the drives and `/dev/kmsg` live there) and
    /// open `/dev/kmsg`. Failures are reported on stdout, not fatal.
    pub fn open() -> Self {
        let mut report = Self { kmsg: None };
        match mount("devtmpfs", "/dev", "devtmpfs", MountFlags::NOSUID, None) {
            Ok(()) | Err(Errno::BUSY) => {}
            Err(errno) => report.line(&format!(
                "devtmpfs error errno={}",
                errno_name(errno.raw_os_error())
            )),
        }
        match rustix::fs::open("/dev/kmsg", OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => report.kmsg = Some(fd.into()),
            Err(errno) => report.line(&format!(
                "kmsg error errno={}",
                errno_name(errno.raw_os_error())
            )),
        }
        report
    }

    /// Report one line; `text` is cut to [`MAX_TEXT`] bytes and must not
    /// contain a newline (it would split the record).
    pub fn line(&mut self, text: &str) {
        let text = one_line(text);
        if let Some(kmsg) = &mut self.kmsg {
            // One write is one kernel log record.
            if kmsg
                .write_all(format!("<3>{PREFIX} {text}\n").as_bytes())
                .is_ok()
            {
                return;
            }
        }
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(format!("{PREFIX} {text}\n").as_bytes());
        let _ = stdout.flush();
    }
}

/// `text` without newlines, at most [`MAX_TEXT`] bytes, cut on a character
/// boundary.
fn one_line(text: &str) -> String {
    let mut end = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end)
        .unwrap_or_default()
        .replace(['\n', '\r'], " ")
}

/// The symbolic name of an errno, for report lines the tests can match.
pub fn errno_name(raw: i32) -> String {
    let name = match raw {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EPIPE => "EPIPE",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EUCLEAN => "EUCLEAN",
        _ => return format!("errno{raw}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_stay_single_and_short() {
        assert_eq!(one_line("a\nb\r"), "a b ");
        let long = "é".repeat(MAX_TEXT);
        let cut = one_line(&long);
        assert!(cut.len() <= MAX_TEXT && cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn errnos_have_names() {
        assert_eq!(errno_name(libc::EROFS), "EROFS");
        assert_eq!(errno_name(libc::EACCES), "EACCES");
        assert_eq!(errno_name(9999), "errno9999");
    }
}
