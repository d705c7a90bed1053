//! Where a sandbox keeps its state on the host, and the cleanup of what a
//! crashed shim or VMM leaves there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hull_jailer::cgroup::{SandboxCgroup, DEFAULT_PARENT};

/// Where sandboxes keep their sockets: short, for the 107-byte socket path
/// limit (containerd's bundle paths with 64-character ids are too long).
pub const SANDBOX_STATE_BASE: &str = "/run/hull/sandboxes";

/// The sandbox state directory of container `id` in `namespace`.
pub fn state_dir_for(namespace: &str, id: &str) -> PathBuf {
    let digest = hull_protocol::digest::sha256_hex(format!("{namespace}/{id}").as_bytes());
    Path::new(SANDBOX_STATE_BASE).join(&digest[..16])
}

/// The jail id of a sandbox (its host cgroup `hull/<id>`, its default
/// uid): its state directory's name.
pub fn jail_id(state_dir: &Path) -> String {
    state_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Removes what a sandbox left on the host: `files`, its state directory,
/// its shared directory (virtiofsd, the bind mounts) and its host cgroups (the jailer's supervisor removes those when it
/// ends normally; not when it was killed). SIGKILLs whatever still runs in
/// the cgroups first and waits up to `limit` for them to empty.
pub async fn remove_leftovers(state_dir: &Path, files: &[PathBuf], limit: Duration) {
    for file in files {
        let _ = std::fs::remove_file(file);
    }
    let _ = std::fs::remove_dir_all(state_dir);
    let shares = [
        crate::share::share_dir_for(state_dir),
        crate::share::rootfs_share_dir_for(state_dir),
    ];
    let _ = tokio::task::spawn_blocking(move || {
        shares
            .iter()
            .for_each(|s| crate::share::remove_leftovers(s))
    })
    .await;
    let jail = jail_id(state_dir);
    if jail.is_empty() {
        return;
    }
    let Ok(cgroup) = SandboxCgroup::existing(DEFAULT_PARENT, &jail) else {
        return;
    };
    let left = tokio::task::spawn_blocking(move || cgroup.kill_and_remove(limit))
        .await
        .unwrap_or_default();
    if !left.is_empty() {
        log::warn!("sandbox {jail}: its host cgroups still hold {left:?} {limit:?} after SIGKILL");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dirs_are_short_and_distinct() {
        let a = state_dir_for("default", &"x".repeat(64));
        let b = state_dir_for("moby", &"x".repeat(64));
        assert_ne!(a, b);
        // Room for "/vsock.sock_1024" under the socket path limit.
        assert!(a.as_os_str().len() + 16 < 100, "{}", a.display());
        assert_eq!(jail_id(&a).len(), 16);
    }

    #[tokio::test]
    async fn leftovers_go_and_a_missing_sandbox_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("0123456789abcdef");
        std::fs::create_dir(&state).unwrap();
        std::fs::write(state.join("vmm.log"), "x").unwrap();
        let file = dir.path().join("rootfs.img");
        std::fs::write(&file, "x").unwrap();
        remove_leftovers(
            &state,
            std::slice::from_ref(&file),
            Duration::from_millis(10),
        )
        .await;
        assert!(!state.exists() && !file.exists());
        remove_leftovers(&state, &[file], Duration::from_millis(10)).await;
    }
}
