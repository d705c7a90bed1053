//! The agent API's handlers: thin wrappers over `do_*` methods, with the
//! mapping from [`RpcError`] to ttrpc status codes in one place.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use hull_protocol::agent_api::agent::{
    CloseStdinRequest, ConfigureNetworkRequest, CreateContainerRequest, CreateContainerResponse,
    Empty, ExecProcessRequest, ExecProcessResponse, GetOOMEventRequest, ListProcessesRequest,
    ListProcessesResponse, OOMEvent, PauseContainerRequest, PingRequest, PingResponse,
    PrepareCloneRequest, PrepareCloneResponse, ProcessStateRequest, ProcessStateResponse,
    ReadGuestLogRequest, ReadGuestLogResponse, ReadStreamRequest, ReadStreamResponse,
    RemoveContainerRequest, ResizeTtyRequest, ResumeContainerRequest, ShutdownRequest,
    ShutdownResponse, SignalProcessRequest, StartContainerRequest, StartContainerResponse,
    StatsContainerRequest, StatsContainerResponse, UpdateContainerRequest, VersionRequest,
    VersionResponse, WaitProcessRequest, WaitProcessResponse, WriteStreamRequest,
    WriteStreamResponse,
};
use hull_protocol::agent_api::agent_ttrpc::Agent;
use hull_protocol::{check_compatible, ProtocolError, PROTOCOL_VERSION};
use thiserror::Error;
use tokio::sync::Notify;
use ttrpc::r#async::TtrpcContext;

use crate::container::runtime::RuntimeError;
use crate::container::stdio::StdioError;
use crate::container::{ContainerError, Containers};
use crate::guest_log::{GuestLog, GuestLogError};
use crate::logger::error_chain;

/// Set by the `Shutdown` RPC; the server waits on it.
#[derive(Debug, Default)]
pub struct ShutdownSignal {
    requested: AtomicBool,
    notify: Notify,
}

