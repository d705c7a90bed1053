//! hull-protocol: the only wire types shared by the shim, the agent and the VMM.
//!
//! - [`agent_api`]: the agent's ttrpc API (`hull.agent.v1`), generated from
//!   `protos/agent.proto` with the `agent-api` feature, plus its constants;
//! - [`vmm_api`]: the VMM's JSON control API;
//! - [`vmm_config`]: the VM configuration the VMM starts from;
//! - [`digest`]: the SHA-256 content digest inputs are named by (snapshot
//!   headers, template keys);
//! - [`error_text`]: the one-line form of an error and its causes, as each
//!   process writes it into logs, ttrpc statuses and stderr.
//!
//! Must not depend on any other hull crate. Without the `agent-api` feature
//! it must not pull in ttrpc, protobuf or tokio (the VMM uses it that way).

pub mod agent_api;
pub mod digest;
pub mod error_text;
pub mod vmm_api;
pub mod vmm_config;

pub use error_text::{error_chain, ErrorChain};

pub use agent_api::{
    check_compatible, ProtocolError, AGENT_VSOCK_ADDRESS, AGENT_VSOCK_PORT, PROTOCOL_VERSION,
};

/// The ttrpc and protobuf crates the generated code was built against, for
/// callers that must name their types (`ttrpc::context`, `ttrpc::Code`).
#[cfg(feature = "agent-api")]
pub use {protobuf, ttrpc};
