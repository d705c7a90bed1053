//! The block check: mount an ext4 drive on `/mnt`, read `in.txt`, try to
//! write `out.txt` and fsync it, unmount. A drive the guest sees as
//! read-only is mounted read-only after the read-write mount is refused;
//! the write then fails, and that failure is the result, not an error.
//!
//! Report lines (`HULL_PROBE` prefix omitted):
//! - `blk vda mount=rw read=20 write=ok`
//! - `blk vdb mount=ro rw_refused=EACCES read=20 write=EROFS`
//! - `blk vda error step=mount errno=ENOENT` when a step that must work fails.

use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};

use crate::report::{errno_name, Report};

const MOUNT_POINT: &str = "/mnt";
/// Larger inputs are read only this far.
const MAX_INPUT: usize = 4096;

/// What the probe writes to `out.txt` for `input` read from drive `dev`:
/// the input (trailing whitespace dropped) reversed, then a marker line.
pub fn expected_output(input: &[u8], dev: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(input);
    let mut out: String = text.trim_end().chars().rev().collect();
    out.push_str(&format!("\nwritten by hull-guest-probe on /dev/{dev}\n"));
    out.into_bytes()
}

/// A step that had to work and did not.
pub struct StepError {
    step: &'static str,
    errno: Errno,
}

pub fn at(step: &'static str) -> impl FnOnce(Errno) -> StepError {
    move |errno| StepError { step, errno }
}

/// Reports a check's line, or `<what> error step=... errno=...`.
pub fn report_check(what: &str, result: Result<String, StepError>, report: &mut Report) {
    let line = match result {
        Ok(result) => result,
        Err(e) => format!(
            "{what} error step={} errno={}",
            e.step,
            errno_name(e.errno.raw_os_error())
        ),
    };
    report.line(&line);
}

/// Check `/dev/<dev>` and report the outcome.
pub fn probe(dev: &str, report: &mut Report) {
    report_check(&format!("blk {dev}"), check(dev), report);
}

fn check(dev: &str) -> Result<String, StepError> {
    match rustix::fs::mkdir(MOUNT_POINT, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(errno) => return Err(at("mkdir")(errno)),
    }
    let source = format!("/dev/{dev}");
    let mode = match mount(&source, MOUNT_POINT, "ext4", MountFlags::empty(), None) {
        Ok(()) => "rw".to_string(),
        Err(refused @ (Errno::ACCESS | Errno::ROFS)) => {
            mount(&source, MOUNT_POINT, "ext4", MountFlags::RDONLY, None)
                .map_err(at("mount-ro"))?;
            format!("ro rw_refused={}", errno_name(refused.raw_os_error()))
        }
        Err(errno) => return Err(at("mount")(errno)),
    };
    let used = read_and_write(dev);
    // Unmount whatever happened: it also writes the journal back.
    unmount(MOUNT_POINT, UnmountFlags::empty()).map_err(at("umount"))?;
    let (read, write) = used?;
    let write = match write {
        Ok(()) => "ok".to_string(),
        Err(errno) => errno_name(errno.raw_os_error()),
    };
    Ok(format!("blk {dev} mount={mode} read={read} write={write}"))
}

/// Read `in.txt`; then the outcome of writing `out.txt` (a failure here is
/// a result: the drive may be read-only).
fn read_and_write(dev: &str) -> Result<(usize, Result<(), Errno>), StepError> {
    let input = read_file(&format!("{MOUNT_POINT}/in.txt"), MAX_INPUT).map_err(at("read"))?;
    let output = expected_output(&input, dev);
    Ok((
        input.len(),
        write_synced(&format!("{MOUNT_POINT}/out.txt"), &output),
    ))
}

/// Up to `max` bytes of `path`.
pub fn read_file(path: &str, max: usize) -> Result<Vec<u8>, Errno> {
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    let mut data = vec![0u8; max];
    let mut len = 0;
    while let Some(rest) = data.get_mut(len..).filter(|r| !r.is_empty()) {
        match rustix::io::read(&fd, rest)? {
            0 => break,
            n => len += n,
        }
    }
    data.truncate(len);
    Ok(data)
}

pub fn write_synced(path: &str, data: &[u8]) -> Result<(), Errno> {
    let fd: OwnedFd = rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    let mut rest = data;
    while !rest.is_empty() {
        match rustix::io::write(&fd, rest)? {
            0 => return Err(Errno::IO),
            n => rest = rest.get(n..).unwrap_or_default(),
        }
    }
    rustix::fs::fsync(&fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_the_input_reversed_and_a_marker() {
        assert_eq!(
            expected_output(b"hello, hull\n", "vda"),
            b"lluh ,olleh\nwritten by hull-guest-probe on /dev/vda\n"
        );
    }
}
