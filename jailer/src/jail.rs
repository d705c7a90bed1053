//! The jail's file system: a tmpfs root holding only `/dev/kvm` (and
//! `/dev/net/tun` when asked), the files and directories the VMM needs
//! bind-mounted at their host paths (disks that are block devices get a
//! device node of their own), then `pivot_root` into it and remount
//! it read-only. Runs in the child, in its new mount namespace, so nothing
//! here is visible on the host and nothing needs unmounting afterwards.

use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::Args;

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} contains a NUL byte")]
    Nul { path: PathBuf },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> JailError + 'a {
    move |source| JailError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What goes at one path of the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// A file or directory bind-mounted from the same host path.
    Bind { path: PathBuf, writable: bool },
    /// A symbolic link recreated as on the host (merged /usr: /lib -> usr/lib).
    Symlink { path: PathBuf, target: PathBuf },
    /// A device node owned by the jail's uid: `mode` is its type
    /// (`S_IFCHR`, `S_IFBLK`) and permissions.
    Device {
        path: PathBuf,
        rdev: u64,
        mode: libc::mode_t,
    },
}

/// Everything the jail will hold, decided before forking.
#[derive(Debug)]
pub struct Plan {
    root: PathBuf,
    entries: Vec<Entry>,
    uid: u32,
    gid: u32,
}

const LIBRARY_DIRS: [&str; 4] = ["/lib", "/lib64", "/usr/lib", "/usr/lib64"];

impl Plan {
    /// Reads the host side (device numbers, library layout, whether the
    /// binary is dynamic), creates the empty jail root and hands the run
    /// directory and writable files to the jail's uid.
    pub fn from_args(args: &Args, uid: u32, gid: u32) -> Result<Self, JailError> {
        let mut entries = Vec::new();
        // The one device node: the VMM's tap comes as an open file.
        let kvm = "/dev/kvm";
        let meta = std::fs::metadata(kvm).map_err(io_err("stat", Path::new(kvm)))?;
        if !meta.file_type().is_char_device() {
            return Err(JailError::Io {
                what: "not a character device:",
                path: kvm.into(),
                source: std::io::ErrorKind::InvalidInput.into(),
            });
        }
        entries.push(Entry::Device {
            path: kvm.into(),
            rdev: meta.rdev(),
            mode: libc::S_IFCHR | 0o600,
        });
        entries.push(Entry::Bind {
            path: args.exec_file.clone(),
            writable: false,
        });
        if is_dynamic(&args.exec_file)? {
            for dir in LIBRARY_DIRS.iter().map(Path::new) {
                match std::fs::read_link(dir) {
                    Ok(target) => entries.push(Entry::Symlink {
                        path: dir.into(),
                        target,
                    }),
                    Err(_) if dir.is_dir() => entries.push(Entry::Bind {
                        path: dir.into(),
                        writable: false,
                    }),
                    Err(_) => {}
                }
            }
        }
        // hull-vmm tells nested PVM from hardware KVM by this directory.
        let pvm = Path::new("/sys/module/kvm_pvm");
        if pvm.is_dir() {
            entries.push(Entry::Bind {
                path: pvm.into(),
                writable: false,
            });
        }
        for (path, writable) in args
            .read_only
            .iter()
            .map(|p| (p, false))
            .chain(args.read_write.iter().map(|p| (p, true)))
            .chain(args.sockets.iter().map(|p| (p, true)))
        {
            let meta = std::fs::metadata(path).map_err(io_err("stat", path))?;
            if meta.file_type().is_block_device() {
                // A disk that is a block device (a snapshotter's volume): a
                // node of its own in the jail, owned by the jail's uid. A
                // bind mount would not do (the jail's binds are nodev), and
                // the host's node keeps its owner.
                entries.push(Entry::Device {
                    path: path.clone(),
                    rdev: meta.rdev(),
                    mode: libc::S_IFBLK | if writable { 0o600 } else { 0o400 },
                });
                continue;
            }
            if writable {
                chown(path, uid, gid)?;
            }
            entries.push(Entry::Bind {
                path: path.clone(),
                writable,
            });
        }
        chown(&args.run_dir, uid, gid)?;
        entries.push(Entry::Bind {
            path: args.run_dir.clone(),
            writable: true,
        });

        let root = args.run_dir.join("jail");
        std::fs::create_dir(&root).map_err(io_err("creating the jail root", &root))?;
        Ok(Plan {
            root,
            entries,
            uid,
            gid,
        })
    }

