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
    /// Pause the VM and save it into the config's `snapshot_file`; the VM
    /// stays paused.
    Snapshot,
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

/// How `hull-vmm` exits: the shim and the CLI read the guest's fate from it.
pub mod exit_code {
    /// The guest shut down (reset or power-off), or the VMM was asked to stop.
    pub const OK: i32 = 0;
    /// The VMM failed (KVM, a device, I/O).
    pub const VMM_ERROR: i32 = 1;
    /// The configuration or the command line was invalid; nothing was started.
    pub const BAD_CONFIG: i32 = 2;
    /// The guest kernel panicked.
    pub const GUEST_PANIC: i32 = 3;
    /// The guest crashed: triple fault, or an instruction nobody can emulate.
    pub const GUEST_CRASH: i32 = 4;

    /// A one-line description of an exit code, for operators.
    pub fn describe(code: i32) -> &'static str {
        match code {
            OK => "guest shut down",
            VMM_ERROR => "VMM error",
            BAD_CONFIG => "invalid VMM configuration",
            GUEST_PANIC => "guest kernel panicked",
            GUEST_CRASH => "guest crashed",
            _ => "unknown exit code",
        }
    }
}
