//! The containers' cgroups in the guest: statistics, the processes in one,
//! resource updates, and OOM kills.
//!
//! The guest runs cgroup v2 only (mounted by `init` at /sys/fs/cgroup), not
//! v1 as containerd's host does. Why: v2 is one mount and one tree (v1
//! would be a mount per controller, each costing syscalls at boot, which is
//! emulated here); its freezer (`cgroup.freeze`) lets SIGKILL through, so a
//! paused container can still be removed; `cgroup.kill` ends a container in
//! one write; and `memory.events` counts OOM kills and can be watched with
//! inotify instead of v1's eventfd/`cgroup.event_control` dance. What v2
//! lacks here: device rules need BPF (off in the guest kernel) — the
//! container's /dev is a tmpfs holding only the standard nodes, and the
//! guest has no other devices worth guarding. containerd's v1 metrics
//! shape is filled by the shim from [`StatsContainerResponse`], whose
//! fields mean the same in both versions.
//!
//! Statistics are read from the cgroup files directly rather than through
//! libcgroups, whose v2 statistics fail on files this kernel does not have
//! (swap, PSI).

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::{Arc, Mutex};

use hull_protocol::agent_api::agent::StatsContainerResponse;
use libcgroups::common::{AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt};
use oci_spec::runtime::LinuxResources;
use rustix::fs::inotify;
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;

use super::spec::cgroup_path;

/// Where init mounts cgroup2.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How many OOM events wait for the host at most; older ones are dropped.
const MAX_PENDING_OOM: usize = 256;

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the cgroup of container {id}")]
    Manager {
        id: String,
        #[source]
        source: libcgroups::common::CreateCgroupSetupError,
    },
    #[error("cannot apply the resources to container {id}")]
    Apply {
        id: String,
        #[source]
        source: libcgroups::common::AnyManagerError,
    },
    #[error("cannot watch {path} for OOM kills")]
    Watch {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The cgroup directory of container `id`.
pub fn dir(id: &str) -> PathBuf {
    Path::new(CGROUP_ROOT).join(cgroup_path(id).strip_prefix("/").unwrap_or(Path::new(id)))
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A file that may not exist on this kernel: empty then.
fn read_optional(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `key value` lines (cpu.stat, memory.stat, memory.events).
fn keyed(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key, value.trim().parse().ok()?))
        })
        .collect()
}

/// A single value; "max" (no limit) is 0, as in containerd's metrics.
fn single(text: &str) -> u64 {
    text.trim().parse().unwrap_or(0)
}

