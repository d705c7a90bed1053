//! A container's root filesystem: the host's directory shared by virtio-fs
//! (found by its tag), or the virtio-blk disk the VMM attached for it
//! (found by its serial), mounted under the container's directory, with a
//! tmpfs overlay on top when the host asks for one.
//!
//! Layout under `<container dir>`: `disk` (the container's directory of
//! the share, bound, or the disk itself), and with an overlay `scratch` (a
//! tmpfs holding `upper` and `work`); `rootfs` is `disk` or the overlay.
//! [`Rootfs::unmount`] undoes it in reverse order. Shares (the rootfs's,
//! the host bind mounts') are mounted once per guest, at
//! [`SHARES`]`/<tag>`, and stay: every container of a pod has its own
//! directory in them.

use std::io;
use std::path::{Path, PathBuf};

use hull_protocol::agent_api::agent::Storage;
use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};
use thiserror::Error;

/// Where the kernel lists block devices; `vd*` are virtio-blk disks.
const SYS_BLOCK: &str = "/sys/block";
/// The longest serial virtio-blk reports (VIRTIO_BLK_ID_BYTES).
const MAX_SERIAL: usize = 20;
/// The longest virtio-fs tag (virtio 1.2, 5.11.4).
const MAX_TAG: usize = 36;
/// Where the guest mounts the host's shares, by tag.
pub const SHARES: &str = "/run/hull/shares";

