//! hull-shim: the host side of a hull sandbox.
//!
//! `sandbox` starts `hull-vmm` as a separate process, dials the guest agent
//! through the VMM's hybrid vsock socket and cleans up whatever it created.
//! The containerd shim v2 (`service`, `task`: containerd's Task API over
//! one VM per container; `config`, `rootfs`, `stdio`, `policy`) builds on it. Depends on `hull-protocol`
//! only: never on the VMM or the agent crates.

pub mod config;
pub mod error;
pub mod guest_spec;
pub mod hooks;
pub mod rootfs;
pub mod service;
pub mod stdio;
pub mod task;
