//! The container's root filesystem for the guest, one of three ways:
//! - shared (virtio-fs, the default): containerd's rootfs mounts (an
//!   overlay of the image's layers, or a native snapshot), or Docker's
//!   mounted rootfs, are mounted on a share of their own that virtiofsd
//!   serves; the container writes straight into its snapshot on the host
//!   ([`share`]);
//! - a snapshot that already is a disk (blockfile, devmapper) is attached
//!   as it is ([`direct_disk`]);
//! - copied (`rootfs = "block"`): the mounts are mounted on the bundle's
//!   `rootfs`, copied into a sparse ext4 image with `mkfs.ext4 -d`, and
//!   unmounted again; the image is the container's own copy, attached
//!   read-write ([`build_image`]).
//!
//! Host bind mounts do not come here: they are shared live in a share of
//! their own (`hull_sandbox::share`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hull_sandbox::share::{Cache, Share, ShareError};

/// Free space on top of the content (the container writes to its disk).
pub const HEADROOM_BYTES: u64 = 256 << 20;
/// The smallest image.
pub const MIN_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("mounting the rootfs ({fs_type} from {source_path}) on {target}")]
    Mount {
        fs_type: String,
        source_path: String,
        target: PathBuf,
        #[source]
        source: Box<containerd_shim::Error>,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mkfs.ext4 -d {from} failed: {stderr}")]
    Mkfs { from: PathBuf, stderr: String },
    #[error("sharing the rootfs with the guest")]
    Share(#[from] ShareError),
}

/// One mount from containerd's CreateTaskRequest.rootfs.
#[derive(Debug, Clone)]
pub struct RootfsMount {
    pub fs_type: String,
    pub source: String,
    pub options: Vec<String>,
}

/// The disk the guest's rootfs is on: the image the shim built, or a
/// snapshot that already is a disk (see [`direct_disk`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsDisk {
    pub path: PathBuf,
    pub read_only: bool,
}

/// The rootfs snapshot as it is, when containerd's mounts are one ext4
/// mount of a block device (devmapper) or of a regular file with the `loop`
/// option (the blockfile snapshotter): the guest gets that disk, and
/// nothing is mounted or copied on the host.
pub fn direct_disk(mounts: &[RootfsMount]) -> Option<RootfsDisk> {
    use std::os::unix::fs::FileTypeExt;
    let [mount] = mounts else {
        return None;
    };
    if mount.fs_type != "ext4" {
        return None;
    }
    let kind = std::fs::metadata(&mount.source).ok()?.file_type();
    let has = |option: &str| mount.options.iter().any(|o| o == option);
    if !(kind.is_block_device() || kind.is_file() && has("loop")) {
        return None;
    }
    Some(RootfsDisk {
        path: PathBuf::from(&mount.source),
        read_only: has("ro"),
    })
}

/// Mounts `mounts` on `target` (in order), returns whether anything was mounted.
pub fn mount_all(mounts: &[RootfsMount], target: &Path) -> Result<bool, RootfsError> {
    for m in mounts {
        containerd_shim::mount::mount_rootfs(
            Some(m.fs_type.as_str()),
            Some(m.source.as_str()),
            &m.options,
            target,
        )
        .map_err(|source| RootfsError::Mount {
            fs_type: m.fs_type.clone(),
            source_path: m.source.clone(),
            target: target.into(),
            source: Box::new(source),
        })?;
    }
    Ok(!mounts.is_empty())
}

/// The rootfs of container `id` shared: `mounts` (containerd's snapshot)
/// or, when there are none, the directory `dir` (Docker's rootfs, mounted
/// by dockerd) bind-mounted, at `<id>` in a new share at `share_dir`,
/// sealed (private, nosuid, nodev) and served by `virtiofsd` with caching
/// on (only the guest changes it) and a pool of `threads`. Returns the
/// share and whether the rootfs is read-only (a view snapshot: the guest
/// then puts a tmpfs upper layer on it). Whatever fails leaves nothing mounted.
pub fn share(
    (virtiofsd, threads): (&Path, u16),
    share_dir: &Path,
    id: &str,
    mounts: &[RootfsMount],
    dir: &Path,
) -> Result<(Share, bool), RootfsError> {
    let mut share = Share::create(share_dir)?;
    let read_only = mount_into(&share, id, mounts, dir)?;
    share.serve(virtiofsd, Cache::Always, threads)?;
    Ok((share, read_only))
}

/// Container `id`'s rootfs (`mounts`, or the directory `dir` bound) at
/// `<id>` in `share`, sealed; returns whether it is read-only. A pod's
/// later containers come in this way, the share already served.
pub fn mount_into(
    share: &Share,
    id: &str,
    mounts: &[RootfsMount],
    dir: &Path,
) -> Result<bool, RootfsError> {
    let root = share.subdir(id)?;
    let bind_dir;
    let mounts = if mounts.is_empty() {
        bind_dir = [RootfsMount {
            fs_type: "bind".into(),
            source: dir.display().to_string(),
            options: vec!["rbind".into(), "rw".into()],
        }];
        &bind_dir[..]
    } else {
        mounts
    };
    mount_all(mounts, &root)?;
    let read_only = is_read_only(&root)?;
    share.seal(id, read_only)?;
    Ok(read_only)
}

