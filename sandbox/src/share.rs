//! A sandbox's shared directories, served to the guest live by virtiofsd
//! over vhost-user (the VMM's virtio-fs devices), instead of copied: the
//! host files and directories its container bind-mounts, and the
//! container's rootfs (a share of its own, cached as only the guest
//! changes it).
//!
//! Layout under [`SHARE_BASE`]`/<jail id>/` (binds) and
//! `<jail id>.rootfs/` (never inside the state directory, which is removed
//! recursively: these hold the user's data, mounted):
//! ```text
//! root                 what virtiofsd shares: bound on itself and shared
//!                      (propagation), so that what is mounted under it
//!                      after virtiofsd started reaches virtiofsd's mount
//!                      namespace (a pod's later containers)
//! root/<c>/0, /1, ...  bind i of container c, bind-mounted from the host
//!                      (read-only, nosuid, nodev and private, recursively,
//!                      as asked)
//! root/<c>             (rootfs share) container c's rootfs mounted on it
//!                      (containerd's snapshot, Docker's rootfs), sealed
//!                      private, nosuid and nodev
//! virtiofsd.sock       its vhost-user socket (the VMM connects once)
//! virtiofsd.sock.pid   virtiofsd's own pid file
//! virtiofsd.pid        for the cleanup after a crashed shim
//! virtiofsd.log        its stderr
//! ```
//! virtiofsd runs as root (it serves every guest uid's files) in its own
//! namespace sandbox (`--sandbox namespace`: mount, PID and network
//! namespaces, pivot_root into `root`) with its seccomp filter killing on
//! anything unexpected, without file handles (`open_by_handle_at` is
//! never used) and without CAP_MKNOD (a guest cannot make a device node
//! on the host). It ends when the VMM's connection closes; [`Share`]'s drop
//! (and [`remove_leftovers`] after a crash) kill it anyway, unmount the
//! binds and remove the directory, only ever removing empty entries.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where shares live.
pub const SHARE_BASE: &str = "/run/hull/shares";
const ROOT: &str = "root";
const SOCKET: &str = "virtiofsd.sock";
/// The pid file virtiofsd keeps (and locks) beside its socket.
const OWN_PIDFILE: &str = "virtiofsd.sock.pid";
const PIDFILE: &str = "virtiofsd.pid";
const LOG: &str = "virtiofsd.log";
/// How long virtiofsd gets to listen on its socket.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("bind mount source {path}")]
    Source {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "bind mount source {path}: only directories and regular files can be shared with the \
         guest (this is a {kind})"
    )]
    NotShareable { path: PathBuf, kind: &'static str },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting virtiofsd ({binary})")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("virtiofsd did not listen on {socket} within {LISTEN_TIMEOUT:?}: {log}")]
    NotListening { socket: PathBuf, log: String },
    #[error("{name:?} cannot name a directory of a share (one path component)")]
    BadName { name: String },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ShareError {
    let path = path.to_path_buf();
    move |source| ShareError::Io { what, path, source }
}

/// One host bind mount of the container: shared as `root/<index>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBind {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub read_only: bool,
}

/// The share directory of the host bind mounts of the sandbox whose state
/// directory is `state_dir`.
pub fn share_dir_for(state_dir: &Path) -> PathBuf {
    Path::new(SHARE_BASE).join(crate::state::jail_id(state_dir))
}

/// The share directory of that sandbox's rootfs (a share of its own: it is
/// served with another cache policy).
pub fn rootfs_share_dir_for(state_dir: &Path) -> PathBuf {
    Path::new(SHARE_BASE).join(format!("{}.rootfs", crate::state::jail_id(state_dir)))
}

/// How virtiofsd lets the guest cache what it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// Attributes and entries for a second, data while a file is open: the
    /// host's own writes show within a second (volumes).
    Auto,
    /// Everything kept: only the guest changes the files (a container's
    /// rootfs); an exec costs what it does from ext4 instead of ×3.2.
    Always,
}

