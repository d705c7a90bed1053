//! Containers in the guest: created from an OCI spec with youki's
//! libcontainer on a rootfs disk the VMM attached, their processes
//! supervised through the agent's reaper, their stdio buffered for the host.
//!
//! [`Containers`] is the registry the RPC handlers call. Every operation
//! checks the container's state first, against the one table in
//! [`state`], and fails with a [`ContainerError`] that `rpc.rs` maps to a
//! ttrpc code. A failed create leaves nothing behind: the rootfs mounts,
//! libcontainer's state, the cgroup and the container's directory are
//! undone in reverse order.
//!
//! In the guest: `/run/hull/containers/<id>/` holds the bundle
//! (`config.json`), the rootfs mounts ([`rootfs`]) and exec'd processes'
//! specs; libcontainer keeps its state in `/run/hull/youki/<id>/`; the
//! cgroup is `/sys/fs/cgroup/hull/<id>` ([`cgroups`]).

pub mod cgroups;
pub mod executor;
pub mod netns;
pub mod process;
pub mod rootfs;
pub mod runtime;
pub mod spec;
pub mod state;
pub mod stdio;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hull_protocol::agent_api::agent::{
    ProcessStatus, StatsContainerResponse, StdioOptions, Storage,
};
use thiserror::Error;

use crate::logger::error_chain;
use crate::reaper::{Exit, Reaper};
use cgroups::{CgroupError, OomWatcher};
use process::{Exited, Process};
use rootfs::{Rootfs, RootfsError};
use runtime::{ProcessIo, Runtime, RuntimeError};
use spec::SpecError;
use state::{Operation, State};
use stdio::{Stdio, StdioError};

/// Everything the agent makes for containers lives under here.
const RUN_DIR: &str = "/run/hull";
/// How long Remove waits for a killed container's init to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum ContainerError {
    #[error("container {id} does not exist")]
    NotFound { id: String },
    #[error("container {id} has no process {exec_id:?}")]
    ProcessNotFound { id: String, exec_id: String },
    #[error("container {id} already exists")]
    AlreadyExists { id: String },
    #[error("container {id} already has a process {exec_id:?}")]
    ProcessExists { id: String, exec_id: String },
    #[error("invalid spec")]
    InvalidSpec(#[from] SpecError),
    #[error("signal: {signal} is not a signal number (1 to 64)")]
    BadSignal { signal: u32 },
    #[error("container {id} is {state}, {}", .operation.refusal())]
    WrongState {
        id: String,
        state: State,
        operation: Operation,
    },
    #[error("process {exec_id:?} of container {id} has already exited")]
    ProcessExited { id: String, exec_id: String },
    #[error("the rootfs of container {id}")]
    Rootfs {
        id: String,
        #[source]
        source: RootfsError,
    },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("stdio of process {exec_id:?} of container {id}")]
    Stdio {
        id: String,
        exec_id: String,
        #[source]
        source: StdioError,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot signal pid {pid}")]
    Kill {
        pid: i32,
        #[source]
        source: io::Error,
    },
    #[error("container {id}: its init did not exit within {KILL_WAIT:?} of SIGKILL")]
    KillTimeout { id: String },
    #[error("OOM events are not available")]
    NoOomWatcher,
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ContainerError {
    let path = path.to_owned();
    move |source| ContainerError::Io {
        action,
        path,
        source,
    }
}

/// One container.
#[derive(Debug)]
struct Entry {
    lc: libcontainer::container::Container,
    /// Unmounted when dropped.
    rootfs: Option<Rootfs>,
    /// The network namespace made ahead, if this container got it: its
    /// path is in the container's saved spec (libcontainer checks it again
    /// on every exec), so it stays mounted until the container goes.
    _netns: Option<netns::SpareNetns>,
    dir: PathBuf,
    own_pid_namespace: bool,
    /// By exec id; "" is the init process.
    processes: HashMap<String, Arc<Process>>,
    /// Where the operations so far left it; [`Entry::state`] says stopped
    /// once the init has exited.
    state: State,
}

impl Entry {
    fn init(&self) -> &Arc<Process> {
        &self.processes[""]
    }

    fn state(&self) -> State {
        match self.init().exit() {
            Some(_) => State::Stopped,
            None => self.state,
        }
    }

    /// The state `operation` will leave the container in, or why it is
    /// refused in this one.
    fn check(&self, id: &str, operation: Operation) -> Result<State, ContainerError> {
        let state = self.state();
        operation
            .transition(state)
            .ok_or_else(|| ContainerError::WrongState {
                id: id.to_owned(),
                state,
                operation,
            })
    }
}

#[derive(Debug, Default)]
struct Registry {
    containers: HashMap<String, Entry>,
    /// pid -> (container id, exec id), for the exits the reaper publishes.
    pids: HashMap<i32, (String, String)>,
}

/// The containers of this guest.
#[derive(Debug, Clone)]
pub struct Containers {
    registry: Arc<Mutex<Registry>>,
    reaper: Reaper,
    oom: Option<OomWatcher>,
    /// A network namespace made ahead for the next container (`netns`).
    spare_netns: Arc<Mutex<Option<netns::SpareNetns>>>,
    root: PathBuf,
    tty_counter: Arc<AtomicU64>,
}

/// Undoes a create that failed half-way, in reverse order, unless
/// disarmed.
struct CreateCleanup<'a> {
    id: &'a str,
    dir: PathBuf,
    runtime: Option<&'a Runtime>,
    rootfs: Option<Rootfs>,
    /// The init process exists and must be killed.
    built: bool,
    armed: bool,
}