    pub fn uid(&self) -> u32 {
        self.uid
    }

    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// Removes the (empty, on the host) jail root directory.
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }

    /// In the child, in its own mount namespace: build the jail and enter
    /// it. Afterwards `/` is the jail, read-only.
    pub fn enter(&self) -> Result<(), JailError> {
        let slash = Path::new("/");
        // Nothing mounted from here on may propagate back to the host.
        mount(None, slash, None, libc::MS_REC | libc::MS_PRIVATE, None)?;
        mount(
            Some(Path::new("tmpfs")),
            &self.root,
            Some("tmpfs"),
            libc::MS_NOSUID,
            Some("mode=0755,size=1m,nr_inodes=4096"),
        )?;
        for entry in &self.entries {
            self.add(entry)?;
        }
        pivot_into(&self.root)?;
        mount(
            None,
            slash,
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID,
            None,
        )?;
        Ok(())
    }

    fn inside(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    fn add(&self, entry: &Entry) -> Result<(), JailError> {
        match entry {
            Entry::Bind { path, writable } => {
                let target = self.inside(path);
                make_parent(&target)?;
                if path.is_dir() {
                    std::fs::create_dir_all(&target).map_err(io_err("mkdir", &target))?;
                } else {
                    std::fs::File::create(&target).map_err(io_err("creating", &target))?;
                }
                mount(Some(path), &target, None, libc::MS_BIND, None)?;
                let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV;
                if !writable {
                    flags |= libc::MS_RDONLY;
                }
                mount(None, &target, None, flags, None)
            }
            Entry::Symlink { path, target } => {
                let link = self.inside(path);
                make_parent(&link)?;
                std::os::unix::fs::symlink(target, &link).map_err(io_err("symlink", &link))
            }
            Entry::Device { path, rdev, mode } => {
                let node = self.inside(path);
                make_parent(&node)?;
                let c = cstring(&node)?;
                // SAFETY: a valid NUL-terminated path; mknod creates one node.
                let rc = unsafe { libc::mknod(c.as_ptr(), *mode, *rdev) };
                if rc != 0 {
                    return Err(io_err("mknod", &node)(std::io::Error::last_os_error()));
                }
                chown(&node, self.uid, self.gid)
            }
        }
    }
}

fn make_parent(path: &Path) -> Result<(), JailError> {
    match path.parent() {
        Some(parent) => std::fs::create_dir_all(parent).map_err(io_err("mkdir", parent)),
        None => Ok(()),
    }
}

fn cstring(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| JailError::Nul { path: path.into() })
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), JailError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io_err("chown", path))
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), JailError> {
    let err = |what| io_err(what, target);
    let to_c = |s: Option<&str>| s.map(|s| CString::new(s).expect("no NUL in mount arguments"));
    let source_c = source.map(cstring).transpose()?;
    let (fstype_c, data_c) = (to_c(fstype), to_c(data));
    let target_c = cstring(target)?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a valid NUL-terminated string that
    // outlives the call.
    let rc = unsafe {
        libc::mount(
            ptr(&source_c),
            target_c.as_ptr(),
            ptr(&fstype_c),
            flags,
            ptr(&data_c).cast(),
        )
    };
    if rc != 0 {
        return Err(err("mounting on")(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `pivot_root(".", ".")` in the new root, then detach the old root
/// stacked on top of it (the runc way: no directory for the old root).
fn pivot_into(root: &Path) -> Result<(), JailError> {
    std::env::set_current_dir(root).map_err(io_err("chdir", root))?;
    let dot = c".";
    // SAFETY: pivot_root with two valid NUL-terminated paths.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    if rc != 0 {
        return Err(io_err("pivot_root into", root)(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: unmounts the old root, now stacked on ".", lazily.
    let rc = unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        return Err(io_err("detaching the old root from", root)(
            std::io::Error::last_os_error(),
        ));
    }
    std::env::set_current_dir("/").map_err(io_err("chdir", Path::new("/")))
}

/// Whether `binary` is an ELF with a program interpreter (dynamically
/// linked): then it needs the system libraries in the jail.
pub fn is_dynamic(binary: &Path) -> Result<bool, JailError> {
    let mut file = std::fs::File::open(binary).map_err(io_err("opening", binary))?;
    let mut bytes = Vec::new();
    file.by_ref()
        .take(64 * 1024)
        .read_to_end(&mut bytes)
        .map_err(io_err("reading", binary))?;
    Ok(has_interpreter(&bytes))
}

/// PT_INTERP among the program headers of a little-endian ELF64 image.
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return false;
    }
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        elf.get(at..at + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().expect("4 bytes")) == PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_and_static_binaries_are_told_apart() {
        // /bin/sh on Debian is dynamic; busybox-static (a test dependency
        // of the suite, see scripts/common.sh) is static.
        assert!(is_dynamic(Path::new("/bin/sh")).unwrap());
        assert!(!is_dynamic(Path::new("/bin/busybox")).unwrap());
        assert!(!has_interpreter(b"#!/bin/sh\n"));
    }
}