impl ShutdownSignal {
    /// Asks the agent to stop; returns whether this was the first request.
    pub fn request(&self) -> bool {
        let first = !self.requested.swap(true, Ordering::SeqCst);
        self.notify.notify_waiters();
        first
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Returns once [`request`](Self::request) has been called.
    pub async fn wait(&self) {
        loop {
            let mut notified = pin!(self.notify.notified());
            // Registered before the check, so a request in between wakes us.
            notified.as_mut().enable();
            if self.is_requested() {
                return;
            }
            notified.await;
        }
    }
}

/// Why an RPC was refused.
#[derive(Debug, Error)]
pub enum RpcError {
    #[error("the caller's protocol version is not supported")]
    IncompatibleCaller(#[source] ProtocolError),
    #[error("the agent is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("the guest log")]
    GuestLog(#[from] GuestLogError),
    #[error("preparing a restored clone")]
    Clone(#[from] crate::clone::CloneError),
    #[error("the container's network")]
    Network(#[from] crate::network::NetworkError),
}

impl RpcError {
    /// The ttrpc code a caller can act on.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            // Retrying will not help until one side is upgraded.
            RpcError::IncompatibleCaller(_) => ttrpc::Code::FAILED_PRECONDITION,
            // The guest is going away; the caller should not retry here.
            RpcError::ShuttingDown => ttrpc::Code::UNAVAILABLE,
            RpcError::Container(err) => container_code(err),
            RpcError::GuestLog(_) => ttrpc::Code::UNAVAILABLE,
            RpcError::Clone(crate::clone::CloneError::Sys { .. }) => ttrpc::Code::INTERNAL,
            RpcError::Clone(_) => ttrpc::Code::INVALID_ARGUMENT,
            RpcError::Network(crate::network::NetworkError::Invalid { .. }) => {
                ttrpc::Code::INVALID_ARGUMENT
            }
            RpcError::Network(crate::network::NetworkError::NoInterface) => {
                ttrpc::Code::FAILED_PRECONDITION
            }
            RpcError::Network(_) => ttrpc::Code::INTERNAL,
        }
    }
}

/// The one place container errors become ttrpc codes.
fn container_code(err: &ContainerError) -> ttrpc::Code {
    use libcontainer::error::LibcontainerError as Lc;
    match err {
        ContainerError::NotFound { .. }
        | ContainerError::ProcessNotFound { .. }
        // containerd's shims answer a signal to a finished process so.
        | ContainerError::ProcessExited { .. } => ttrpc::Code::NOT_FOUND,
        ContainerError::AlreadyExists { .. } | ContainerError::ProcessExists { .. } => {
            ttrpc::Code::ALREADY_EXISTS
        }
        ContainerError::InvalidSpec(_) | ContainerError::BadSignal { .. } => {
            ttrpc::Code::INVALID_ARGUMENT
        }
        ContainerError::Rootfs { source, .. } if source.is_invalid_request() => {
            ttrpc::Code::INVALID_ARGUMENT
        }
        ContainerError::Runtime(RuntimeError::Container { source, .. })
            if matches!(
                **source,
                Lc::InvalidSpec(_) | Lc::MissingSpec(_) | Lc::InvalidID(_) | Lc::InvalidInput(_)
            ) =>
        {
            ttrpc::Code::INVALID_ARGUMENT
        }
        ContainerError::WrongState { .. } => ttrpc::Code::FAILED_PRECONDITION,
        ContainerError::Stdio {
            source: StdioError::NoStdin | StdioError::StdinClosed | StdioError::NoTerminal,
            ..
        } => ttrpc::Code::FAILED_PRECONDITION,
        ContainerError::NoOomWatcher => ttrpc::Code::UNAVAILABLE,
        ContainerError::Rootfs { .. }
        | ContainerError::Runtime(_)
        | ContainerError::Stdio { .. }
        | ContainerError::Cgroup(_)
        | ContainerError::Io { .. }
        | ContainerError::Kill { .. }
        | ContainerError::KillTimeout { .. } => ttrpc::Code::INTERNAL,
    }
}

impl From<RpcError> for ttrpc::Error {
    fn from(err: RpcError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(err.code(), error_chain(&err)))
    }
}

/// The `hull.agent.v1.Agent` service.
#[derive(Debug)]
pub struct AgentService {
    shutdown: Arc<ShutdownSignal>,
    containers: Containers,
    guest_log: GuestLog,
    /// Each container's DNS relay (Docker's embedded DNS), if it has one.
    dns: std::sync::Mutex<std::collections::HashMap<String, crate::dns::DnsForwarder>>,
}

impl AgentService {
    pub fn new(shutdown: Arc<ShutdownSignal>, containers: Containers) -> Self {
        AgentService {
            shutdown,
            containers,
            guest_log: GuestLog::default(),
            dns: Default::default(),
        }
    }