#[derive(Debug, Error)]
pub enum RootfsError {
    #[error("{field}.disk_serial: {serial:?} is not a valid serial (1 to {MAX_SERIAL} bytes)")]
    BadSerial { field: &'static str, serial: String },
    #[error("{field}.fstype: {fstype:?} is not supported (ext4 and virtiofs are)")]
    BadFsType { field: &'static str, fstype: String },
    #[error("{field}.options: {option:?} is not a supported mount option")]
    BadOption { field: &'static str, option: String },
    #[error("{field}: {reason}")]
    BadShare { field: &'static str, reason: String },
    #[error("no virtio-blk disk has serial {serial:?}")]
    NoSuchDisk { serial: String },
    #[error("cannot list {SYS_BLOCK}")]
    ListDisks(#[source] io::Error),
    #[error("cannot create {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount {what} on {target}")]
    Mount {
        what: &'static str,
        target: PathBuf,
        #[source]
        errno: Errno,
    },
    #[error("cannot unmount {target}")]
    Unmount {
        target: PathBuf,
        #[source]
        errno: Errno,
    },
}

impl RootfsError {
    /// The host asked for something impossible (as opposed to the guest
    /// failing at something possible).
    pub fn is_invalid_request(&self) -> bool {
        matches!(
            self,
            RootfsError::BadSerial { .. }
                | RootfsError::BadFsType { .. }
                | RootfsError::BadOption { .. }
                | RootfsError::BadShare { .. }
                | RootfsError::NoSuchDisk { .. }
        )
    }
}

/// A mounted rootfs; the mounts are listed innermost last.
#[derive(Debug)]
pub struct Rootfs {
    path: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Rootfs {
    /// The container's root directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts everything, innermost first. A busy mount is detached
    /// (it goes away once its last user does) rather than left behind.
    pub fn unmount(&mut self) -> Result<(), RootfsError> {
        let mut first_error = None;
        while let Some(target) = self.mounts.pop() {
            let result = rustix::mount::unmount(&target, UnmountFlags::empty()).or_else(|errno| {
                if errno == Errno::BUSY {
                    rustix::mount::unmount(&target, UnmountFlags::DETACH)
                } else {
                    Err(errno)
                }
            });
            if let Err(errno) = result {
                if errno != Errno::INVAL {
                    first_error.get_or_insert(RootfsError::Unmount { target, errno });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        if let Err(err) = self.unmount() {
            log::warn!("{}", crate::logger::error_chain(&err));
        }
    }
}

/// Checks the request for the rootfs in request field `field` (`rootfs`:
/// a disk, or a share with `fstype` virtiofs) without touching anything.
pub fn check(storage: &Storage, field: &'static str) -> Result<MountFlags, RootfsError> {
    if storage.fstype == "virtiofs" {
        check_tag(storage, field)?;
        return flags_of(storage, field);
    }
    let serial = &storage.disk_serial;
    if serial.is_empty() || serial.len() > MAX_SERIAL {
        return Err(RootfsError::BadSerial {
            field,
            serial: serial.clone(),
        });
    }
    if !(storage.fstype.is_empty() || storage.fstype == "ext4") {
        return Err(RootfsError::BadFsType {
            field,
            fstype: storage.fstype.clone(),
        });
    }
    flags_of(storage, field)
}

/// Checks the request for a shared directory (virtio-fs) in request field
/// `field` (`binds`) without touching anything.
pub fn check_share(storage: &Storage, field: &'static str) -> Result<MountFlags, RootfsError> {
    let bad = |reason: String| RootfsError::BadShare { field, reason };
    if storage.fstype != "virtiofs" {
        return Err(bad(format!(
            "fstype {:?}: only a virtiofs share is supported",
            storage.fstype
        )));
    }
    check_tag(storage, field)?;
    if storage.overlay {
        return Err(bad("a share of binds has no overlay".into()));
    }
    flags_of(storage, field)
}

/// A share's tag and subdirectory, and nothing of a disk.
fn check_tag(storage: &Storage, field: &'static str) -> Result<(), RootfsError> {
    let bad = |reason: String| RootfsError::BadShare { field, reason };
    let subdir = &storage.subdir;
    let one_component = matches!(
        Path::new(subdir).components().collect::<Vec<_>>().as_slice(),
        [std::path::Component::Normal(name)] if name.len() == subdir.len()
    );
    if !subdir.is_empty() && !one_component {
        return Err(bad(format!("subdir {subdir:?} is not one path component")));
    }
    let tag = &storage.tag;
    if tag.is_empty()
        || tag.len() > MAX_TAG
        || !tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(bad(format!("tag {tag:?} is not a virtiofs tag")));
    }
    if !storage.disk_serial.is_empty() {
        return Err(bad("a share has no disk serial".into()));
    }
    Ok(())
}

fn flags_of(storage: &Storage, field: &'static str) -> Result<MountFlags, RootfsError> {
    let mut flags = MountFlags::empty();
    for option in &storage.options {
        flags |= match option.as_str() {
            "noatime" => MountFlags::NOATIME,
            "nodiratime" => MountFlags::NODIRATIME,
            "relatime" => MountFlags::RELATIME,
            "nodev" => MountFlags::NODEV,
            "nosuid" => MountFlags::NOSUID,
            "noexec" => MountFlags::NOEXEC,
            "ro" => MountFlags::RDONLY,
            "rw" | "defaults" => MountFlags::empty(),
            _ => {
                return Err(RootfsError::BadOption {
                    field,
                    option: option.clone(),
                })
            }
        };
    }
    if storage.readonly {
        flags |= MountFlags::RDONLY;
    }
    Ok(flags)
}

/// The `/dev` node of the virtio-blk disk whose serial is `serial`.
pub fn find_disk(serial: &str) -> Result<PathBuf, RootfsError> {
    let entries = std::fs::read_dir(SYS_BLOCK).map_err(RootfsError::ListDisks)?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("vd") {
            continue;
        }
        let Ok(found) = std::fs::read(entry.path().join("serial")) else {
            continue;
        };
        let found = found.strip_suffix(b"\n").unwrap_or(&found);
        if found == serial.as_bytes() {
            wait_for_capacity(&entry.path().join("size"));
            return Ok(Path::new("/dev").join(name));
        }
    }
    Err(RootfsError::NoSuchDisk {
        serial: serial.to_owned(),
    })
}

/// In a guest restored from a template, the disk in a slot was an empty
/// placeholder when the template booted: the kernel learns the new disk's
/// size from a configuration interrupt, handled on a workqueue. Waits (a
/// bounded time) until the size is there; a cold boot's disks have it.
fn wait_for_capacity(size: &Path) {
    let sectors = || {
        std::fs::read_to_string(size)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + CAPACITY_WAIT;
    while sectors() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// How long [`wait_for_capacity`] waits.
const CAPACITY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn mkdir(path: &Path) -> Result<(), RootfsError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(RootfsError::CreateDir {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Mounts the share or disk `storage` names under `dir` (which exists),
/// with an overlay if asked. On error nothing stays mounted.
pub fn mount(storage: &Storage, dir: &Path) -> Result<Rootfs, RootfsError> {
    let flags = check(storage, "rootfs")?;
    if storage.fstype == "virtiofs" {
        let share = mount_share(storage, MountFlags::empty())?;
        return mount_shared_rootfs(storage, flags, &share.join(&storage.subdir), dir);
    }
    let device = find_disk(&storage.disk_serial)?;
    let disk = dir.join("disk");
    let mut rootfs = Rootfs {
        path: disk.clone(),
        mounts: Vec::new(),
    };
    mkdir(&disk)?;
    // Under an overlay the disk is only ever read.
    let disk_flags = if storage.overlay {
        flags | MountFlags::RDONLY
    } else {
        flags
    };
    rustix::mount::mount(&device, &disk, "ext4", disk_flags, None).map_err(|errno| {
        RootfsError::Mount {
            what: "the rootfs disk",
            target: disk.clone(),
            errno,
        }
    })?;
    rootfs.mounts.push(disk.clone());
    if !storage.overlay {
        return Ok(rootfs);
    }
    overlay(storage, dir, rootfs)
}

/// The container's directory `source` of the mounted rootfs share, bound
/// on `dir/disk` (read-only as `flags` say), with an overlay if asked.
fn mount_shared_rootfs(
    storage: &Storage,
    flags: MountFlags,
    source: &Path,
    dir: &Path,
) -> Result<Rootfs, RootfsError> {
    let disk = dir.join("disk");
    let mut rootfs = Rootfs {
        path: disk.clone(),
        mounts: Vec::new(),
    };
    mkdir(&disk)?;
    let mount_err = |what| {
        let target = disk.clone();
        move |errno| RootfsError::Mount {
            what,
            target,
            errno,
        }
    };
    rustix::mount::mount_bind(source, &disk).map_err(mount_err("the shared rootfs (virtiofs)"))?;
    rootfs.mounts.push(disk.clone());
    let read_only = flags.contains(MountFlags::RDONLY) || storage.overlay;
    if read_only || !flags.is_empty() {
        let remount = flags
            | if read_only {
                MountFlags::RDONLY
            } else {
                MountFlags::empty()
            };
        rustix::mount::mount_remount(&disk, remount | MountFlags::BIND, "")
            .map_err(mount_err("the shared rootfs, read-only"))?;
    }
    if !storage.overlay {
        return Ok(rootfs);
    }
    overlay(storage, dir, rootfs)
}

/// An overlay on `rootfs` (mounted at `dir/disk`) whose upper layer is a
/// tmpfs: the container's root becomes `dir/rootfs`.
fn overlay(storage: &Storage, dir: &Path, mut rootfs: Rootfs) -> Result<Rootfs, RootfsError> {
    let disk = dir.join("disk");

    let scratch = dir.join("scratch");
    mkdir(&scratch)?;
    rustix::mount::mount(
        "tmpfs",
        &scratch,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(c"mode=0755"),
    )
    .map_err(|errno| RootfsError::Mount {
        what: "the overlay's tmpfs",
        target: scratch.clone(),
        errno,
    })?;
    rootfs.mounts.push(scratch.clone());
    let (upper, work) = (scratch.join("upper"), scratch.join("work"));
    mkdir(&upper)?;
    mkdir(&work)?;
    let merged = dir.join("rootfs");
    mkdir(&merged)?;
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        disk.display(),
        upper.display(),
        work.display()
    );
    let data = std::ffi::CString::new(data).map_err(|_| RootfsError::BadSerial {
        field: "rootfs",
        serial: storage.disk_serial.clone(),
    })?;
    rustix::mount::mount(
        "overlay",
        &merged,
        "overlay",
        MountFlags::empty(),
        Some(&*data),
    )
    .map_err(|errno| RootfsError::Mount {
        what: "the overlay",
        target: merged.clone(),
        errno,
    })?;
    rootfs.mounts.push(merged.clone());
    rootfs.path = merged;
    Ok(rootfs)
}

/// The share `storage` names, mounted once per guest at
/// [`SHARES`]`/<tag>` with `flags`: where it is.
fn mount_share(storage: &Storage, flags: MountFlags) -> Result<PathBuf, RootfsError> {
    let target = Path::new(SHARES).join(&storage.tag);
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|point| Path::new(point) == target);
    if mounted {
        return Ok(target);
    }
    std::fs::create_dir_all(&target).map_err(|source| RootfsError::CreateDir {
        path: target.clone(),
        source,
    })?;
    rustix::mount::mount(&storage.tag, &target, "virtiofs", flags, None).map_err(|errno| {
        RootfsError::Mount {
            what: "a shared directory (virtiofs)",
            target: target.clone(),
            errno,
        }
    })?;
    Ok(target)
}

/// The container's directory of the shared directory holding its host
/// bind mounts (`binds` in the request: a virtio-fs tag and the
/// container's subdirectory); the share is mounted nosuid and nodev once
/// per guest. Every bind mount's source is a path in that directory.
pub fn mount_binds(storage: &Storage) -> Result<PathBuf, RootfsError> {
    let flags = check_share(storage, "binds")?;
    let share = mount_share(storage, flags | MountFlags::NOSUID | MountFlags::NODEV)?;
    Ok(share.join(&storage.subdir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(serial: &str) -> Storage {
        Storage {
            disk_serial: serial.to_owned(),
            fstype: "ext4".to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn requests_are_checked_before_anything_is_touched() {
        assert!(check(&storage("rootfs"), "rootfs").unwrap().is_empty());
        let err = check(&storage(""), "rootfs").unwrap_err();
        assert!(err.is_invalid_request());
        assert!(matches!(
            check(&storage(&"s".repeat(21)), "rootfs"),
            Err(RootfsError::BadSerial { .. })
        ));
        let mut xfs = storage("a");
        xfs.fstype = "xfs".into();
        assert_eq!(
            check(&xfs, "rootfs").unwrap_err().to_string(),
            "rootfs.fstype: \"xfs\" is not supported (ext4 and virtiofs are)"
        );
        let mut opts = storage("a");
        opts.options = vec!["noatime".into(), "bogus".into()];
        assert!(
            matches!(check(&opts, "rootfs"), Err(RootfsError::BadOption { option, .. }) if option == "bogus")
        );
        opts.options.pop();
        opts.readonly = true;
        assert_eq!(
            check(&opts, "rootfs").unwrap(),
            MountFlags::NOATIME | MountFlags::RDONLY
        );
    }

    #[test]
    fn shares_are_checked_before_anything_is_touched() {
        let share = |tag: &str| Storage {
            fstype: "virtiofs".into(),
            tag: tag.into(),
            ..Default::default()
        };
        assert!(check_share(&share("hull-share"), "binds")
            .unwrap()
            .is_empty());
        for tag in ["", "a b", "../x", &"t".repeat(37)] {
            let err = check_share(&share(tag), "binds").unwrap_err();
            assert!(err.is_invalid_request());
            assert!(err.to_string().starts_with("binds: tag"), "{err}");
        }
        let mut ext4 = share("t");
        ext4.fstype = "ext4".into();
        assert!(check_share(&ext4, "binds").is_err());
        let mut with_disk = share("t");
        with_disk.disk_serial = "binds".into();
        assert!(check_share(&with_disk, "binds").is_err());
        assert!(check(&with_disk, "rootfs").is_err());
        let mut overlaid = share("hull-rootfs");
        overlaid.overlay = true;
        overlaid.readonly = true;
        assert!(check_share(&overlaid, "binds").is_err());
        assert_eq!(check(&overlaid, "rootfs").unwrap(), MountFlags::RDONLY);
        let err = check(&share("a b"), "rootfs").unwrap_err();
        assert!(err.to_string().starts_with("rootfs: tag"), "{err}");
        for subdir in ["c1", "pod-container_2"] {
            let mut ok = share("t");
            ok.subdir = subdir.into();
            check(&ok, "rootfs").unwrap();
        }
        for subdir in ["..", ".", "a/b", "/abs", "a/"] {
            let mut bad = share("t");
            bad.subdir = subdir.into();
            let err = check(&bad, "rootfs").unwrap_err();
            assert!(err.to_string().contains("subdir"), "{subdir:?}: {err}");
        }
        let mut ro = share("t");
        ro.readonly = true;
        assert_eq!(check_share(&ro, "binds").unwrap(), MountFlags::RDONLY);
    }
}