impl CreateCleanup<'_> {
    /// How often, 100 ms apart, the cgroup of a killed init is tried.
    const CGROUP_TRIES: u32 = 50;

    fn remove_cgroup(&self) {
        if self.built {
            let _ = cgroups::kill_all(self.id);
        }
        let mut tries = 0;
        while let Err(err) = cgroups::remove(self.id) {
            tries += 1;
            if tries == Self::CGROUP_TRIES || err.raw_os_error() != Some(libc::EBUSY) {
                log::warn!("container {}: cannot remove its cgroup: {err}", self.id);
                return;
            }
            // Rare (a create failing after its init was built), and the
            // dying processes leave the cgroup within a few guest ticks.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for CreateCleanup<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.remove_cgroup();
        if let Some(runtime) = self.runtime {
            runtime.forget(self.id);
        }
        if let Some(mut rootfs) = self.rootfs.take() {
            if let Err(err) = rootfs.unmount() {
                log::warn!("container {}: {}", self.id, error_chain(&err));
            }
        }
        if let Err(err) = std::fs::remove_dir_all(&self.dir) {
            if err.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove {}: {err}", self.dir.display());
            }
        }
    }
}

impl Containers {
    /// Subscribes to the reaper's exits (before any container forks) and
    /// starts the OOM watch. Touches no file until the first create.
    pub fn new(reaper: Reaper) -> Self {
        let oom = OomWatcher::start()
            .map_err(|err| log::warn!("no OOM events: cannot start the inotify watch: {err}"))
            .ok();
        let containers = Containers {
            registry: Arc::default(),
            reaper: reaper.clone(),
            oom,
            spare_netns: Arc::default(),
            root: PathBuf::from(RUN_DIR),
            tty_counter: Arc::default(),
        };
        let mut exits = reaper.subscribe();
        let registry = Arc::clone(&containers.registry);
        tokio::spawn(async move {
            while let Some(exit) = exits.recv().await {
                record_exit(&registry, exit);
            }
        });
        containers
    }

    /// Makes the network namespace the next container will get (PID 1
    /// only: it needs the guest's `/run` and all privileges), before it
    /// serves, so that a VM template holds it.
    pub fn prepare_spare_netns(&self) {
        let started = std::time::Instant::now();
        let path = self.root.join("netns-spare");
        let made = std::fs::create_dir_all(&self.root).and_then(|()| netns::make(&path));
        match made {
            Ok(spare) => {
                log::info!(
                    "a network namespace made ahead, in {} ms",
                    started.elapsed().as_millis()
                );
                *self.spare_netns.lock().unwrap_or_else(|p| p.into_inner()) = Some(spare);
            }
            Err(err) => log::warn!(
                "no network namespace made ahead ({err}); each container creates its own"
            ),
        }
    }

