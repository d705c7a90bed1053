//! `hull boot`: start a microVM with the guest kernel and the agent, reach
//! the agent over hybrid vsock, report what answered and how long it took,
//! and shut the VM down again. The first thing a new user runs.

use std::path::PathBuf;
use std::time::Duration;

use hull_sandbox::agent_client::{Agent, AgentError};
use hull_sandbox::vmm_process::{describe_exit, VmmProcess, VmmProcessError, VmmSpec};
use serde::Serialize;

/// How long one agent call may take (the guest kernel is emulated here).
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the guest gets to power off after Shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Vmm(#[from] VmmProcessError),
    #[error("the VMM exited before the agent answered: {status}{}", log_lines(.log))]
    VmmExited { status: String, log: Vec<String> },
    #[error("the agent did not become ready{}", log_lines(.log))]
    Agent {
        #[source]
        source: AgentError,
        log: Vec<String>,
    },
    #[error("the guest did not shut down cleanly: {status}{}", log_lines(.log))]
    Shutdown { status: String, log: Vec<String> },
}

fn log_lines(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("; VMM log and guest console:\n  {}", lines.join("\n  "))
    }
}

/// What to show when something went wrong: the VMM's last log lines, then
/// the guest console's (when it was kept).
fn diagnostics(vmm: &VmmProcess) -> Vec<String> {
    let mut lines = vmm.log_tail(15);
    lines.extend(
        vmm.console_tail(20)
            .into_iter()
            .map(|l| format!("console: {l}")),
    );
    lines
}

/// What `hull boot --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct BootReport {
    /// VMM process start to the agent answering Version, in milliseconds.
    pub boot_ms: u64,
    pub agent_version: String,
    pub protocol_version: u32,
    pub guest_kernel: String,
    /// VMM process start to the VMM exiting after Shutdown.
    pub total_ms: u64,
}

/// Boot once and shut down. `deadline` bounds boot to agent-ready.
pub async fn boot_once(
    spec: &VmmSpec,
    state_dir: PathBuf,
    boot_timeout: Duration,
) -> Result<BootReport, BootError> {
    boot_once_with(spec, state_dir, boot_timeout, |_| {}).await
}

/// [`boot_once`], calling `while_up` once the agent is ready and before the
/// VM is shut down (e.g. to measure the running VMM: `hull bench boot`).
pub async fn boot_once_with(
    spec: &VmmSpec,
    state_dir: PathBuf,
    boot_timeout: Duration,
    while_up: impl FnOnce(&VmmProcess),
) -> Result<BootReport, BootError> {
    let mut vmm = VmmProcess::spawn(spec, &state_dir)?;
    let uds = vmm.vsock_path();
    let deadline = vmm.started() + boot_timeout;
    let agent = {
        let vmm_ref = &mut vmm;
        let mut exited = None;
        let result = Agent::wait_ready(&uds, deadline, RPC_TIMEOUT, || {
            exited = vmm_ref.try_exit();
            exited.is_some()
        })
        .await;
        match (result, exited) {
            (Ok(agent), _) => agent,
            (Err(_), Some(status)) => {
                return Err(BootError::VmmExited {
                    status: describe_exit(status),
                    log: diagnostics(&vmm),
                })
            }
            (Err(source), None) => {
                return Err(BootError::Agent {
                    source,
                    log: diagnostics(&vmm),
                })
            }
        }
    };
    let boot_ms = vmm.started().elapsed().as_millis() as u64;
    let version = agent.version().clone();
    while_up(&vmm);
    // The reply may race the guest's power-off; the VMM's exit code decides.
    let _ = agent.shutdown().await;
    drop(agent);
    let status = match vmm.wait(SHUTDOWN_GRACE).await? {
        Some(status) => status,
        None => vmm.stop(Duration::from_secs(2)).await?,
    };
    if !status.success() {
        return Err(BootError::Shutdown {
            status: describe_exit(status),
            log: diagnostics(&vmm),
        });
    }
    Ok(BootReport {
        boot_ms,
        agent_version: version.agent_version,
        protocol_version: version.protocol_version,
        guest_kernel: version.kernel_release,
        total_ms: vmm.started().elapsed().as_millis() as u64,
    })
}
