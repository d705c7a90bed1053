//! hull-protocol: the only wire types shared by the shim, the agent and the VMM.
//!
//! Must not depend on any other hull crate.

pub mod vmm_api;
