//! The agent API's handlers: thin wrappers over `do_*` methods, with the
//! mapping from [`RpcError`] to ttrpc status codes in one place.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use hull_protocol::agent_api::agent::{
    PingRequest, PingResponse, ShutdownRequest, ShutdownResponse, VersionRequest, VersionResponse,
};
use hull_protocol::agent_api::agent_ttrpc::Agent;
use hull_protocol::{check_compatible, ProtocolError, PROTOCOL_VERSION};
use thiserror::Error;
use tokio::sync::Notify;
use ttrpc::r#async::TtrpcContext;

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
}

impl RpcError {
    /// The ttrpc code a caller can act on.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            // Retrying will not help until one side is upgraded.
            RpcError::IncompatibleCaller(_) => ttrpc::Code::FAILED_PRECONDITION,
            // The guest is going away; the caller should not retry here.
            RpcError::ShuttingDown => ttrpc::Code::UNAVAILABLE,
        }
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
}

impl AgentService {
    pub fn new(shutdown: Arc<ShutdownSignal>) -> Self {
        AgentService { shutdown }
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

    /// Answers, then the server stops (see [`crate::server::serve`]):
    /// asking twice is not an error, both callers get their answer.
    pub fn do_shutdown(&self, _req: &ShutdownRequest) -> Result<ShutdownResponse, RpcError> {
        if self.shutdown.request() {
            log::info!("shutdown requested");
        }
        Ok(ShutdownResponse::new())
    }
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

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        req: ShutdownRequest,
    ) -> ttrpc::Result<ShutdownResponse> {
        self.do_shutdown(&req)
            .map_err(|err| refused("Shutdown", err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> AgentService {
        AgentService::new(Arc::new(ShutdownSignal::default()))
    }

    fn status_code(err: RpcError) -> ttrpc::Code {
        match ttrpc::Error::from(err) {
            ttrpc::Error::RpcStatus(status) => status.code(),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn version_reports_agent_protocol_and_kernel() {
        let response = service().do_version(&VersionRequest::new()).unwrap();
        assert_eq!(response.agent_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(response.protocol_version, PROTOCOL_VERSION);
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(response.kernel_release, release.trim());
    }

    #[test]
    fn incompatible_caller_is_a_failed_precondition() {
        let req = VersionRequest {
            protocol_version: PROTOCOL_VERSION + 1,
            ..Default::default()
        };
        let err = service().do_version(&req).unwrap_err();
        assert!(matches!(err, RpcError::IncompatibleCaller(_)));
        let message = error_chain(&err);
        assert!(message.contains("version 2 is not supported"), "{message}");
        assert_eq!(status_code(err), ttrpc::Code::FAILED_PRECONDITION);
    }

    #[test]
    fn after_shutdown_only_shutdown_answers() {
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