impl Cache {
    fn arg(self) -> &'static str {
        match self {
            Cache::Auto => "auto",
            Cache::Always => "always",
        }
    }
}

/// A share: what it serves mounted under its root, then virtiofsd
/// listening. Dropped, it is taken down (virtiofsd killed, unmounted,
/// its empty directories removed).
pub struct Share {
    dir: PathBuf,
    daemon: Option<Child>,
}

impl Share {
    /// Mounts `binds` under `dir/root` and starts `virtiofsd` on it.
    /// Whatever fails leaves nothing behind.
    pub fn start(virtiofsd: &Path, dir: &Path, binds: &[HostBind]) -> Result<Self, ShareError> {
        let mut share = Share::create(dir)?;
        share.add_binds("", binds)?;
        share.serve(virtiofsd, Cache::Auto, 0)?;
        Ok(share)
    }

    /// An empty share at `dir` (whatever an earlier one left there is
    /// removed first); its root is an empty directory, a shared mount, to
    /// mount on.
    pub fn create(dir: &Path) -> Result<Self, ShareError> {
        remove_leftovers(dir);
        let share = Share {
            dir: dir.to_path_buf(),
            daemon: None,
        };
        let root = share.root();
        std::fs::create_dir_all(&root).map_err(io("creating", &root))?;
        make_shared_mount(&root)?;
        Ok(share)
    }

