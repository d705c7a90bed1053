//! One sandbox: a VMM process, its sockets and state directory, and the
//! agent inside it.

pub mod agent_client;
pub mod hybrid_vsock;
pub mod vmm_process;