    /// The spare network namespace, if `spec` asks for a new one.
    fn take_spare_netns(&self, spec: &mut oci_spec::runtime::Spec) -> Option<netns::SpareNetns> {
        let mut slot = self.spare_netns.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref()?.offer(spec) {
            slot.take()
        } else {
            None
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn runtime(&self) -> Result<Runtime, ContainerError> {
        Ok(Runtime::new(self.root.join("youki"))?)
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>, ContainerError> {
        let registry = self.lock();
        let entry = registry
            .containers
            .get(id)
            .ok_or_else(|| ContainerError::NotFound { id: id.to_owned() })?;
        entry
            .processes
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ContainerError::ProcessNotFound {
                id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            })
    }

    fn stdio_error(id: &str, exec_id: &str) -> impl FnOnce(StdioError) -> ContainerError {
        let (id, exec_id) = (id.to_owned(), exec_id.to_owned());
        move |source| ContainerError::Stdio {
            id,
            exec_id,
            source,
        }
    }

    /// A short socket path for a console (Unix socket paths are short).
    fn console_path(&self) -> PathBuf {
        let n = self.tty_counter.fetch_add(1, Ordering::Relaxed);
        self.root.join(format!("tty-{n}.sock"))
    }

    /// Process IO as asked: pipes (the agent's ends returned) or a terminal.
    fn process_io(
        &self,
        terminal: bool,
        options: &StdioOptions,
        id: &str,
        exec_id: &str,
    ) -> Result<(Option<Stdio>, ProcessIo), ContainerError> {
        if terminal {
            Ok((None, ProcessIo::Terminal(self.console_path())))
        } else {
            let (stdio, child) = Stdio::pipes(options).map_err(Self::stdio_error(id, exec_id))?;
            Ok((Some(stdio), ProcessIo::Pipes(child)))
        }
    }

    /// The agent's side of a built process's stdio: the pipes made before,
    /// or the pty master the build returned.
    fn stdio(
        pipes: Option<Stdio>,
        master: Option<std::os::fd::OwnedFd>,
        options: &StdioOptions,
        id: &str,
        exec_id: &str,
    ) -> Result<Stdio, ContainerError> {
        match (pipes, master) {
            (Some(pipes), _) => Ok(pipes),
            (None, Some(master)) => {
                Stdio::terminal(master, options).map_err(Self::stdio_error(id, exec_id))
            }
            (None, None) => Err(Self::stdio_error(id, exec_id)(StdioError::NoTerminal)),
        }
    }

    /// Wakes the reaper when `pid` ends: libcontainer's processes raise no
    /// SIGCHLD (see `reaper::WALL`), so a pidfd tells instead. Without one
    /// the reaper's periodic sweep still finds the exit, a second later.
    fn watch_exit(&self, pid: i32) {
        let pidfd = rustix::process::Pid::from_raw(pid)
            .ok_or(rustix::io::Errno::SRCH)
            .and_then(|pid| rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()))
            .map_err(io::Error::from)
            .and_then(stdio::async_fd);
        match pidfd {
            Ok(pidfd) => {
                let reaper = self.reaper.clone();
                tokio::spawn(async move {
                    // Readable once the process has ended.
                    if let Ok(mut ready) = pidfd.readable().await {
                        ready.retain_ready();
                    }
                    reaper.sweep_soon();
                });
            }
            Err(err) => {
                log::warn!("pid {pid}: no pidfd ({err}); its exit is found by the periodic sweep")
            }
        }
    }

    /// Creates container `id`; its init waits for [`start`](Self::start).
    pub fn create(
        &self,
        id: &str,
        spec_json: &[u8],
        storage: &Storage,
        binds: Option<&Storage>,
        options: &StdioOptions,
    ) -> Result<i32, ContainerError> {
        let begun = std::time::Instant::now();
        spec::check_id("container_id", id)?;
        let mut checked = spec::parse_spec(spec_json)?;
        let rootfs_error = |source| ContainerError::Rootfs {
            id: id.to_owned(),
            source,
        };
        rootfs::check(storage, "rootfs").map_err(rootfs_error)?;
        if let Some(binds) = binds {
            rootfs::check_share(binds, "binds").map_err(rootfs_error)?;
        }
        if self.lock().containers.contains_key(id) {
            return Err(ContainerError::AlreadyExists { id: id.to_owned() });
        }
        let runtime = self.runtime()?;
        let dir = self.root.join("containers").join(id);
        std::fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        let mut cleanup = CreateCleanup {
            id,
            dir: dir.clone(),
            runtime: None,
            rootfs: None,
            built: false,
            armed: true,
        };

        let rootfs = rootfs::mount(storage, &dir).map_err(rootfs_error)?;
        let mounted = begun.elapsed();
        let binds_dir = binds.map(rootfs::mount_binds).transpose();
        let root = rootfs.path().to_owned();
        cleanup.rootfs = Some(rootfs);
        let binds_dir = binds_dir.map_err(rootfs_error)?;
        spec::adapt_for_guest(&mut checked, id, &root, binds_dir.as_deref())?;
        // Kept by the container (its path is in the spec libcontainer
        // saves); dropped (unmounted) if the creation fails.
        let spare_netns = self.take_spare_netns(&mut checked.spec);
        let config = dir.join("config.json");
        let json = serde_json::to_vec(&checked.spec)
            .map_err(|err| io_error("write", &config)(err.into()))?;
        std::fs::write(&config, json).map_err(io_error("write", &config))?;

        let (pipes, io) = self.process_io(checked.terminal, options, id, "")?;
        cleanup.runtime = Some(&runtime);
        let hold = self.reaper.hold();
        let building = std::time::Instant::now();
        let built = runtime.create(&hold, id, &dir, io)?;
        let build = building.elapsed();
        cleanup.built = true;
        let stdio = Self::stdio(pipes, built.pty_master, options, id, "")?;
        let init = Arc::new(Process::new(built.pid, checked.terminal, stdio));
        if let Some(oom) = &self.oom {
            if let Err(err) = oom.watch(id) {
                log::warn!("container {id}: {}", error_chain(&err));
            }
        }
        let rootfs = cleanup.rootfs.take();
        cleanup.armed = false;
        self.watch_exit(built.pid);
        let mut registry = self.lock();
        registry
            .pids
            .insert(built.pid, (id.to_owned(), String::new()));
        registry.containers.insert(
            id.to_owned(),
            Entry {
                lc: built.made,
                rootfs,
                _netns: spare_netns,
                dir,
                own_pid_namespace: checked.own_pid_namespace,
                processes: HashMap::from([(String::new(), init)]),
                state: State::Created,
            },
        );
        // Only now may the reaper publish the init's exit.
        drop(hold);
        log::info!(
            "container {id} created, init pid {}, in {} ms: rootfs mounted {} ms, libcontainer {} ms",
            built.pid,
            begun.elapsed().as_millis(),
            mounted.as_millis(),
            build.as_millis()
        );
        Ok(built.pid)
    }

    /// The init process's pid (in the guest) of container `id`.
    pub fn init_pid(&self, id: &str) -> Result<i32, ContainerError> {
        let registry = self.lock();
        let entry = registry
            .containers
            .get(id)
            .ok_or_else(|| ContainerError::NotFound { id: id.to_owned() })?;
        Ok(entry.init().pid)
    }

    /// Lets the init process run the user's program.
    pub fn start(&self, id: &str) -> Result<i32, ContainerError> {
        let mut registry = self.lock();
        let entry = registry
            .containers
            .get_mut(id)
            .ok_or_else(|| ContainerError::NotFound { id: id.to_owned() })?;
        let next = entry.check(id, Operation::Start)?;
        self.runtime()?.start(&mut entry.lc)?;
        entry.state = next;
        Ok(entry.init().pid)
    }

    /// Starts process `exec_id` in running container `id`.
    pub fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
        options: &StdioOptions,
    ) -> Result<i32, ContainerError> {
        spec::check_id("exec_id", exec_id)?;
        let process = spec::parse_process(process_json)?;
        let dir = {
            let registry = self.lock();
            let entry = registry
                .containers
                .get(id)
                .ok_or_else(|| ContainerError::NotFound { id: id.to_owned() })?;
            entry.check(id, Operation::Exec)?;
            if entry.processes.contains_key(exec_id) {
                return Err(ContainerError::ProcessExists {
                    id: id.to_owned(),
                    exec_id: exec_id.to_owned(),
                });
            }
            entry.dir.clone()
        };
        let terminal = process.terminal().unwrap_or(false);
        let path = dir.join(format!("exec-{exec_id}.json"));
        let json =
            serde_json::to_vec(&process).map_err(|err| io_error("write", &path)(err.into()))?;
        std::fs::write(&path, json).map_err(io_error("write", &path))?;
        let (pipes, io) = self.process_io(terminal, options, id, exec_id)?;
        let runtime = self.runtime()?;
        let hold = self.reaper.hold();
        let built = runtime.exec(&hold, id, &path, io);
        let _ = std::fs::remove_file(&path);
        let built = built?;
        let stdio = match Self::stdio(pipes, built.pty_master, options, id, exec_id) {
            Ok(stdio) => stdio,
            Err(err) => {
                let _ = kill(built.pid, libc::SIGKILL);
                return Err(err);
            }
        };
        self.watch_exit(built.pid);
        let mut registry = self.lock();
        registry
            .pids
            .insert(built.pid, (id.to_owned(), exec_id.to_owned()));
        if let Some(entry) = registry.containers.get_mut(id) {
            entry.processes.insert(
                exec_id.to_owned(),
                Arc::new(Process::new(built.pid, terminal, stdio)),
            );
        }
        drop(hold);
        Ok(built.pid)
    }

