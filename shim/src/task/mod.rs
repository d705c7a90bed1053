//! The containerd Task service (task v2, as containerd 1.6/1.7 speak it):
//! every call is a thin wrapper over a `do_*` method that works on the
//! shim's containers; errors map to ttrpc codes in `crate::error`.
//!
//! One VM per container, or per Kubernetes pod ([`pod`]): `create` starts
//! the sandbox and creates the container in it (a pod's later containers
//! go into its running VM), `delete` of the init process of the container
//! that made the sandbox stops it.

pub mod create;
pub mod dns;
mod guest_events;
pub mod network;
pub mod phases;
pub mod pod;
pub mod process;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, Empty, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest, PidsResponse,
    ProcessInfo, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest, StartResponse,
    StateRequest, StateResponse, StatsRequest, StatsResponse, Status, UpdateTaskRequest,
    WaitRequest, WaitResponse,
};
use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::events::task::{
    TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageDyn, MessageField};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::DeleteResponse;
use hull_protocol::agent_api::agent::{
    ExecProcessRequest as AgentExec, ListProcessesRequest, PauseContainerRequest,
    RemoveContainerRequest, ResizeTtyRequest, ResumeContainerRequest, SignalProcessRequest,
    StartContainerRequest, StatsContainerRequest, StdioOptions, UpdateContainerRequest,
    WaitProcessRequest,
};
use tokio::sync::Mutex;
use ttrpc::context;

use hull_sandbox::state::remove_leftovers;
use hull_sandbox::vm::RPC_TIMEOUT;

use crate::error::ShimError;
use crate::stdio::{StdioCopies, StdioPaths};
use process::{from_unix_nanos, timestamp, Process, Status as ProcStatus};

/// The exit status reported when the VM ends under a running process.
pub const VM_GONE_EXIT_STATUS: u32 = 255;
/// How long removing a deleted container's leftovers waits for its VMM to
/// leave its host cgroups.
const LEFTOVERS_WAIT: Duration = Duration::from_secs(2);

/// One container, in its sandbox.
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    /// Its sandbox: the VM, its network and shares (a pod's containers
    /// share one).
    pub pod: Arc<pod::Pod>,
    /// Whether its create made the sandbox (its removal stops the VM).
    pub owns_pod: bool,
    /// Files the shim made for it outside the sandbox state (the rootfs disk).
    pub files: Vec<PathBuf>,
    pub processes: Mutex<HashMap<String, Arc<Process>>>,
    pub paused: AtomicBool,
    /// The start's phases, written once its init runs.
    pub phases: std::sync::Mutex<Option<phases::Phases>>,
    /// The host's poststart and poststop hooks.
    pub hooks: Vec<(&'static str, oci_spec::runtime::Hook)>,
}

impl Container {
    /// Runs the host hooks of `stage` (poststart, poststop); as the runtime
    /// spec says, their failures are logged, not returned.
    async fn run_hooks(&self, stage: &str, status: &'static str) {
        let hooks: Vec<_> = self
            .hooks
            .iter()
            .filter(|(s, _)| *s == stage)
            .cloned()
            .collect();
        if hooks.is_empty() {
            return;
        }
        let (id, bundle, pid) = (self.id.clone(), self.bundle.clone(), self.pod.host_pid);
        let ran = tokio::task::spawn_blocking(move || {
            crate::hooks::run(&hooks, &id, &bundle, pid, status)
        })
        .await;
        if let Ok(Err(err)) = ran {
            log::warn!("{}: {}", self.id, hull_protocol::error_chain(&err));
        }
    }

    async fn process(&self, exec_id: &str) -> Result<Arc<Process>, ShimError> {
        self.processes
            .lock()
            .await
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ShimError::NoProcess {
                id: self.id.clone(),
                exec_id: exec_id.to_owned(),
            })
    }
}

