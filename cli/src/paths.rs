//! Where hull finds its parts: the VMM binary, the guest kernel and the
//! initramfs. An explicit path wins, then an environment variable, then the
//! installed location (`./setup.sh` installs there).

use std::path::{Path, PathBuf};

/// Where `./setup.sh` installs the guest kernel and initramfs.
pub const DEFAULT_SHARE_DIR: &str = "/usr/local/share/hull";

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("no {what} at {path} (run ./setup.sh, set {env}, or pass {flag})")]
    Missing {
        what: &'static str,
        path: PathBuf,
        env: &'static str,
        flag: &'static str,
    },
}

fn share_dir() -> PathBuf {
    std::env::var_os("HULL_SHARE_DIR")
        .map_or_else(|| PathBuf::from(DEFAULT_SHARE_DIR), PathBuf::from)
}

fn resolve(
    explicit: Option<&Path>,
    env: &'static str,
    default: PathBuf,
    what: &'static str,
    flag: &'static str,
) -> Result<PathBuf, PathError> {
    let path = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(env).map(PathBuf::from))
        .unwrap_or(default);
    if path.is_file() {
        Ok(path)
    } else {
        Err(PathError::Missing {
            what,
            path,
            env,
            flag,
        })
    }
}

/// The guest kernel for a VM with `vcpus` vCPUs: with one vCPU the
/// uniprocessor build (`vmlinux-up`) when it is installed, since an SMP kernel
/// pays for locked atomics it does not need (a third of the boot time under
/// nested PVM), else the SMP build (`vmlinux`).
pub fn kernel(explicit: Option<&Path>, vcpus: u8) -> Result<PathBuf, PathError> {
    let up = share_dir().join("vmlinux-up");
    let default = if vcpus == 1 && up.is_file() {
        up
    } else {
        share_dir().join("vmlinux")
    };
    resolve(explicit, "HULL_KERNEL", default, "guest kernel", "--kernel")
}

pub fn initramfs(explicit: Option<&Path>) -> Result<PathBuf, PathError> {
    resolve(
        explicit,
        "HULL_INITRAMFS",
        share_dir().join("initramfs.cpio"),
        "guest initramfs",
        "--initramfs",
    )
}

/// `hull-vmm`: next to the running `hull` binary, else on PATH.
pub fn vmm(explicit: Option<&Path>) -> Result<PathBuf, PathError> {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("hull-vmm")))
        .filter(|p| p.is_file());
    let on_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("hull-vmm"))
                .find(|p| p.is_file())
        })
    };
    let default = sibling
        .or_else(on_path)
        .unwrap_or_else(|| PathBuf::from("hull-vmm"));
    resolve(explicit, "HULL_VMM", default, "hull-vmm binary", "--vmm")
}

/// A fresh state directory for one sandbox under `/run/hull` (or
/// `$HULL_RUN_DIR`); short, because Unix socket paths are limited to 107 bytes.
pub fn new_state_dir(kind: &str) -> PathBuf {
    let base =
        std::env::var_os("HULL_RUN_DIR").map_or_else(|| PathBuf::from("/run/hull"), PathBuf::from);
    let _ = std::fs::create_dir_all(&base);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    base.join(format!("{kind}-{}-{nanos:x}", std::process::id()))
}