    fn check_running(&self) -> Result<(), RpcError> {
        if self.shutdown.is_requested() {
            Err(RpcError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    pub fn do_version(&self, req: &VersionRequest) -> Result<VersionResponse, RpcError> {
        self.check_running()?;
        // 0: the caller did not say; it checks our answer itself.
        if req.protocol_version != 0 {
            check_compatible(req.protocol_version).map_err(RpcError::IncompatibleCaller)?;
        }
        let uname = rustix::system::uname();
        Ok(VersionResponse {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol_version: PROTOCOL_VERSION,
            kernel_release: uname.release().to_string_lossy().into_owned(),
            ..Default::default()
        })
    }

    pub fn do_ping(&self, _req: &PingRequest) -> Result<PingResponse, RpcError> {
        self.check_running()?;
        Ok(PingResponse::new())
    }

    pub fn do_prepare_clone(
        &self,
        req: &PrepareCloneRequest,
    ) -> Result<PrepareCloneResponse, RpcError> {
        self.check_running()?;
        crate::clone::prepare(req)?;
        log::info!("clone prepared: clock set, CRNG reseeded");
        Ok(PrepareCloneResponse::new())
    }

    /// Answers, then the server stops (see [`crate::server::serve`]):
    /// asking twice is not an error, both callers get their answer.
    pub fn do_shutdown(&self, _req: &ShutdownRequest) -> Result<ShutdownResponse, RpcError> {
        if self.shutdown.request() {
            log::info!("shutdown requested");
        }
        Ok(ShutdownResponse::new())
    }

    pub fn do_create_container(
        &self,
        req: &CreateContainerRequest,
    ) -> Result<CreateContainerResponse, RpcError> {
        self.check_running()?;
        let pid = self.containers.create(
            &req.container_id,
            &req.oci_spec,
            req.rootfs.get_or_default(),
            req.binds.as_ref(),
            req.stdio.get_or_default(),
        )?;
        Ok(CreateContainerResponse {
            pid: pid_u32(pid),
            ..Default::default()
        })
    }

    pub fn do_configure_network(&self, req: &ConfigureNetworkRequest) -> Result<Empty, RpcError> {
        self.check_running()?;
        let iface = req
            .interface
            .as_ref()
            .map(crate::network::interface_of)
            .transpose()?;
        let pid = self.containers.init_pid(&req.container_id)?;
        let path = format!("/proc/{pid}/ns/net");
        let open_netns = || {
            std::fs::File::open(&path).map_err(|source| ContainerError::Io {
                action: "open",
                path: path.clone().into(),
                source,
            })
        };
        // Loopback first: 127.0.0.11 exists once it is up.
        crate::network::configure(open_netns()?, iface)?;
        if req.forward_dns {
            let relay = crate::dns::DnsForwarder::start(open_netns()?, &req.container_id)
                .map_err(crate::network::NetworkError::DnsRelay)?;
            self.dns
                .lock()
                .expect("dns poisoned")
                .insert(req.container_id.clone(), relay);
        }

        log::info!(
            "container {}: network configured ({})",
            req.container_id,
            req.interface
                .as_ref()
                .map_or("loopback only".to_owned(), |i| format!(
                    "{} {}",
                    i.name, i.mac
                ))
        );
        Ok(Empty::new())
    }

    pub fn do_start_container(
        &self,
        req: &StartContainerRequest,
    ) -> Result<StartContainerResponse, RpcError> {
        self.check_running()?;
        let pid = self.containers.start(&req.container_id)?;
        Ok(StartContainerResponse {
            pid: pid_u32(pid),
            ..Default::default()
        })
    }

    pub fn do_exec_process(
        &self,
        req: &ExecProcessRequest,
    ) -> Result<ExecProcessResponse, RpcError> {
        self.check_running()?;
        let pid = self.containers.exec(
            &req.container_id,
            &req.exec_id,
            &req.process,
            req.stdio.get_or_default(),
        )?;
        Ok(ExecProcessResponse {
            pid: pid_u32(pid),
            ..Default::default()
        })
    }

    pub fn do_signal_process(&self, req: &SignalProcessRequest) -> Result<Empty, RpcError> {
        self.check_running()?;
        self.containers
            .signal(&req.container_id, &req.exec_id, req.signal, req.all)?;
        Ok(Empty::new())
    }

    pub async fn do_wait_process(
        &self,
        req: &WaitProcessRequest,
    ) -> Result<WaitProcessResponse, RpcError> {
        self.check_running()?;
        let exited = self
            .containers
            .wait(&req.container_id, &req.exec_id)
            .await?;
        Ok(WaitProcessResponse {
            exit_status: exited.status,
            exited_at_unix_nanos: exited.at_unix_nanos,
            ..Default::default()
        })
    }

    pub fn do_process_state(
        &self,
        req: &ProcessStateRequest,
    ) -> Result<ProcessStateResponse, RpcError> {
        self.check_running()?;
        let (process, status) = self.containers.state(&req.container_id, &req.exec_id)?;
        let exit = process.exit();
        Ok(ProcessStateResponse {
            pid: pid_u32(process.pid),
            status: status.into(),
            exit_status: exit.map_or(0, |e| e.status),
            exited_at_unix_nanos: exit.map_or(0, |e| e.at_unix_nanos),
            terminal: process.terminal,
            ..Default::default()
        })
    }

    pub async fn do_read_stream(
        &self,
        req: &ReadStreamRequest,
        stderr: bool,
    ) -> Result<ReadStreamResponse, RpcError> {
        self.check_running()?;
        let data = self
            .containers
            .read_output(&req.container_id, &req.exec_id, stderr, req.max_bytes)
            .await?;
        Ok(ReadStreamResponse {
            data,
            ..Default::default()
        })
    }

    pub async fn do_write_stdin(
        &self,
        req: &WriteStreamRequest,
    ) -> Result<WriteStreamResponse, RpcError> {
        self.check_running()?;
        let written = self
            .containers
            .write_stdin(&req.container_id, &req.exec_id, &req.data)
            .await?;
        Ok(WriteStreamResponse {
            written: u32::try_from(written).unwrap_or(u32::MAX),
            ..Default::default()
        })
    }

    pub async fn do_close_stdin(&self, req: &CloseStdinRequest) -> Result<Empty, RpcError> {
        self.check_running()?;
        self.containers
            .close_stdin(&req.container_id, &req.exec_id)
            .await?;
        Ok(Empty::new())
    }

    pub fn do_resize_tty(&self, req: &ResizeTtyRequest) -> Result<Empty, RpcError> {
        self.check_running()?;
        self.containers
            .resize(&req.container_id, &req.exec_id, req.rows, req.columns)?;
        Ok(Empty::new())
    }

    pub fn do_list_processes(
        &self,
        req: &ListProcessesRequest,
    ) -> Result<ListProcessesResponse, RpcError> {
        self.check_running()?;
        Ok(ListProcessesResponse {
            pids: self.containers.pids(&req.container_id)?,
            ..Default::default()
        })
    }

    pub fn do_stats_container(
        &self,
        req: &StatsContainerRequest,
    ) -> Result<StatsContainerResponse, RpcError> {
        self.check_running()?;
        Ok(self.containers.stats(&req.container_id)?)
    }

    pub fn do_pause_container(&self, req: &PauseContainerRequest) -> Result<Empty, RpcError> {
        self.check_running()?;
        self.containers.pause(&req.container_id)?;
        Ok(Empty::new())
    }

    pub fn do_resume_container(&self, req: &ResumeContainerRequest) -> Result<Empty, RpcError> {
        self.check_running()?;
        self.containers.resume(&req.container_id)?;
        Ok(Empty::new())
    }

    pub fn do_update_container(&self, req: &UpdateContainerRequest) -> Result<Empty, RpcError> {
        self.check_running()?;
        self.containers.update(&req.container_id, &req.resources)?;
        Ok(Empty::new())
    }

    pub async fn do_remove_container(
        &self,
        req: &RemoveContainerRequest,
    ) -> Result<Empty, RpcError> {
        self.check_running()?;
        self.containers.remove(&req.container_id, req.force).await?;
        let relay = self
            .dns
            .lock()
            .expect("dns poisoned")
            .remove(&req.container_id);
        drop(relay);
        Ok(Empty::new())
    }

    pub async fn do_get_oom_event(&self, _req: &GetOOMEventRequest) -> Result<OOMEvent, RpcError> {
        self.check_running()?;
        // A hostile test build lies here (agent/src/hostile.rs).
        #[cfg(feature = "hostile-test")]
        let container_id = crate::hostile::oom_event().await;
        #[cfg(not(feature = "hostile-test"))]
        let container_id = self.containers.next_oom().await?;
        Ok(OOMEvent {
            container_id,
            ..Default::default()
        })
    }

    pub async fn do_read_guest_log(
        &self,
        req: &ReadGuestLogRequest,
    ) -> Result<ReadGuestLogResponse, RpcError> {
        self.check_running()?;
        Ok(ReadGuestLogResponse {
            data: self.guest_log.read(req.max_bytes).await?,
            ..Default::default()
        })
    }
}

/// Guest pids are positive.
fn pid_u32(pid: i32) -> u32 {
    u32::try_from(pid).unwrap_or(0)
}

/// Logs refusals once, at the edge, with their cause.
fn refused(rpc: &str, err: RpcError) -> ttrpc::Error {
    log::warn!("{rpc} refused: {}", error_chain(&err));
    err.into()
}

#[async_trait]
impl Agent for AgentService {
    async fn version(
        &self,
        _ctx: &TtrpcContext,
        req: VersionRequest,
    ) -> ttrpc::Result<VersionResponse> {
        self.do_version(&req).map_err(|err| refused("Version", err))
    }

    async fn ping(&self, _ctx: &TtrpcContext, req: PingRequest) -> ttrpc::Result<PingResponse> {
        self.do_ping(&req).map_err(|err| refused("Ping", err))
    }

    async fn prepare_clone(
        &self,
        _ctx: &TtrpcContext,
        req: PrepareCloneRequest,
    ) -> ttrpc::Result<PrepareCloneResponse> {
        self.do_prepare_clone(&req)
            .map_err(|err| refused("PrepareClone", err))
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        req: ShutdownRequest,
    ) -> ttrpc::Result<ShutdownResponse> {
        self.do_shutdown(&req)
            .map_err(|err| refused("Shutdown", err))
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        self.do_create_container(&req)
            .map_err(|err| refused("CreateContainer", err))
    }

    async fn configure_network(
        &self,
        _ctx: &TtrpcContext,
        req: ConfigureNetworkRequest,
    ) -> ttrpc::Result<Empty> {
        self.do_configure_network(&req)
            .map_err(|err| refused("ConfigureNetwork", err))
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<StartContainerResponse> {
        self.do_start_container(&req)
            .map_err(|err| refused("StartContainer", err))
    }

    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<ExecProcessResponse> {
        self.do_exec_process(&req)
            .map_err(|err| refused("ExecProcess", err))
    }

    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        self.do_signal_process(&req)
            .map_err(|err| refused("SignalProcess", err))
    }

    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        self.do_wait_process(&req)
            .await
            .map_err(|err| refused("WaitProcess", err))
    }

    async fn process_state(
        &self,
        _ctx: &TtrpcContext,
        req: ProcessStateRequest,
    ) -> ttrpc::Result<ProcessStateResponse> {
        self.do_process_state(&req)
            .map_err(|err| refused("ProcessState", err))
    }

    async fn read_stdout(
        &self,
        _ctx: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        self.do_read_stream(&req, false)
            .await
            .map_err(|err| refused("ReadStdout", err))
    }

    async fn read_stderr(
        &self,
        _ctx: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        self.do_read_stream(&req, true)
            .await
            .map_err(|err| refused("ReadStderr", err))
    }

    async fn write_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: WriteStreamRequest,
    ) -> ttrpc::Result<WriteStreamResponse> {
        self.do_write_stdin(&req)
            .await
            .map_err(|err| refused("WriteStdin", err))
    }

    async fn close_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: CloseStdinRequest,
    ) -> ttrpc::Result<Empty> {
        self.do_close_stdin(&req)
            .await
            .map_err(|err| refused("CloseStdin", err))
    }

