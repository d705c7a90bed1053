//! The sandbox's host cgroup: `<parent>/<id>` in the memory, pids and cpu
//! controllers, sized from the jailer's arguments. cgroup v1 (one hierarchy
//! per controller, as on this project's development machine) or v2 (the
//! unified hierarchy with the controllers enabled for the subtree).
//!
//! The jailer owns this layout: the runtime that starts it finds and
//! removes a killed sandbox's cgroups through [`SandboxCgroup::existing`]
//! and [`SandboxCgroup::kill_and_remove`], never by naming the paths itself.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The v1 controllers a sandbox's cgroup is made in.
const V1_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
/// The parent of every sandbox cgroup unless `--cgroup-parent` says otherwise.
pub const DEFAULT_PARENT: &str = "hull";

/// The limits a sandbox's host cgroup gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// memory limit (guest RAM plus VMM overhead).
    pub memory_bytes: Option<u64>,
    pub pids_max: Option<u64>,
    /// CPU bandwidth: (quota, period) in microseconds.
    pub cpu: Option<(u64, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("creating cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no cgroup hierarchy for {controller} under {CGROUP_ROOT}")]
    NoController { controller: &'static str },
    #[error("--cgroup-parent {0:?}: use a relative path without '..'")]
    BadParent(String),
}

/// The cgroup directories of one sandbox (one per v1 controller, or one).
#[derive(Debug)]
pub struct SandboxCgroup {
    dirs: Vec<PathBuf>,
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.into(),
        value: value.into(),
        source,
    })
}

/// `parent` must be relative and plain (no `..`, no `/` at the start).
fn check_parent(parent: &str) -> Result<&Path, CgroupError> {
    let path = Path::new(parent);
    if path.is_absolute()
        || path
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(CgroupError::BadParent(parent.to_owned()));
    }
    Ok(path)
}

fn unified() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

impl SandboxCgroup {
    /// Makes and sizes the cgroup `<parent>/<id>`.
    pub fn create(parent: &str, id: &str, limits: &Limits) -> Result<Self, CgroupError> {
        let parent = check_parent(parent)?;
        let relative = parent.join(id);
        let mut cgroup = SandboxCgroup { dirs: Vec::new() };
        // On error, what was made so far is removed by Drop-less cleanup.
        let result = if unified() {
            cgroup.create_v2(parent, &relative, limits)
        } else {
            cgroup.create_v1(&relative, limits)
        };
        if let Err(err) = result {
            cgroup.remove();
            return Err(err);
        }
        Ok(cgroup)
    }

    fn mkdir(&mut self, dir: PathBuf) -> Result<PathBuf, CgroupError> {
        std::fs::create_dir_all(&dir).map_err(|source| CgroupError::Create {
            path: dir.clone(),
            source,
        })?;
        self.dirs.push(dir.clone());
        Ok(dir)
    }

    /// The cgroup directories the sandbox `id` has or had under `parent`
    /// (whether they still exist or not): for cleaning up after a
    /// supervisor that was killed before it could remove them.
    pub fn existing(parent: &str, id: &str) -> Result<Self, CgroupError> {
        let relative = check_parent(parent)?.join(id);
        let root = Path::new(CGROUP_ROOT);
        let dirs = if unified() {
            vec![root.join(&relative)]
        } else {
            V1_CONTROLLERS
                .iter()
                .map(|controller| root.join(controller).join(&relative))
                .collect()
        };
        Ok(SandboxCgroup { dirs })
    }

    fn create_v1(&mut self, relative: &Path, limits: &Limits) -> Result<(), CgroupError> {
        for controller in V1_CONTROLLERS {
            let root = Path::new(CGROUP_ROOT).join(controller);
            if !root.is_dir() {
                return Err(CgroupError::NoController { controller });
            }
            let dir = self.mkdir(root.join(relative))?;
            match controller {
                "memory" => {
                    if let Some(bytes) = limits.memory_bytes {
                        write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                    }
                }
                "pids" => {
                    if let Some(max) = limits.pids_max {
                        write(&dir.join("pids.max"), &max.to_string())?;
                    }
                }
                _ => {
                    if let Some((quota, period)) = limits.cpu {
                        write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
                        write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                    }
                }
            }
        }
        Ok(())
    }

    fn create_v2(
        &mut self,
        parent: &Path,
        relative: &Path,
        limits: &Limits,
    ) -> Result<(), CgroupError> {
        let root = Path::new(CGROUP_ROOT);
        let parent_dir = root.join(parent);
        std::fs::create_dir_all(&parent_dir).map_err(|source| CgroupError::Create {
            path: parent_dir.clone(),
            source,
        })?;
        // Each level down to the sandbox delegates the controllers.
        let mut level = root.to_path_buf();
        for part in std::iter::once(None).chain(parent.components().map(Some)) {
            if let Some(part) = part {
                level.push(part);
            }
            write(&level.join("cgroup.subtree_control"), "+memory +pids +cpu")?;
        }
        let dir = self.mkdir(root.join(relative))?;
        if let Some(bytes) = limits.memory_bytes {
            write(&dir.join("memory.max"), &bytes.to_string())?;
        }
        if let Some(max) = limits.pids_max {
            write(&dir.join("pids.max"), &max.to_string())?;
        }
        if let Some((quota, period)) = limits.cpu {
            write(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
        }
        Ok(())
    }

    /// Moves the calling process into every sandbox cgroup.
    pub fn join_self(&self) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            write(&dir.join("cgroup.procs"), "0")?;
        }
        Ok(())
    }

    /// Removes the sandbox's cgroups once nothing runs in them (a process
    /// that just exited may take a moment to leave).
    pub fn remove(&self) {
        for dir in self.dirs.iter().rev() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The pids in any of the sandbox's cgroups.
    pub fn members(&self) -> Vec<i32> {
        self.dirs
            .iter()
            .filter_map(|dir| std::fs::read_to_string(dir.join("cgroup.procs")).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|pid| pid.trim().parse().ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// SIGKILLs whatever still runs in the sandbox's cgroups, waits up to
    /// `limit` until they are empty (a killed VMM stays in its cgroup until
    /// it has released its guest memory, well after its command line is
    /// gone from /proc), then removes them. Returns the pids still there
    /// when the limit ran out (the cgroups then stay).
    pub fn kill_and_remove(&self, limit: Duration) -> Vec<i32> {
        let deadline = Instant::now() + limit;
        loop {
            let left = self.members();
            if left.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return left;
            }
            for pid in left {
                // SAFETY: kill(2) on a pid listed in this sandbox's own
                // cgroup, which holds only its jailed VMM; at worst it is
                // gone already (ESRCH).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_parent_then_id_and_parents_stay_inside() {
        let cgroup = SandboxCgroup::existing("hull", "abc").unwrap();
        assert!(!cgroup.dirs.is_empty());
        for dir in &cgroup.dirs {
            assert!(dir.starts_with(CGROUP_ROOT), "{}", dir.display());
            assert!(dir.ends_with("hull/abc"), "{}", dir.display());
        }
        for bad in ["/abs", "../up", "a/../b", ""] {
            if bad.is_empty() {
                continue;
            }
            let err = SandboxCgroup::existing(bad, "abc").unwrap_err();
            assert!(err.to_string().contains("--cgroup-parent"), "{err}");
        }
        // Nothing made, nothing to kill: removing is a no-op.
        assert!(SandboxCgroup::existing("hull-test-none", "x")
            .unwrap()
            .kill_and_remove(Duration::from_millis(10))
            .is_empty());
    }
}