    /// Sends `signal` to one process or to every process of the container.
    pub fn signal(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), ContainerError> {
        let signal = i32::try_from(signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or(ContainerError::BadSignal { signal })?;
        let process = self.process(id, exec_id)?;
        let pids = if all {
            cgroups::pids(id)?
                .into_iter()
                .filter_map(|pid| i32::try_from(pid).ok())
                .collect()
        } else {
            if process.exit().is_some() {
                return Err(ContainerError::ProcessExited {
                    id: id.to_owned(),
                    exec_id: exec_id.to_owned(),
                });
            }
            vec![process.pid]
        };
        for pid in pids {
            kill(pid, signal)?;
        }
        Ok(())
    }

    /// Waits for a process to end.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<Exited, ContainerError> {
        let process = self.process(id, exec_id)?;
        Ok(process.wait().await)
    }

    /// A process's pid, status and exit.
    pub fn state(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<(Arc<Process>, ProcessStatus), ContainerError> {
        let registry = self.lock();
        let entry = registry
            .containers
            .get(id)
            .ok_or_else(|| ContainerError::NotFound { id: id.to_owned() })?;
        let process = entry.processes.get(exec_id).cloned().ok_or_else(|| {
            ContainerError::ProcessNotFound {
                id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            }
        })?;
        let status = match (process.exit(), entry.state()) {
            (Some(_), _) => ProcessStatus::PROCESS_STATUS_STOPPED,
            (None, State::Paused) => ProcessStatus::PROCESS_STATUS_PAUSED,
            (None, State::Created) => ProcessStatus::PROCESS_STATUS_CREATED,
            // An exec'd process may outlive a stopped init for a moment.
            (None, State::Running | State::Stopped) => ProcessStatus::PROCESS_STATUS_RUNNING,
        };
        Ok((process, status))
    }

    /// Up to `max` bytes of a process's stdout (or stderr), waiting for some.
    pub async fn read_output(
        &self,
        id: &str,
        exec_id: &str,
        stderr: bool,
        max: u32,
    ) -> Result<Vec<u8>, ContainerError> {
        let process = self.process(id, exec_id)?;
        let buffer = if stderr {
            process.stdio.stderr()
        } else {
            process.stdio.stdout()
        };
        Ok(buffer
            .read(usize::try_from(max).unwrap_or(usize::MAX))
            .await)
    }

    pub async fn write_stdin(
        &self,
        id: &str,
        exec_id: &str,
        data: &[u8],
    ) -> Result<usize, ContainerError> {
        let process = self.process(id, exec_id)?;
        process
            .stdio
            .write_stdin(data)
            .await
            .map_err(Self::stdio_error(id, exec_id))
    }

    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), ContainerError> {
        let process = self.process(id, exec_id)?;
        process
            .stdio
            .close_stdin()
            .await
            .map_err(Self::stdio_error(id, exec_id))
    }