/// Whether the file system at `path` is mounted read-only.
fn is_read_only(path: &Path) -> Result<bool, RootfsError> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in a path");
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a NUL-terminated path and room for one statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(RootfsError::Io {
            what: "statvfs",
            path: path.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: statvfs succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Ok(st.f_flag & libc::ST_RDONLY != 0)
}

/// Unmounts everything at or below `target` (lazily, so a busy mount does
/// not keep it).
pub fn unmount(target: &Path) {
    if let Some(t) = target.to_str() {
        let _ = containerd_shim::mount::umount_recursive(Some(t), libc::MNT_DETACH);
    }
}

/// Bytes of regular files under `dir` (not following symlinks).
fn content_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                todo.push(entry.path());
            }
            // 4 KiB per entry at least: inodes, directory blocks.
            total += meta.len().max(4096);
        }
    }
    total
}

/// Builds `image` (sparse ext4) from the directory `from`; returns how long
/// it took.
pub fn build_image(from: &Path, image: &Path) -> Result<Duration, RootfsError> {
    let started = Instant::now();
    // Whole 4 KiB blocks: a disk's tail that is not a whole sector is not
    // exposed to the guest (the VMM warns about it).
    let size = (content_size(from) * 5 / 4 + HEADROOM_BYTES)
        .max(MIN_BYTES)
        .next_multiple_of(4096);
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| RootfsError::Io { what, path, source }
    };
    let file = std::fs::File::create(image).map_err(io("creating", image))?;
    file.set_len(size).map_err(io("sizing", image))?;
    drop(file);
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-O",
            "^has_journal",
            "-E",
            "lazy_itable_init=1,nodiscard",
            "-d",
        ])
        .arg(from)
        .arg(image)
        .output()
        .map_err(io("running mkfs.ext4 for", image))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(image);
        return Err(RootfsError::Mkfs {
            from: from.into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_holds_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hostname"), "hull\n").unwrap();
        let image = dir.path().join("rootfs.img");
        build_image(&root, &image).unwrap();
        let meta = std::fs::metadata(&image).unwrap();
        assert!(meta.len() >= MIN_BYTES);
        assert_eq!(meta.len() % 4096, 0, "whole blocks");
        let out = Command::new("debugfs")
            .args(["-R", "cat /etc/hostname"])
            .arg(&image)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hull\n");
    }

    #[test]
    fn only_a_single_ext4_disk_mount_is_taken_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("snapshot.img");
        std::fs::write(&file, b"").unwrap();
        let mount = |fs_type: &str, source: &Path, options: &[&str]| RootfsMount {
            fs_type: fs_type.into(),
            source: source.display().to_string(),
            options: options.iter().map(|o| o.to_string()).collect(),
        };
        assert_eq!(
            direct_disk(&[mount("ext4", &file, &["loop", "rw"])]),
            Some(RootfsDisk {
                path: file.clone(),
                read_only: false
            })
        );
        assert_eq!(
            direct_disk(&[mount("ext4", &file, &["ro", "loop"])]).map(|d| d.read_only),
            Some(true)
        );
        // A file without `loop`, another file system, an overlay, a
        // directory, a missing source, several mounts: copied as before.
        assert_eq!(direct_disk(&[mount("ext4", &file, &["rw"])]), None);
        assert_eq!(direct_disk(&[mount("xfs", &file, &["loop"])]), None);
        assert_eq!(
            direct_disk(&[mount("overlay", Path::new("overlay"), &[])]),
            None
        );
        assert_eq!(direct_disk(&[mount("ext4", dir.path(), &["loop"])]), None);
        assert_eq!(
            direct_disk(&[mount("ext4", &dir.path().join("gone"), &["loop"])]),
            None
        );
        let one = mount("ext4", &file, &["loop"]);
        assert_eq!(direct_disk(&[one.clone(), one]), None);
        assert_eq!(direct_disk(&[]), None);
    }

    /// Needs root (mounts): a read-only bind (a snapshot view) is seen as
    /// read-only, a read-write one is not.
    #[test]
    fn needs_root_a_read_only_snapshot_is_seen_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let (layer, target) = (dir.path().join("layer"), dir.path().join("root"));
        std::fs::create_dir_all(&layer).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        for (options, read_only) in [(&["ro", "rbind"][..], true), (&["rw", "rbind"][..], false)] {
            let view = RootfsMount {
                fs_type: "bind".into(),
                source: layer.display().to_string(),
                options: options.iter().map(|o| o.to_string()).collect(),
            };
            assert!(mount_all(&[view], &target).unwrap());
            let seen = is_read_only(&target);
            unmount(&target);
            assert_eq!(seen.unwrap(), read_only, "{options:?}");
        }
    }

    #[test]
    fn a_missing_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = build_image(&dir.path().join("nope"), &dir.path().join("x.img")).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(
            !dir.path().join("x.img").exists(),
            "a failed image is removed"
        );
    }
}
