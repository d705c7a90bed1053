//! The VMM control API: one JSON request per line on the VMM's control socket,
//! one JSON response per line back.

use serde::{Deserialize, Serialize};

/// A request to the VMM's control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum VmmRequest {
    /// Report the VM's state.
    Status,
    /// Stop running the vCPUs (devices keep their state).
    Pause,
    /// Run paused vCPUs again.
    Resume,
    /// Stop the VM and exit the VMM.
    Shutdown,
}

/// The state of a VM as the control socket reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Running,
    Paused,
    Stopping,
}

/// The VMM's answer to one [`VmmRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum VmmResponse {
    Ok { state: VmState },
    Error { message: String },
}
