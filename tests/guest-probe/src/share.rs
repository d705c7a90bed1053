//! The shared-directory check: mount the virtio-fs share with tag `tag` on
//! `/share`, read `in.txt`, write `out.txt` (as the block check does),
//! write and read back a file larger than one FUSE request, unmount.
//!
//! Report lines (`HULL_PROBE` prefix omitted):
//! - `fs TAG mount=ok read=20 write=ok big=ok`
//! - `fs TAG error step=mount errno=EIO` when a step that must work fails.

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};

use crate::drive::expected_output;
use crate::report::{errno_name, Report};

const MOUNT_POINT: &str = "/share";
/// Larger than the largest FUSE request (60 pages): the write and the read
/// take several requests each.
const BIG: usize = 1 << 20;

struct StepError {
    step: &'static str,
    errno: Errno,
}

fn at(step: &'static str) -> impl FnOnce(Errno) -> StepError {
    move |errno| StepError { step, errno }
}

pub fn probe(tag: &str, report: &mut Report) {
    let line = match check(tag) {
        Ok(result) => result,
        Err(e) => format!(
            "fs {tag} error step={} errno={}",
            e.step,
            errno_name(e.errno.raw_os_error())
        ),
    };
    report.line(&line);
}

fn check(tag: &str) -> Result<String, StepError> {
    match rustix::fs::mkdir(MOUNT_POINT, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(errno) => return Err(at("mkdir")(errno)),
    }
    mount(tag, MOUNT_POINT, "virtiofs", MountFlags::empty(), None).map_err(at("mount"))?;
    let used = use_share(tag);
    unmount(MOUNT_POINT, UnmountFlags::empty()).map_err(at("umount"))?;
    used
}

fn use_share(tag: &str) -> Result<String, StepError> {
    let input = read(&format!("{MOUNT_POINT}/in.txt"), 4096).map_err(at("read"))?;
    write(
        &format!("{MOUNT_POINT}/out.txt"),
        &expected_output(&input, tag),
    )
    .map_err(at("write"))?;
    let big: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
    write(&format!("{MOUNT_POINT}/big.bin"), &big).map_err(at("write-big"))?;
    let back = read(&format!("{MOUNT_POINT}/big.bin"), BIG + 1).map_err(at("read-big"))?;
    let big_ok = if back == big { "ok" } else { "differs" };
    Ok(format!(
        "fs {tag} mount=ok read={} write=ok big={big_ok}",
        input.len()
    ))
}

fn read(path: &str, max: usize) -> Result<Vec<u8>, Errno> {
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

fn write(path: &str, data: &[u8]) -> Result<(), Errno> {
    let fd = rustix::fs::open(
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