/// The pids of every process in the cgroup.
pub fn pids(id: &str) -> Result<Vec<u32>, CgroupError> {
    let text = read(&dir(id).join("cgroup.procs"))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// The container's statistics.
pub fn stats(id: &str) -> Result<StatsContainerResponse, CgroupError> {
    let dir = dir(id);
    // cpu.stat is always there (the core has it); the rest per controller.
    let cpu_text = read(&dir.join("cpu.stat"))?;
    let cpu = keyed(&cpu_text);
    let memory_text = read_optional(&dir.join("memory.stat"));
    let memory = keyed(&memory_text);
    let events_text = read_optional(&dir.join("memory.events"));
    let events = keyed(&events_text);
    let (mut io_read, mut io_write) = (0, 0);
    for line in read_optional(&dir.join("io.stat")).lines() {
        for field in line.split_whitespace().skip(1) {
            match field.split_once('=') {
                Some(("rbytes", v)) => io_read += single(v),
                Some(("wbytes", v)) => io_write += single(v),
                _ => {}
            }
        }
    }
    let usec = |key| cpu.get(key).copied().unwrap_or(0) * 1000;
    Ok(StatsContainerResponse {
        cpu_usage_total_nanos: usec("usage_usec"),
        cpu_usage_user_nanos: usec("user_usec"),
        cpu_usage_kernel_nanos: usec("system_usec"),
        memory_usage_bytes: single(&read_optional(&dir.join("memory.current"))),
        memory_max_usage_bytes: single(&read_optional(&dir.join("memory.peak"))),
        memory_limit_bytes: single(&read_optional(&dir.join("memory.max"))),
        memory_cache_bytes: memory.get("file").copied().unwrap_or(0),
        memory_rss_bytes: memory.get("anon").copied().unwrap_or(0),
        pids_current: single(&read_optional(&dir.join("pids.current"))),
        pids_limit: single(&read_optional(&dir.join("pids.max"))),
        io_read_bytes: io_read,
        io_write_bytes: io_write,
        oom_kills: events.get("oom_kill").copied().unwrap_or(0),
        ..Default::default()
    })
}

fn manager(id: &str) -> Result<AnyCgroupManager, CgroupError> {
    libcgroups::common::create_cgroup_manager(CgroupConfig {
        cgroup_path: cgroup_path(id),
        systemd_cgroup: false,
        container_name: id.to_owned(),
    })
    .map_err(|source| CgroupError::Manager {
        id: id.to_owned(),
        source,
    })
}

/// Applies new resources (OCI `linux.resources`) to the container's cgroup.
pub fn update(id: &str, resources: &LinuxResources) -> Result<(), CgroupError> {
    let options = ControllerOpt {
        resources,
        disable_oom_killer: false,
        oom_score_adj: None,
        freezer_state: None,
    };
    manager(id)?
        .apply(&options)
        .map_err(|source| CgroupError::Apply {
            id: id.to_owned(),
            source,
        })
}

/// SIGKILLs every process in the cgroup at once (`cgroup.kill`).
pub fn kill_all(id: &str) -> io::Result<()> {
    std::fs::write(dir(id).join("cgroup.kill"), "1")
}

/// Removes the container's cgroup directory if it is still there.
pub fn remove(id: &str) -> io::Result<()> {
    match std::fs::remove_dir(dir(id)) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

#[derive(Debug, Default)]
struct OomState {
    /// Watch descriptor -> (container id, OOM kills counted so far).
    watches: HashMap<i32, (String, u64)>,
    pending: std::collections::VecDeque<String>,
}

/// Watches every container's `memory.events` and queues an event per OOM
/// kill, for `GetOOMEvent`.
#[derive(Debug, Clone)]
pub struct OomWatcher {
    inotify: Arc<AsyncFd<OwnedFd>>,
    state: Arc<Mutex<OomState>>,
    queued: Arc<Notify>,
}

impl OomWatcher {
    /// Starts the watching task on the current runtime.
    pub fn start() -> io::Result<Self> {
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        let watcher = OomWatcher {
            inotify: Arc::new(super::stdio::async_fd(fd)?),
            state: Arc::default(),
            queued: Arc::default(),
        };
        tokio::spawn(watcher.clone().run());
        Ok(watcher)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OomState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts counting OOM kills in container `id`'s cgroup.
    pub fn watch(&self, id: &str) -> Result<(), CgroupError> {
        let path = dir(id).join("memory.events");
        let wd = inotify::add_watch(self.inotify.get_ref(), &path, inotify::WatchFlags::MODIFY)
            .map_err(|errno| CgroupError::Watch {
                path: path.clone(),
                source: errno.into(),
            })?;
        let kills = keyed(&read_optional(&path)).get("oom_kill").copied();
        self.lock()
            .watches
            .insert(wd, (id.to_owned(), kills.unwrap_or(0)));
        Ok(())
    }

    /// Stops watching container `id` (its cgroup is going away).
    pub fn unwatch(&self, id: &str) {
        let mut state = self.lock();
        let wds: Vec<i32> = state
            .watches
            .iter()
            .filter(|(_, (watched, _))| watched == id)
            .map(|(wd, _)| *wd)
            .collect();
        for wd in wds {
            state.watches.remove(&wd);
            // Fails when the cgroup is already gone, which removed the watch.
            let _ = inotify::remove_watch(self.inotify.get_ref(), wd);
        }
    }

    /// The id of the container with the next OOM kill, waiting for one.
    pub async fn next(&self) -> String {
        loop {
            let mut queued = pin!(self.queued.notified());
            queued.as_mut().enable();
            if let Some(id) = self.lock().pending.pop_front() {
                return id;
            }
            queued.await;
        }
    }

    async fn run(self) {
        let mut buf = [MaybeUninit::<u8>::uninit(); 1024];
        loop {
            let mut modified = Vec::new();
            let result = self
                .inotify
                .async_io(Interest::READABLE, |fd| {
                    let mut reader = inotify::Reader::new(fd, &mut buf);
                    loop {
                        match reader.next() {
                            Ok(event) => modified.push(event.wd()),
                            Err(rustix::io::Errno::AGAIN) if !modified.is_empty() => return Ok(()),
                            Err(errno) => return Err(io::Error::from(errno)),
                        }
                    }
                })
                .await;
            if let Err(err) = result {
                log::warn!("OOM watch: reading inotify events: {err}");
                continue;
            }
            modified.sort_unstable();
            modified.dedup();
            for wd in modified {
                self.check(wd);
            }
        }
    }

    /// Re-reads the counter behind `wd` and queues one event per new kill.
    fn check(&self, wd: i32) {
        let mut state = self.lock();
        let Some((id, counted)) = state.watches.get(&wd).cloned() else {
            return;
        };
        let path = dir(&id).join("memory.events");
        let kills = keyed(&read_optional(&path))
            .get("oom_kill")
            .copied()
            .unwrap_or(counted);
        if kills <= counted {
            return;
        }
        state.watches.insert(wd, (id.clone(), kills));
        for _ in counted..kills {
            if state.pending.len() == MAX_PENDING_OOM {
                state.pending.pop_front();
            }
            state.pending.push_back(id.clone());
        }
        drop(state);
        log::warn!("container {id}: {} OOM kill(s)", kills - counted);
        self.queued.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_and_single_values() {
        let cpu = keyed("usage_usec 7730\nuser_usec 5000\nsystem_usec 2730\n");
        assert_eq!(cpu["usage_usec"], 7730);
        assert_eq!(cpu.len(), 3);
        assert_eq!(single("max\n"), 0);
        assert_eq!(single("1048576\n"), 1 << 20);
    }

    #[test]
    fn a_container_cgroup_lives_under_hull() {
        assert_eq!(dir("c1"), Path::new("/sys/fs/cgroup/hull/c1"));
    }
}