    /// The directory of `name` (a container) in the share, made; the
    /// share's root for "".
    pub fn subdir(&self, name: &str) -> Result<PathBuf, ShareError> {
        let path = self.root().join(name);
        if name.is_empty() {
            return Ok(path);
        }
        let one_component = matches!(
            Path::new(name).components().collect::<Vec<_>>().as_slice(),
            [std::path::Component::Normal(n)] if n.len() == name.len()
        );
        if !one_component {
            return Err(ShareError::BadName { name: name.into() });
        }
        match std::fs::create_dir(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                Err(io("creating", &path)(e))
            }
            _ => Ok(path),
        }
    }

    /// Mounts each of `binds` at `<subdir>/<index>` (see [`mount_bind`]).
    pub fn add_binds(&mut self, subdir: &str, binds: &[HostBind]) -> Result<(), ShareError> {
        let dir = self.subdir(subdir)?;
        for (index, bind) in binds.iter().enumerate() {
            mount_bind(bind, &dir.join(index.to_string()))?;
        }
        Ok(())
    }

    /// After something was mounted on `subdir` itself (a container's
    /// rootfs): makes that mount tree private, nosuid and nodev (what the
    /// guest writes is never a set-uid program or a device on the host),
    /// read-only when `read_only`.
    pub fn seal(&self, subdir: &str, read_only: bool) -> Result<(), ShareError> {
        set_mount_attrs(&self.subdir(subdir)?, read_only)
    }

    /// Takes `subdir` (a container that left the pod) out of the share:
    /// unmounts what is under it and removes its empty entries, never
    /// the user's files.
    pub fn remove_subdir(&self, subdir: &str) -> Result<(), ShareError> {
        let dir = self.subdir(subdir)?;
        unmount_and_remove_empty(&dir);
        Ok(())
    }

    /// Starts virtiofsd on the root with `cache` and a pool of `threads`
    /// (0: requests handled on the queue's own thread), and waits until
    /// it listens.
    pub fn serve(
        &mut self,
        virtiofsd: &Path,
        cache: Cache,
        threads: u16,
    ) -> Result<(), ShareError> {
        self.daemon = Some(spawn_virtiofsd(virtiofsd, &self.dir, cache, threads)?);
        let socket = self.socket();
        let started = Instant::now();
        while !socket.exists() {
            let exited = self
                .daemon
                .as_mut()
                .and_then(|d| d.try_wait().ok().flatten());
            if exited.is_some() || started.elapsed() > LISTEN_TIMEOUT {
                return Err(ShareError::NotListening {
                    socket,
                    log: std::fs::read_to_string(self.dir.join(LOG)).unwrap_or_default(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// The directory virtiofsd shares (the binds are its entries, or a
    /// rootfs is mounted on it).
    pub fn root(&self) -> PathBuf {
        self.dir.join(ROOT)
    }

    /// virtiofsd's vhost-user socket, for the VMM.
    pub fn socket(&self) -> PathBuf {
        self.dir.join(SOCKET)
    }

    /// Whether virtiofsd still runs.
    pub fn is_running(&mut self) -> bool {
        self.daemon
            .as_mut()
            .is_some_and(|d| matches!(d.try_wait(), Ok(None)))
    }

    /// virtiofsd's pid.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        remove_leftovers(&self.dir);
    }
}

/// `struct open_how` of openat2(2) (libc's cannot be built outside libc).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Bind-mounts `bind.source` (its real path, the one the policy checked)
/// on `target`, a new empty directory or file, then makes the mount tree
/// private, nosuid, nodev and (when asked) read-only. The real path is
/// opened without following any symlink and mounted through that open
/// file: a symlink swapped into it since the check is refused, not
/// followed.
fn mount_bind(bind: &HostBind, target: &Path) -> Result<(), ShareError> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let source_err = |source| ShareError::Source {
        path: bind.source.clone(),
        source,
    };
    let real = std::fs::canonicalize(&bind.source).map_err(source_err)?;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).expect("no NUL in a path");
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_NO_SYMLINKS,
    };
    let real_c = c(&real);
    // SAFETY: a NUL-terminated path and an open_how of the size passed;
    // the fd returned is owned right below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            real_c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(source_err(std::io::Error::last_os_error()));
    }
    // SAFETY: openat2 returned a new fd nothing else owns.
    let opened = File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    let meta = opened.metadata().map_err(source_err)?;
    if meta.is_dir() {
        std::fs::create_dir(target).map_err(io("creating", target))?;
    } else if meta.is_file() {
        File::create(target).map_err(io("creating", target))?;
    } else {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        let kind = if t.is_socket() {
            "socket"
        } else if t.is_fifo() {
            "fifo"
        } else {
            "device"
        };
        return Err(ShareError::NotShareable {
            path: bind.source.clone(),
            kind,
        });
    }
    let src = c(Path::new(&format!("/proc/self/fd/{}", opened.as_raw_fd())));
    let dst = c(target);
    // SAFETY: two NUL-terminated paths, no fstype or data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        let _ = std::fs::remove_dir(target).or_else(|_| std::fs::remove_file(target));
        return Err(io("bind-mounting it on", target)(err));
    }
    if let Err(err) = set_mount_attrs(target, bind.read_only) {
        unmount_detached(target);
        return Err(err);
    }
    Ok(())
}

/// Binds `dir` on itself and makes it a shared mount: a peer group of its
/// own, whose later submounts propagate to virtiofsd's namespace (virtiofsd
/// makes its copy a slave).
fn make_shared_mount(dir: &Path) -> Result<(), ShareError> {
    let c = CString::new(dir.as_os_str().as_bytes()).expect("no NUL in a path");
    // SAFETY: NUL-terminated paths, no fstype or data.
    let rc = unsafe {
        libc::mount(
            c.as_ptr(),
            c.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io("binding on itself", dir)(std::io::Error::last_os_error()));
    }
    // SAFETY: a NUL-terminated path; only the propagation changes.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c.as_ptr(),
            std::ptr::null(),
            libc::MS_SHARED,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        unmount_detached(dir);
        return Err(io("making a shared mount of", dir)(err));
    }
    Ok(())
}

/// Makes the mount tree at `target` private, nosuid, nodev and (when
/// `read_only`) read-only, recursively.
fn set_mount_attrs(target: &Path, read_only: bool) -> Result<(), ShareError> {
    let mut attr_set = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    if read_only {
        attr_set |= libc::MOUNT_ATTR_RDONLY;
    }
    let attr = libc::mount_attr {
        attr_set,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    let dst = CString::new(target.as_os_str().as_bytes()).expect("no NUL in a path");
    // SAFETY: a NUL-terminated path and a mount_attr of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            dst.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(io("setting ro/nosuid/nodev/private on", target)(err));
    }
    Ok(())
}