    async fn resize_tty(&self, _ctx: &TtrpcContext, req: ResizeTtyRequest) -> ttrpc::Result<Empty> {
        self.do_resize_tty(&req)
            .map_err(|err| refused("ResizeTty", err))
    }

    async fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: ListProcessesRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        self.do_list_processes(&req)
            .map_err(|err| refused("ListProcesses", err))
    }

    async fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: StatsContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        self.do_stats_container(&req)
            .map_err(|err| refused("StatsContainer", err))
    }

    async fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: PauseContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.do_pause_container(&req)
            .map_err(|err| refused("PauseContainer", err))
    }

    async fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: ResumeContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.do_resume_container(&req)
            .map_err(|err| refused("ResumeContainer", err))
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.do_update_container(&req)
            .map_err(|err| refused("UpdateContainer", err))
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.do_remove_container(&req)
            .await
            .map_err(|err| refused("RemoveContainer", err))
    }

    async fn get_oom_event(
        &self,
        _ctx: &TtrpcContext,
        req: GetOOMEventRequest,
    ) -> ttrpc::Result<OOMEvent> {
        self.do_get_oom_event(&req)
            .await
            .map_err(|err| refused("GetOOMEvent", err))
    }

    async fn read_guest_log(
        &self,
        _ctx: &TtrpcContext,
        req: ReadGuestLogRequest,
    ) -> ttrpc::Result<ReadGuestLogResponse> {
        self.do_read_guest_log(&req)
            .await
            .map_err(|err| refused("ReadGuestLog", err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inside a tokio runtime: the container registry starts tasks.
    fn service() -> AgentService {
        let containers = Containers::new(crate::reaper::Reaper::new());
        AgentService::new(Arc::new(ShutdownSignal::default()), containers)
    }

    fn status_code(err: RpcError) -> ttrpc::Code {
        match ttrpc::Error::from(err) {
            ttrpc::Error::RpcStatus(status) => status.code(),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn version_reports_agent_protocol_and_kernel() {
        let response = service().do_version(&VersionRequest::new()).unwrap();
        assert_eq!(response.agent_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(response.protocol_version, PROTOCOL_VERSION);
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(response.kernel_release, release.trim());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn incompatible_caller_is_a_failed_precondition() {
        let req = VersionRequest {
            protocol_version: PROTOCOL_VERSION + 1,
            ..Default::default()
        };
        let err = service().do_version(&req).unwrap_err();
        assert!(matches!(err, RpcError::IncompatibleCaller(_)));
        let message = error_chain(&err);
        let expected = format!("version {} is not supported", PROTOCOL_VERSION + 1);
        assert!(message.contains(&expected), "{message}");
        assert_eq!(status_code(err), ttrpc::Code::FAILED_PRECONDITION);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn after_shutdown_only_shutdown_answers() {
        let service = service();
        service.do_ping(&PingRequest::new()).unwrap();
        service.do_shutdown(&ShutdownRequest::new()).unwrap();
        service.do_shutdown(&ShutdownRequest::new()).unwrap();
        let err = service.do_ping(&PingRequest::new()).unwrap_err();
        assert_eq!(status_code(err), ttrpc::Code::UNAVAILABLE);
        let err = service.do_version(&VersionRequest::new()).unwrap_err();
        assert!(matches!(err, RpcError::ShuttingDown));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn container_errors_map_to_their_codes() {
        let service = service();
        let missing = |err: RpcError| status_code(err);
        let req = StartContainerRequest {
            container_id: "nope".into(),
            ..Default::default()
        };
        assert_eq!(
            missing(service.do_start_container(&req).unwrap_err()),
            ttrpc::Code::NOT_FOUND
        );
        let req = CreateContainerRequest {
            container_id: "c1".into(),
            oci_spec:
                br#"{"ociVersion": "1.0.2", "process": {"cwd": "/", "user": {"uid": 0, "gid": 0}}}"#
                    .to_vec(),
            ..Default::default()
        };
        let err = service.do_create_container(&req).unwrap_err();
        assert!(
            error_chain(&err).contains("process.args: missing"),
            "{}",
            error_chain(&err)
        );
        assert_eq!(status_code(err), ttrpc::Code::INVALID_ARGUMENT);
        let req = CreateContainerRequest {
            container_id: "../x".into(),
            ..Default::default()
        };
        assert_eq!(
            status_code(service.do_create_container(&req).unwrap_err()),
            ttrpc::Code::INVALID_ARGUMENT
        );
        let req = SignalProcessRequest {
            container_id: "c1".into(),
            signal: 99,
            ..Default::default()
        };
        assert_eq!(
            status_code(service.do_signal_process(&req).unwrap_err()),
            ttrpc::Code::INVALID_ARGUMENT
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn shutdown_signal_wakes_a_waiter_and_later_ones() {
        let signal = Arc::new(ShutdownSignal::default());
        let waiter = tokio::spawn({
            let signal = Arc::clone(&signal);
            async move { signal.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(signal.request());
        assert!(!signal.request());
        waiter.await.unwrap();
        signal.wait().await;
    }
}
