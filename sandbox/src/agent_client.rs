//! Talking to `hull-agent` in the guest: dial it through hybrid vsock,
//! check the protocol version, and wrap the generated ttrpc client.

use std::path::Path;
use std::time::{Duration, Instant};

use hull_protocol::agent_api::agent::{
    PingRequest, ShutdownRequest, VersionRequest, VersionResponse,
};
use hull_protocol::agent_api::agent_ttrpc::AgentClient as RawClient;
use hull_protocol::{check_compatible, ProtocolError, AGENT_VSOCK_PORT, PROTOCOL_VERSION};
use ttrpc::context;

use super::hybrid_vsock::{self, HybridVsockError};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("reaching the agent")]
    Dial(#[source] HybridVsockError),
    #[error("the agent did not answer within {budget:?}")]
    NotReady {
        budget: Duration,
        /// What the last attempt met.
        #[source]
        last: Box<AgentError>,
    },
    #[error("agent call {call} failed")]
    Rpc {
        call: &'static str,
        #[source]
        source: ttrpc::Error,
    },
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// A connected, version-checked agent.
pub struct Agent {
    client: RawClient,
    version: VersionResponse,
    rpc_timeout: Duration,
}

impl Agent {
    /// Connect once: dial, then ask for the version.
    pub async fn connect(vsock_uds: &Path, rpc_timeout: Duration) -> Result<Self, AgentError> {
        let stream = hybrid_vsock::connect(vsock_uds, AGENT_VSOCK_PORT, rpc_timeout)
            .await
            .map_err(AgentError::Dial)?;
        let client = RawClient::new(ttrpc::r#async::Client::new(stream.into()));
        let request = VersionRequest {
            protocol_version: PROTOCOL_VERSION,
            ..Default::default()
        };
        let version = client
            .version(
                context::with_timeout(rpc_timeout.as_nanos() as i64),
                &request,
            )
            .await
            .map_err(|source| AgentError::Rpc {
                call: "Version",
                source,
            })?;
        check_compatible(version.protocol_version)?;
        Ok(Self {
            client,
            version,
            rpc_timeout,
        })
    }

    /// Connect, retrying while the guest boots (the vsock socket is not
    /// there yet, or nothing listens on the agent port yet), until `deadline`
    /// or until `gave_up()` says there is no point (the VMM exited). No
    /// attempt outlives the deadline: each gets what is left of it, up to
    /// `rpc_timeout`.
    pub async fn wait_ready(
        vsock_uds: &Path,
        deadline: Instant,
        rpc_timeout: Duration,
        mut gave_up: impl FnMut() -> bool,
    ) -> Result<Self, AgentError> {
        const SHORTEST_ATTEMPT: Duration = Duration::from_millis(100);
        // In whole seconds, as boot budgets are configured.
        let budget = Duration::from_secs(
            deadline
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
                .ceil() as u64,
        );
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = rpc_timeout.min(left).max(SHORTEST_ATTEMPT);
            let last = match Self::connect(vsock_uds, attempt).await {
                Ok(agent) => {
                    // Later calls get the full per-call limit.
                    return Ok(Self {
                        rpc_timeout,
                        ..agent
                    });
                }
                Err(e @ AgentError::Protocol(_)) => return Err(e),
                Err(e) => e,
            };
            if gave_up() || Instant::now() >= deadline {
                return Err(AgentError::NotReady {
                    budget,
                    last: Box::new(last),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The generated client, for the container calls (it is cheap to
    /// clone: clones share the connection).
    pub fn client(&self) -> &RawClient {
        &self.client
    }

    /// What the agent reported when it was connected.
    pub fn version(&self) -> &VersionResponse {
        &self.version
    }

    fn ctx(&self) -> context::Context {
        context::with_timeout(self.rpc_timeout.as_nanos() as i64)
    }

    pub async fn ping(&self) -> Result<(), AgentError> {
        self.client
            .ping(self.ctx(), &PingRequest::default())
            .await
            .map_err(|source| AgentError::Rpc {
                call: "Ping",
                source,
            })?;
        Ok(())
    }

    /// Ask the agent to power the guest off; the VMM then exits.
    pub async fn shutdown(&self) -> Result<(), AgentError> {
        self.client
            .shutdown(self.ctx(), &ShutdownRequest::default())
            .await
            .map_err(|source| AgentError::Rpc {
                call: "Shutdown",
                source,
            })?;
        Ok(())
    }
}