    pub fn resize(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        columns: u32,
    ) -> Result<(), ContainerError> {
        let process = self.process(id, exec_id)?;
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        process
            .stdio
            .resize(clamp(rows), clamp(columns))
            .map_err(Self::stdio_error(id, exec_id))
    }

    fn require_exists(&self, id: &str) -> Result<(), ContainerError> {
        if self.lock().containers.contains_key(id) {
            Ok(())
        } else {
            Err(ContainerError::NotFound { id: id.to_owned() })
        }
    }

    /// The guest pids of every process in the container.
    pub fn pids(&self, id: &str) -> Result<Vec<u32>, ContainerError> {
        self.require_exists(id)?;
        Ok(cgroups::pids(id)?)
    }

    pub fn stats(&self, id: &str) -> Result<StatsContainerResponse, ContainerError> {
        self.require_exists(id)?;
        Ok(cgroups::stats(id)?)
    }

    pub fn pause(&self, id: &str) -> Result<(), ContainerError> {
        let mut registry = self.lock();
        let entry = registry
            .containers
            .get_mut(id)
            .ok_or_else(|| ContainerError::NotFound { id: id.to_owned() })?;
        let next = entry.check(id, Operation::Pause)?;
        self.runtime()?.pause(&mut entry.lc)?;
        entry.state = next;
        Ok(())
    }

