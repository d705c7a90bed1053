//! hull-sandbox: the host side of a hull sandbox, for every front end (the
//! containerd shim, the `hull` CLI, the tests) and none in particular.
//!
//! - [`spec`]: the OCI runtime spec, parsed once and typed, and the VM's
//!   size derived from it; [`policy`]: what hull accepts in it;
//! - [`vmm_process`]: `hull-vmm` as a (jailed) child process, its typed
//!   config, sockets, log and exit; [`hybrid_vsock`] and [`agent_client`]:
//!   the way to the guest agent; [`vm::Sandbox`]: both together, watched;
//!   [`network`]: the sandbox's network namespace wired to the VM's tap;
//! - [`share`]: the shared directory (host bind mounts, virtiofsd);
//! - [`state`]: state directories and the cleanup after a crash;
//! - [`config`]: hull's config file; [`template`]: VM templates, the
//!   snapshots of a booted VM that sandboxes start from.
//!
//! Depends on `hull-protocol` and the jailer's cgroup layout only: never on
//! the VMM, the agent or containerd's shim crate.

pub mod agent_client;
pub mod config;
pub mod hybrid_vsock;
pub mod network;
pub mod policy;
pub mod share;
pub mod spec;
pub mod state;
pub mod template;
pub mod vm;
pub mod vmm_process;

pub use vm::{Sandbox, SandboxError};