fn spawn_virtiofsd(
    virtiofsd: &Path,
    dir: &Path,
    cache: Cache,
    threads: u16,
) -> Result<Child, ShareError> {
    let log_path = dir.join(LOG);
    let log = File::create(&log_path).map_err(io("creating", &log_path))?;
    let child = Command::new(virtiofsd)
        .arg("--shared-dir")
        .arg(dir.join(ROOT))
        .arg("--socket-path")
        .arg(dir.join(SOCKET))
        .args(["--sandbox", "namespace", "--seccomp", "kill"])
        .args(["--cache", cache.arg(), "--inode-file-handles=never"])
        .arg(format!("--thread-pool-size={threads}"))
        // No device nodes: a guest root's mknod on a volume would make one
        // on the host.
        .arg("--modcaps=-mknod")
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|source| ShareError::Spawn {
            binary: virtiofsd.to_path_buf(),
            source,
        })?;
    let pidfile = dir.join(PIDFILE);
    if let Err(err) = std::fs::write(&pidfile, child.id().to_string()) {
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        return Err(io("writing", &pidfile)(err));
    }
    Ok(child)
}

/// Removes what a share left: virtiofsd (by its pidfile, if it is still
/// the virtiofsd of this share), the bind mounts, and the directory,
/// removing only empty entries (a bind that cannot be unmounted stays,
/// with a warning, and so does its directory).
pub fn remove_leftovers(dir: &Path) {
    if !dir.exists() {
        return;
    }
    kill_listed_virtiofsd(dir);
    unmount_and_remove_empty(&dir.join(ROOT));
    for name in [SOCKET, OWN_PIDFILE, PIDFILE, LOG] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir(dir);
}

/// Unmounts everything at and under `top` (deepest first), then removes
/// the empty directories and placeholder files left, bottom up. Whatever
/// is still mounted stays, with a warning, and so does everything above
/// it: never a recursive removal of what a mount might show.
fn unmount_and_remove_empty(top: &Path) {
    let mut mounted = mounts_under(top);
    mounted.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for target in &mounted {
        unmount_detached(target);
    }
    let still = mounts_under(top);
    if !still.is_empty() {
        log::warn!("{still:?} still mounted: left in place");
    }
    remove_empty(top, &still);
}

/// Removes `path` if it is an empty directory (after its empty
/// subdirectories) or an empty placeholder file, unless a mount in `still`
/// is at or under it.
fn remove_empty(path: &Path, still: &[PathBuf]) {
    if still.iter().any(|m| m.starts_with(path)) {
        return;
    }
    let Ok(meta) = path.symlink_metadata() else {
        return;
    };
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                remove_empty(&entry.path(), still);
            }
        }
        let _ = std::fs::remove_dir(path);
    } else if meta.is_file() && meta.len() == 0 {
        let _ = std::fs::remove_file(path);
    }
}

fn kill_listed_virtiofsd(dir: &Path) {
    let Some(pid) = std::fs::read_to_string(dir.join(PIDFILE))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    let socket = dir.join(SOCKET);
    let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| {
            cmdline
                .split(|&b| b == 0)
                .any(|arg| arg == socket.as_os_str().as_bytes())
        })
        .unwrap_or(false);
    if ours {
        // SAFETY: a signal to a pid whose command line names this share.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        for _ in 0..100 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn unmount_detached(target: &Path) {
    let path = CString::new(target.as_os_str().as_bytes()).expect("no NUL in a path");
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
        log::warn!(
            "unmounting {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        );
    }
}

/// Mount points at or under `dir`, from this process's mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .filter(|point| point.starts_with(dir))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("0");
            out.push(u8::from_str_radix(octal, 8).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests;
