//! The sandbox's host cgroup: `<parent>/<id>` in the memory, pids and cpu
//! controllers, sized from the jailer's arguments. cgroup v1 (one hierarchy
//! per controller, as on this project's development machine) or v2 (the
//! unified hierarchy with the controllers enabled for the subtree).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Args;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

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

impl SandboxCgroup {
    pub fn create(args: &Args) -> Result<Self, CgroupError> {
        let parent = Path::new(&args.cgroup_parent);
        if parent.is_absolute()
            || parent
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(CgroupError::BadParent(args.cgroup_parent.clone()));
        }
        let relative = parent.join(&args.id);
        let mut cgroup = SandboxCgroup { dirs: Vec::new() };
        // On error, what was made so far is removed by Drop-less cleanup.
        let result = if Path::new(CGROUP_ROOT).join("cgroup.controllers").exists() {
            cgroup.create_v2(parent, &relative, args)
        } else {
            cgroup.create_v1(&relative, args)
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

    fn create_v1(&mut self, relative: &Path, args: &Args) -> Result<(), CgroupError> {
        for controller in ["memory", "pids", "cpu"] {
            let root = Path::new(CGROUP_ROOT).join(controller);
            if !root.is_dir() {
                return Err(CgroupError::NoController { controller });
            }
            let dir = self.mkdir(root.join(relative))?;
            match controller {
                "memory" => {
                    if let Some(bytes) = args.memory_bytes {
                        write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                    }
                }
                "pids" => {
                    if let Some(max) = args.pids_max {
                        write(&dir.join("pids.max"), &max.to_string())?;
                    }
                }
                _ => {
                    if let (Some(quota), Some(period)) = (args.cpu_quota_us, args.cpu_period_us) {
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
        args: &Args,
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
        if let Some(bytes) = args.memory_bytes {
            write(&dir.join("memory.max"), &bytes.to_string())?;
        }
        if let Some(max) = args.pids_max {
            write(&dir.join("pids.max"), &max.to_string())?;
        }
        if let (Some(quota), Some(period)) = (args.cpu_quota_us, args.cpu_period_us) {
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
}