    pub fn resume(&self, id: &str) -> Result<(), ContainerError> {
        let mut registry = self.lock();
        let entry = registry
            .containers
            .get_mut(id)
            .ok_or_else(|| ContainerError::NotFound { id: id.to_owned() })?;
        let next = entry.check(id, Operation::Resume)?;
        self.runtime()?.resume(&mut entry.lc)?;
        entry.state = next;
        Ok(())
    }

    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<(), ContainerError> {
        let resources = spec::parse_resources(resources_json)?;
        self.require_exists(id)?;
        Ok(cgroups::update(id, &resources)?)
    }

    /// Removes the container and everything made for it. A running (or
    /// paused) container is killed first with `force`, refused without.
    pub async fn remove(&self, id: &str, force: bool) -> Result<(), ContainerError> {
        let init = {
            let registry = self.lock();
            let entry = registry
                .containers
                .get(id)
                .ok_or_else(|| ContainerError::NotFound { id: id.to_owned() })?;
            if !force {
                entry.check(id, Operation::Remove)?;
            }
            Arc::clone(entry.init())
        };
        if init.exit().is_none() {
            if cgroups::kill_all(id).is_err() {
                kill(init.pid, libc::SIGKILL)?;
            }
            if tokio::time::timeout(KILL_WAIT, init.wait()).await.is_err() {
                return Err(ContainerError::KillTimeout { id: id.to_owned() });
            }
        }
        let Some(mut entry) = ({
            let mut registry = self.lock();
            registry.pids.retain(|_, (container, _)| container != id);
            registry.containers.remove(id)
        }) else {
            // Removed by a concurrent call meanwhile.
            return Ok(());
        };
        if let Some(oom) = &self.oom {
            oom.unwatch(id);
        }
        let mut result = self.runtime().and_then(|rt| Ok(rt.delete(&mut entry.lc)?));
        if let Err(err) = cgroups::remove(id) {
            result = result.and(Err(io_error("remove", &cgroups::dir(id))(err)));
        }
        for process in entry.processes.values() {
            process.stdio.stdout().end();
            process.stdio.stderr().end();
        }
        if let Some(mut rootfs) = entry.rootfs.take() {
            if let Err(source) = rootfs.unmount() {
                result = result.and(Err(ContainerError::Rootfs {
                    id: id.to_owned(),
                    source,
                }));
            }
        }
        if let Err(err) = std::fs::remove_dir_all(&entry.dir) {
            result = result.and(Err(io_error("remove", &entry.dir)(err)));
        }
        log::info!("container {id} removed");
        result
    }

    /// The id of the container with the next OOM kill.
    pub async fn next_oom(&self) -> Result<String, ContainerError> {
        match &self.oom {
            Some(oom) => Ok(oom.next().await),
            None => Err(ContainerError::NoOomWatcher),
        }
    }
}

fn kill(pid: i32, signal: i32) -> Result<(), ContainerError> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let result = unsafe { libc::kill(pid, signal) };
    if result == 0 {
        Ok(())
    } else {
        Err(ContainerError::Kill {
            pid,
            source: io::Error::last_os_error(),
        })
    }
}

/// Publishes a reaped exit to the process it belongs to. When a container's
/// init dies its other processes die with it: by the kernel when it has its
/// own PID namespace, else by the agent here.
fn record_exit(registry: &Mutex<Registry>, exit: Exit) {
    let mut registry = registry.lock().unwrap_or_else(|p| p.into_inner());
    let Some((id, exec_id)) = registry.pids.remove(&exit.pid) else {
        return;
    };
    let Some(entry) = registry.containers.get(&id) else {
        return;
    };
    if let Some(process) = entry.processes.get(&exec_id) {
        process.exited(Exited::now(exit.status));
    }
    if exec_id.is_empty() {
        log::info!("container {id}: init exited ({:?})", exit.status);
        if !entry.own_pid_namespace {
            if let Err(err) = cgroups::kill_all(&id) {
                log::warn!("container {id}: cannot kill its remaining processes: {err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_state_and_what_was_needed() {
        let refused = |state, operation| {
            ContainerError::WrongState {
                id: "c1".to_owned(),
                state,
                operation,
            }
            .to_string()
        };
        assert_eq!(
            refused(State::Running, Operation::Start),
            "container c1 is running, not created"
        );
        assert_eq!(
            refused(State::Stopped, Operation::Pause),
            "container c1 is stopped, not running"
        );
        assert_eq!(
            refused(State::Paused, Operation::Remove),
            "container c1 is paused, remove it with force"
        );
    }
}
