//! The VM behind a task: its `hull-vmm` process (jailed), the connected
//! agent, and a watcher that notices when the VMM ends. One sandbox holds
//! one container today; the container calls name their container, so a
//! pod's several containers can share one sandbox later.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hull_protocol::agent_api::agent_ttrpc::AgentClient;
use tokio::sync::{watch, Mutex};

use crate::agent_client::{Agent, AgentError};
use crate::vmm_process::{describe_exit, VmmProcess, VmmProcessError, VmmSpec};

/// How long one agent call that answers at once may take.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the guest gets to power off before the VMM is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("starting the VM")]
    Vmm(#[from] VmmProcessError),
    #[error("the guest agent")]
    Agent(#[from] AgentError),
    #[error("the VM stopped ({0})")]
    VmGone(String),
}

pub struct Sandbox {
    vmm: Arc<Mutex<VmmProcess>>,
    agent: Agent,
    /// `Some(how it ended)` once the VMM has exited.
    stopped: watch::Receiver<Option<String>>,
}

impl Sandbox {
    /// Starts the VMM and waits for the agent.
    pub async fn start(
        spec: &VmmSpec,
        state_dir: &Path,
        boot_timeout: Duration,
    ) -> Result<Self, SandboxError> {
        let mut vmm = VmmProcess::spawn(spec, state_dir)?;
        let agent = wait_for_agent(&mut vmm, boot_timeout).await?;
        let vmm = Arc::new(Mutex::new(vmm));
        let (tx, stopped) = watch::channel(None);
        tokio::spawn(watch_vmm(vmm.clone(), tx));
        Ok(Self {
            vmm,
            agent,
            stopped,
        })
    }

    /// The agent's generated client (connection shared by clones).
    pub fn agent(&self) -> Arc<AgentClient> {
        Arc::new(self.agent.client().clone())
    }

    /// How the VMM ended, if it has.
    pub fn stopped(&self) -> Option<String> {
        self.stopped.borrow().clone()
    }

    /// Resolves when the VMM has ended, with how.
    pub async fn wait_stopped(&self) -> String {
        let mut rx = self.stopped.clone();
        loop {
            if let Some(how) = rx.borrow().clone() {
                return how;
            }
            if rx.changed().await.is_err() {
                return "the VMM watcher ended".into();
            }
        }
    }

    /// The VMM's (or its jailer's) pid on the host.
    pub async fn pid(&self) -> u32 {
        self.vmm.lock().await.child_pid().unwrap_or(0)
    }

    /// Powers the guest off through the agent, then stops the VMM (killing
    /// it after a grace period).
    pub async fn shutdown(&self) {
        if self.stopped().is_none() {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.agent.shutdown()).await;
        }
        let mut vmm = self.vmm.lock().await;
        let _ = vmm.stop(SHUTDOWN_GRACE).await;
    }

    pub async fn state_dir(&self) -> PathBuf {
        self.vmm.lock().await.state_dir().to_path_buf()
    }

    /// The host end of the guest's vsock (guest-initiated connections to
    /// port P arrive at `<this>_P`).
    pub async fn vsock_path(&self) -> PathBuf {
        self.vmm.lock().await.vsock_path()
    }
}

/// Waits up to `boot_timeout` for the agent of a just-started VMM; on
/// failure the VMM is stopped, and the error says whether it had ended.
pub async fn wait_for_agent(
    vmm: &mut VmmProcess,
    boot_timeout: Duration,
) -> Result<Agent, SandboxError> {
    let deadline = Instant::now() + boot_timeout;
    let vsock = vmm.vsock_path();
    let agent = Agent::wait_ready(&vsock, deadline, RPC_TIMEOUT, || vmm.try_exit().is_some()).await;
    match agent {
        Ok(agent) => Ok(agent),
        Err(e) => {
            let how = vmm.try_exit().map(describe_exit);
            let log = vmm.log_tail(5).join(" | ");
            let _ = vmm.stop(Duration::from_secs(2)).await;
            Err(match how {
                Some(how) => {
                    SandboxError::VmGone(format!("{how} before the agent answered; VMM log: {log}"))
                }
                None => SandboxError::Agent(e),
            })
        }
    }
}

async fn watch_vmm(vmm: Arc<Mutex<VmmProcess>>, tx: watch::Sender<Option<String>>) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut vmm = vmm.lock().await;
        if let Some(status) = vmm.try_exit() {
            let how = describe_exit(status);
            let tail = vmm.log_tail(3).join(" | ");
            log::info!("VMM ended: {how}; {tail}");
            let _ = tx.send(Some(how));
            return;
        }
    }
}
