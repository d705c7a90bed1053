//! hull-agent: PID 1 of hull's microVM guest.
//!
//! It mounts the kernel filesystems, reaps orphans, and serves the agent
//! ttrpc API (`hull.agent.v1`, see `hull-protocol`) on vsock port 1024. Run
//! as an ordinary process (not PID 1) it touches nothing on the machine and
//! serves on whatever `--listen` names, which is how the tests drive it.
//!
//! Inside the guest every syscall costs ~150 µs and a fork+exec ~200 ms, so
//! the agent starts with few syscalls, spawns no helper processes and never
//! runs a shell. As PID 1 it must never exit or panic: errors are logged and
//! the agent keeps serving, or reboots the guest (see [`power`]).
//!
//! Containers ([`container`]) are made with youki's libcontainer, on a
//! rootfs disk the VMM attached, in cgroup v2; the agent supervises their
//! processes through its reaper and buffers their stdio for the host.
//!
//! Depends only on `hull-protocol` among hull's crates; never on the VMM or
//! the shim.

pub mod clone;
pub mod config;
pub mod container;
pub mod dns;
pub mod guest_log;
#[cfg(feature = "hostile-test")]
pub mod hostile;
pub mod init;
pub mod logger;
pub mod network;
pub mod power;
pub mod reaper;
pub mod rpc;
mod rtnetlink;
pub mod server;

use std::sync::Arc;

use thiserror::Error;

pub use config::{AgentConfig, ListenAddr, Role};

/// Why the agent stopped serving.
#[derive(Debug, Error)]
pub enum AgentError {
    #[error("cannot start the orphan reaper")]
    Reaper(#[from] reaper::ReaperError),
    #[error("cannot serve the agent API")]
    Server(#[from] server::ServerError),
}

/// Serves the agent API until a `Shutdown` request (or, outside the guest,
/// SIGTERM/SIGINT) and the server has answered everything in flight.
///
/// Must run inside a tokio runtime; the agent uses a current-thread one.
pub async fn run(config: &AgentConfig, role: Role) -> Result<(), AgentError> {
    let reaper = reaper::Reaper::new();
    // Subscribes to exits before any container process is forked.
    let containers = container::Containers::new(reaper.clone());
    if role == Role::Init {
        containers.prepare_spare_netns();
    }
    reaper.start()?;
    let shutdown = Arc::new(rpc::ShutdownSignal::default());
    let service = rpc::AgentService::new(Arc::clone(&shutdown), containers);
    server::serve(&config.listen, service, &shutdown, role).await?;
    Ok(())
}
