//! The shared-directory check: mount the virtio-fs share with tag `tag` on
//! `/share`, read `in.txt`, write `out.txt` (as the block check does),
//! write and read back a file larger than one FUSE request, unmount.
//!
//! Report lines (`HULL_PROBE` prefix omitted):
//! - `fs TAG mount=ok read=20 write=ok big=ok`
//! - `fs TAG error step=mount errno=EIO` when a step that must work fails.

use rustix::fs::Mode;
use rustix::io::Errno;
use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};

use crate::drive::{at, expected_output, read_file, report_check, write_synced, StepError};
use crate::report::Report;

const MOUNT_POINT: &str = "/share";
/// Larger than the largest FUSE request (60 pages): the write and the read
/// take several requests each.
const BIG: usize = 1 << 20;

pub fn probe(tag: &str, report: &mut Report) {
    report_check(&format!("fs {tag}"), check(tag), report);
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
    let input = read_file(&format!("{MOUNT_POINT}/in.txt"), 4096).map_err(at("read"))?;
    write_synced(
        &format!("{MOUNT_POINT}/out.txt"),
        &expected_output(&input, tag),
    )
    .map_err(at("write"))?;
    let big: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
    write_synced(&format!("{MOUNT_POINT}/big.bin"), &big).map_err(at("write-big"))?;
    let back = read_file(&format!("{MOUNT_POINT}/big.bin"), BIG + 1).map_err(at("read-big"))?;
    let big_ok = if back == big { "ok" } else { "differs" };
    Ok(format!(
        "fs {tag} mount=ok read={} write=ok big={big_ok}",
        input.len()
    ))
}
