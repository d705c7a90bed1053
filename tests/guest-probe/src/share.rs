//! The shared-directory check: mount the virtio-fs share with tag `tag` on
//! `/share`, read `in.txt`, write `out.txt` (as the block check does),
//! write and read back a file larger than one FUSE request, try
//! open-by-handle with forged handles, unmount.
//!
//! Report lines (`HULL_PROBE` prefix omitted):
//! - `fs TAG mount=ok read=20 write=ok big=ok handles=inside:3`
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
        "fs {tag} mount=ok read={} write=ok big={big_ok} handles={}",
        input.len(),
        handles()
    ))
}

/// `struct file_handle` with room for FUSE's handle (3 words).
#[repr(C)]
struct Handle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; 64],
}

/// Open-by-handle from the guest, as an attacker would: the handle of
/// `in.txt`, then forged handles for every FUSE node id up to 512
/// (generation 0). Returns `none(ERRNO)` when the share gives no handles,
/// `inside:N` when N handles opened and every one is a file of the share
/// (on its file system), `outside:...` for one that is not.
fn handles() -> String {
    let mut handle = Handle {
        handle_bytes: 64,
        handle_type: 0,
        f_handle: [0; 64],
    };
    let mut mount_id = 0;
    let path = c"/share/in.txt";
    // SAFETY: a NUL-terminated path, a handle buffer of the size it
    // declares, an int for the mount id.
    let rc = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            path.as_ptr(),
            (&mut handle as *mut Handle).cast(),
            &mut mount_id,
            0,
        )
    };
    if rc != 0 {
        return format!("none({})", Errno::from_raw_os_error(last_errno()));
    }
    // SAFETY: a NUL-terminated path.
    let mount_fd = unsafe { libc::open(c"/share".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    if mount_fd < 0 {
        return format!("none(open {})", Errno::from_raw_os_error(last_errno()));
    }
    let mut opened = 0;
    let mut verdict = None;
    let real = handle.f_handle;
    for nodeid in 0..=512u64 {
        let mut forged = Handle {
            handle_bytes: handle.handle_bytes,
            handle_type: handle.handle_type,
            f_handle: real,
        };
        if nodeid > 0 {
            // FUSE's handle: the node id's high and low words, then the
            // generation.
            forged.f_handle[..4].copy_from_slice(&((nodeid >> 32) as u32).to_ne_bytes());
            forged.f_handle[4..8].copy_from_slice(&(nodeid as u32).to_ne_bytes());
            forged.f_handle[8..12].copy_from_slice(&0u32.to_ne_bytes());
        }
        // SAFETY: an open directory fd and a handle buffer of the size it
        // declares.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount_fd,
                (&mut forged as *mut Handle).cast(),
                libc::O_RDONLY,
            )
        };
        if fd < 0 {
            continue;
        }
        opened += 1;
        // Inside the share is on the share's file system (the probe has
        // no /proc to name the file).
        let (dev, share_dev) = (device_of(fd), device_of(mount_fd));
        // SAFETY: closing the fd opened just above.
        unsafe { libc::close(fd) };
        if (dev.is_none() || dev != share_dev) && verdict.is_none() {
            verdict = Some(format!("outside:node{nodeid}:dev{dev:?}"));
        }
    }
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(mount_fd) };
    verdict.unwrap_or(format!("inside:{opened}"))
}

/// The device of the file open as `fd`.
fn device_of(fd: i32) -> Option<u64> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: an open fd and room for one stat.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: fstat succeeded, so it filled `st`.
    Some(unsafe { st.assume_init() }.st_dev)
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}