/// The task service of one shim.
#[derive(Clone)]
pub struct HullTask {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    publisher: RemotePublisher,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    exit: Arc<ExitSignal>,
}

fn rpc_ctx() -> context::Context {
    context::with_timeout(RPC_TIMEOUT.as_nanos() as i64)
}

fn agent_err(call: &'static str) -> impl FnOnce(ttrpc::Error) -> ShimError {
    move |source| ShimError::AgentCall { call, source }
}

impl HullTask {
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Self {
        Self {
            inner: Arc::new(Inner {
                namespace: namespace.to_owned(),
                publisher,
                containers: Mutex::new(HashMap::new()),
                exit,
            }),
        }
    }

    async fn container(&self, id: &str) -> Result<Arc<Container>, ShimError> {
        self.inner
            .containers
            .lock()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NoContainer(id.to_owned()))
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let ctx = context::with_timeout(Duration::from_secs(5).as_nanos() as i64);
        if let Err(e) = self
            .inner
            .publisher
            .publish(ctx, topic, &self.inner.namespace, event)
            .await
        {
            log::warn!("publishing {topic}: {e}");
        }
    }

    async fn do_create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse, ShimError> {
        if self.inner.containers.lock().await.contains_key(&req.id) {
            return Err(ShimError::ContainerExists(req.id.clone()));
        }
        let pods: Vec<Arc<pod::Pod>> = self
            .inner
            .containers
            .lock()
            .await
            .values()
            .filter(|c| c.owns_pod)
            .map(|c| c.pod.clone())
            .collect();
        let container = Arc::new(create::create(&req, &pods).await?);
        let pid = container.pod.host_pid;
        let init = container.process("").await?;
        let copies = StdioCopies::start(container.pod.agent.clone(), &req.id, "", &init.stdio);
        *init.copies.lock().await = Some(copies);
        init.pid.store(pid, Ordering::SeqCst);
        self.inner
            .containers
            .lock()
            .await
            .insert(req.id.clone(), container.clone());
        if container.owns_pod {
            tokio::spawn(guest_events::forward_oom_events(
                self.clone(),
                req.id.clone(),
                container.pod.agent.clone(),
            ));
            tokio::spawn(guest_events::forward_guest_log(
                req.id.clone(),
                container.pod.agent.clone(),
            ));
        }
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(containerd_shim::protos::events::task::TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(containerd_shim::protos::events::task::TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn do_start(&self, req: StartRequest) -> Result<StartResponse, ShimError> {
        let container = self.container(&req.id).await?;
        let process = container.process(&req.exec_id).await?;
        if process.status() != ProcStatus::Created {
            return Err(ShimError::WrongState(format!(
                "process {:?} of {} was started already",
                req.exec_id, req.id
            )));
        }
        let guest_pid = if req.exec_id.is_empty() {
            // A pod's network is wired once, by its sandbox container; the
            // others join that container's namespace in the guest.
            if container.owns_pod {
                let sandbox = &container.pod.sandbox;
                let state_dir = sandbox.state_dir().await;
                let vsock_path = sandbox.vsock_path().await;
                container
                    .pod
                    .network
                    .plug(&req.id, &container.pod.agent, &vsock_path, &state_dir)
                    .await?;
            }
            let request = StartContainerRequest {
                container_id: req.id.clone(),
                ..Default::default()
            };
            container
                .pod
                .agent
                .start_container(rpc_ctx(), &request)
                .await
                .map_err(agent_err("StartContainer"))?
                .pid
        } else {
            let stdio = &process.stdio;
            let request = AgentExec {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                process: process.exec_spec.clone().unwrap_or_default(),
                stdio: MessageField::some(stdio_options(stdio)),
                ..Default::default()
            };
            let pid = container
                .pod
                .agent
                .exec_process(rpc_ctx(), &request)
                .await
                .map_err(agent_err("ExecProcess"))?
                .pid;
            let copies =
                StdioCopies::start(container.pod.agent.clone(), &req.id, &req.exec_id, stdio);
            *process.copies.lock().await = Some(copies);
            pid
        };
        log::debug!("{}/{:?}: guest pid {guest_pid}", req.id, req.exec_id);
        if req.exec_id.is_empty() {
            let phases = container.phases.lock().expect("phases poisoned").take();
            if let Some(mut phases) = phases {
                phases.mark("started");
                phases.write();
            }
        }
        let pid = container.pod.host_pid;
        process.set_running(pid);
        if req.exec_id.is_empty() {
            container.run_hooks("poststart", "running").await;
        }
        tokio::spawn(self.clone().watch_exit(container.clone(), process.clone()));
        if req.exec_id.is_empty() {
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        } else {
            self.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        }
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    /// Waits for `process` to end in the guest (or for its VM to end),
    /// lets its output drain, records the exit and publishes TaskExit.
    async fn watch_exit(self, container: Arc<Container>, process: Arc<Process>) {
        let request = WaitProcessRequest {
            container_id: container.id.clone(),
            exec_id: process.exec_id.clone(),
            ..Default::default()
        };
        let (exit_status, exited_at) = tokio::select! {
            waited = container.pod.agent.wait_process(context::Context::default(), &request) => match waited {
                Ok(r) => (r.exit_status, from_unix_nanos(r.exited_at_unix_nanos)),
                Err(e) => {
                    log::warn!("{}/{}: WaitProcess: {e}", container.id, process.exec_id);
                    (VM_GONE_EXIT_STATUS, SystemTime::now())
                }
            },
            how = container.pod.sandbox.wait_stopped() => {
                log::warn!("{}: the VM ended ({how}) while {:?} ran", container.id, process.exec_id);
                (VM_GONE_EXIT_STATUS, SystemTime::now())
            }
        };
        if let Some(copies) = process.copies.lock().await.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(10), copies.drained()).await;
        }
        if process.set_stopped(exit_status, exited_at) {
            self.publish(
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: container.id.clone(),
                    id: if process.exec_id.is_empty() {
                        container.id.clone()
                    } else {
                        process.exec_id.clone()
                    },
                    pid: process.pid(),
                    exit_status,
                    exited_at: MessageField::some(timestamp(exited_at)),
                    ..Default::default()
                }),
            )
            .await;
        }
    }

    async fn do_state(&self, req: StateRequest) -> Result<StateResponse, ShimError> {
        let container = self.container(&req.id).await?;
        let process = container.process(&req.exec_id).await?;
        let mut response = StateResponse {
            id: req.id.clone(),
            bundle: container.bundle.display().to_string(),
            pid: process.pid(),
            stdin: process.stdio.stdin.clone(),
            stdout: process.stdio.stdout.clone(),
            stderr: process.stdio.stderr.clone(),
            terminal: process.stdio.terminal,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        let status = match process.status() {
            ProcStatus::Created => Status::CREATED,
            ProcStatus::Running if container.paused.load(Ordering::SeqCst) => Status::PAUSED,
            ProcStatus::Running => Status::RUNNING,
            ProcStatus::Stopped {
                exit_status,
                exited_at,
            } => {
                response.exit_status = exit_status;
                response.exited_at = MessageField::some(timestamp(exited_at));
                Status::STOPPED
            }
        };
        response.status = status.into();
        Ok(response)
    }

    async fn do_wait(&self, req: WaitRequest) -> Result<WaitResponse, ShimError> {
        let container = self.container(&req.id).await?;
        let process = container.process(&req.exec_id).await?;
        let (exit_status, exited_at) = process.wait().await;
        Ok(WaitResponse {
            exit_status,
            exited_at: MessageField::some(timestamp(exited_at)),
            ..Default::default()
        })
    }

    async fn do_kill(&self, req: KillRequest) -> Result<(), ShimError> {
        let container = self.container(&req.id).await?;
        let process = container.process(&req.exec_id).await?;
        if let ProcStatus::Stopped { .. } = process.status() {
            return Err(ShimError::NoProcess {
                id: req.id.clone(),
                exec_id: format!("{} (it has exited)", req.exec_id),
            });
        }
        if let Some(how) = container.pod.sandbox.stopped() {
            return Err(ShimError::VmGone(how));
        }
        let request = SignalProcessRequest {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            signal: req.signal,
            all: req.all,
            ..Default::default()
        };
        container
            .pod
            .agent
            .signal_process(rpc_ctx(), &request)
            .await
            .map_err(agent_err("SignalProcess"))?;
        Ok(())
    }

    async fn do_exec(&self, req: ExecProcessRequest) -> Result<(), ShimError> {
        let container = self.container(&req.id).await?;
        let mut processes = container.processes.lock().await;
        if processes.contains_key(&req.exec_id) {
            return Err(ShimError::ProcessExists(req.exec_id.clone()));
        }
        let spec = req.spec.as_ref().map(|any| any.value.clone());
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        processes.insert(
            req.exec_id.clone(),
            Arc::new(Process::new(&req.exec_id, stdio, spec)),
        );
        drop(processes);
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        )
        .await;
        Ok(())
    }

    async fn do_delete(&self, req: DeleteRequest) -> Result<DeleteResponse, ShimError> {
        let container = self.container(&req.id).await?;
        let process = container.process(&req.exec_id).await?;
        let (exit_status, exited_at) = match process.status() {
            ProcStatus::Stopped {
                exit_status,
                exited_at,
            } => (exit_status, exited_at),
            ProcStatus::Created => (0, SystemTime::now()),
            ProcStatus::Running => {
                return Err(ShimError::WrongState(format!(
                    "process {:?} of {} is still running",
                    req.exec_id, req.id
                )))
            }
        };
        let pid = process.pid();
        if req.exec_id.is_empty() {
            self.remove_container(&container).await;
            self.inner.containers.lock().await.remove(&req.id);
            self.publish(
                topics::TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: req.id.clone(),
                    pid,
                    exit_status,
                    exited_at: MessageField::some(timestamp(exited_at)),
                    ..Default::default()
                }),
            )
            .await;
        } else {
            container.processes.lock().await.remove(&req.exec_id);
        }
        Ok(DeleteResponse {
            pid,
            exit_status,
            exited_at: MessageField::some(timestamp(exited_at)),
            ..Default::default()
        })
    }

    /// Stops every container's VM and removes what the shim made for it:
    /// the shim is going away (SIGTERM) with containers still in it. A
    /// pod's members go before the container that made its VM.
    pub async fn stop_all(&self) {
        let mut containers: Vec<_> = self.inner.containers.lock().await.drain().collect();
        containers.sort_by_key(|(_, c)| c.owns_pod);
        for (id, container) in containers {
            log::warn!("{id}: stopping its VM: the shim is terminating");
            self.remove_container(&container).await;
        }
    }

    /// Everything the container had: its processes' copies, the container
    /// in the guest, its directories in the shares; and when it made the
    /// sandbox, the VM, the shares, the rootfs disk, the sandbox state.
    async fn remove_container(&self, container: &Container) {
        for process in container.processes.lock().await.values() {
            process.copies.lock().await.take();
        }
        let pod = &container.pod;
        if pod.sandbox.stopped().is_none() {
            let request = RemoveContainerRequest {
                container_id: container.id.clone(),
                force: true,
                ..Default::default()
            };
            if let Err(e) = container
                .pod
                .agent
                .remove_container(rpc_ctx(), &request)
                .await
            {
                log::warn!("{}: RemoveContainer: {e}", container.id);
            }
        }
        if !container.owns_pod {
            let (pod, id) = (pod.clone(), container.id.clone());
            let _ = tokio::task::spawn_blocking(move || pod.remove_member(&id)).await;
            container.run_hooks("poststop", "stopped").await;
            return;
        }
        pod.network.unplug(&container.id);
        let state_dir = pod.sandbox.state_dir().await;
        pod.sandbox.shutdown().await;
        let shares = pod.take_shares();
        let _ = tokio::task::spawn_blocking(move || drop(shares)).await;
        remove_leftovers(&state_dir, &container.files, LEFTOVERS_WAIT).await;
        container.run_hooks("poststop", "stopped").await;
    }

    /// The task's host process, the one pid hull reports (see
    /// [`pod::Pod::host_pid`]): `docker top` and `ctr task ps` look pids
    /// up on the host, where the guest's pids name unrelated processes.
    /// The guest's own count is checked, so a dead guest is an error.
    async fn do_pids(&self, req: PidsRequest) -> Result<PidsResponse, ShimError> {
        let container = self.container(&req.id).await?;
        let request = ListProcessesRequest {
            container_id: req.id.clone(),
            ..Default::default()
        };
        let listed = container
            .pod
            .agent
            .list_processes(rpc_ctx(), &request)
            .await
            .map_err(agent_err("ListProcesses"))?;
        log::debug!("{}: guest pids {:?}", req.id, listed.pids);
        Ok(PidsResponse {
            processes: vec![ProcessInfo {
                pid: container.pod.host_pid,
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    async fn do_pause(&self, id: &str, pause: bool) -> Result<(), ShimError> {
        let container = self.container(id).await?;
        if pause {
            let request = PauseContainerRequest {
                container_id: id.to_owned(),
                ..Default::default()
            };
            container
                .pod
                .agent
                .pause_container(rpc_ctx(), &request)
                .await
                .map_err(agent_err("PauseContainer"))?;
        } else {
            let request = ResumeContainerRequest {
                container_id: id.to_owned(),
                ..Default::default()
            };
            container
                .pod
                .agent
                .resume_container(rpc_ctx(), &request)
                .await
                .map_err(agent_err("ResumeContainer"))?;
        }
        container.paused.store(pause, Ordering::SeqCst);
        if pause {
            let event = TaskPaused {
                container_id: id.to_owned(),
                ..Default::default()
            };
            self.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(event))
                .await;
        } else {
            let event = TaskResumed {
                container_id: id.to_owned(),
                ..Default::default()
            };
            self.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(event))
                .await;
        }
        Ok(())
    }

    async fn do_stats(&self, req: StatsRequest) -> Result<StatsResponse, ShimError> {
        let container = self.container(&req.id).await?;
        let request = StatsContainerRequest {
            container_id: req.id.clone(),
            ..Default::default()
        };
        let s = container
            .pod
            .agent
            .stats_container(rpc_ctx(), &request)
            .await
            .map_err(agent_err("StatsContainer"))?;
        let metrics = Metrics {
            pids: MessageField::some(PidsStat {
                current: s.pids_current,
                limit: s.pids_limit,
                ..Default::default()
            }),
            cpu: MessageField::some(CPUStat {
                usage: MessageField::some(CPUUsage {
                    total: s.cpu_usage_total_nanos,
                    kernel: s.cpu_usage_kernel_nanos,
                    user: s.cpu_usage_user_nanos,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            memory: MessageField::some(MemoryStat {
                cache: s.memory_cache_bytes,
                rss: s.memory_rss_bytes,
                usage: MessageField::some(MemoryEntry {
                    limit: s.memory_limit_bytes,
                    usage: s.memory_usage_bytes,
                    max: s.memory_max_usage_bytes,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let any = Any {
            type_url: "io.containerd.cgroups.v1.Metrics".into(),
            value: metrics.write_to_bytes().map_err(|e| ShimError::Io {
                what: "encoding the metrics".into(),
                source: std::io::Error::other(e),
            })?,
            ..Default::default()
        };
        Ok(StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }
}

fn stdio_options(stdio: &StdioPaths) -> StdioOptions {
    StdioOptions {
        terminal: stdio.terminal,
        stdin: !stdio.stdin.is_empty(),
        stdout: !stdio.stdout.is_empty(),
        stderr: !stdio.stderr.is_empty() && !stdio.terminal,
        ..Default::default()
    }
}

/// Logs a failed call with its id before it goes back to containerd.
fn logged<T>(call: &str, id: &str, result: Result<T, ShimError>) -> ttrpc::Result<T> {
    result.map_err(|e| {
        // Agent errors carry the guest's words: escaped, one line.
        log::error!(
            "{call} {id}: {}",
            crate::error::untrusted(&hull_protocol::error_chain(&e))
        );
        e.into()
    })
}

#[async_trait]
impl Task for HullTask {
    async fn create(
        &self,
        _: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        let id = req.id.clone();
        logged("Create", &id, self.do_create(req).await)
    }

    async fn start(&self, _: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        let id = req.id.clone();
        logged("Start", &id, self.do_start(req).await)
    }

    async fn state(&self, _: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        let id = req.id.clone();
        logged("State", &id, self.do_state(req).await)
    }

    async fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let id = req.id.clone();
        logged("Wait", &id, self.do_wait(req).await)
    }

    async fn kill(&self, _: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        let id = req.id.clone();
        logged("Kill", &id, self.do_kill(req).await.map(|()| Empty::new()))
    }

    async fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        let id = req.id.clone();
        logged("Exec", &id, self.do_exec(req).await.map(|()| Empty::new()))
    }

    async fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        let id = req.id.clone();
        logged("Delete", &id, self.do_delete(req).await)
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let id = req.id.clone();
        logged("Pids", &id, self.do_pids(req).await)
    }

    async fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        logged(
            "Pause",
            &req.id,
            self.do_pause(&req.id, true).await.map(|()| Empty::new()),
        )
    }

    async fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        logged(
            "Resume",
            &req.id,
            self.do_pause(&req.id, false).await.map(|()| Empty::new()),
        )
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        let result = async {
            let container = self.container(&req.id).await?;
            let request = ResizeTtyRequest {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                rows: req.height,
                columns: req.width,
                ..Default::default()
            };
            container
                .pod
                .agent
                .resize_tty(rpc_ctx(), &request)
                .await
                .map_err(agent_err("ResizeTty"))?;
            Ok(Empty::new())
        }
        .await;
        logged("ResizePty", &req.id, result)
    }

    async fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        let result = async {
            let container = self.container(&req.id).await?;
            let process = container.process(&req.exec_id).await?;
            if req.stdin {
                if let Some(copies) = process.copies.lock().await.as_ref() {
                    copies.close_stdin();
                }
            }
            Ok(Empty::new())
        }
        .await;
        logged("CloseIO", &req.id, result)
    }

    async fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let result = async {
            let container = self.container(&req.id).await?;
            let request = UpdateContainerRequest {
                container_id: req.id.clone(),
                resources: req
                    .resources
                    .as_ref()
                    .map(|a| a.value.clone())
                    .unwrap_or_default(),
                ..Default::default()
            };
            container
                .pod
                .agent
                .update_container(rpc_ctx(), &request)
                .await
                .map_err(agent_err("UpdateContainer"))?;
            Ok(Empty::new())
        }
        .await;
        logged("Update", &req.id, result)
    }

    async fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let id = req.id.clone();
        logged("Stats", &id, self.do_stats(req).await)
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        req: ConnectRequest,
    ) -> ttrpc::Result<ConnectResponse> {
        let task_pid = match self.container(&req.id).await {
            Ok(container) => container.pod.sandbox.pid().await,
            Err(_) => 0,
        };
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> ttrpc::Result<Empty> {
        if self.inner.containers.lock().await.is_empty() {
            self.inner.exit.signal();
        }
        Ok(Empty::new())
    }
}
