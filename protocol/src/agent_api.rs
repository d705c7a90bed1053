//! The agent API: what the shim asks of `hull-agent` over virtio-vsock.
//!
//! The service is defined once, in `protos/agent.proto` (package
//! `hull.agent.v1`), and generated at build time with the `agent-api`
//! feature:
//! - [`agent`]: the request and response messages;
//! - [`agent_ttrpc`]: the async server trait [`agent_ttrpc::Agent`], its
//!   registration [`agent_ttrpc::create_agent`], and the client
//!   [`agent_ttrpc::AgentClient`].
//!
//! The constants and [`check_compatible`] are always available, so the VMM
//! and tools can name the port without building ttrpc.

use thiserror::Error;

/// The vsock port the agent listens on in the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The version of the agent API, reported by `Version` and checked on both
/// sides. Bump it when a change would be misread by an older peer.
/// 6: `IpAddress`/`IpRoute` may be IPv6, and a default route names its
/// destination (`0.0.0.0/0`, `::/0`) instead of leaving it empty.
pub const PROTOCOL_VERSION: u32 = 6;

/// The host's vsock port the agent relays a container's DNS queries to
/// (Docker's embedded DNS, see `ConfigureNetwork.forward_dns`).
pub const DNS_VSOCK_PORT: u32 = 1053;

/// The ttrpc address the agent binds in the guest (`-1` is any CID).
pub const AGENT_VSOCK_ADDRESS: &str = "vsock://-1:1024";

/// Errors in the agent protocol itself, independent of the transport.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// The peer speaks a protocol version this build cannot talk to.
    #[error("agent protocol version {peer} is not supported (this build speaks {supported})")]
    IncompatibleVersion { peer: u32, supported: u32 },
}

/// Whether a peer speaking protocol `version` can be talked to.
///
/// Version 2 added the container calls, which a version 1 peer lacks, so
/// only an exact match is compatible; when a later version stays readable by
/// older peers, widen this check rather than the callers.
pub fn check_compatible(version: u32) -> Result<(), ProtocolError> {
    if version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ProtocolError::IncompatibleVersion {
            peer: version,
            supported: PROTOCOL_VERSION,
        })
    }
}

/// Messages of `hull.agent.v1` (generated from `protos/agent.proto`).
#[cfg(feature = "agent-api")]
#[allow(warnings, clippy::all, clippy::pedantic)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent_api/agent.rs"));
}

/// The `Agent` service: async server trait, `create_agent`, `AgentClient`
/// (generated from `protos/agent.proto`).
#[cfg(feature = "agent-api")]
#[allow(warnings, clippy::all, clippy::pedantic)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_api/agent_ttrpc.rs"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_and_address_agree() {
        assert_eq!(
            AGENT_VSOCK_ADDRESS,
            format!("vsock://-1:{AGENT_VSOCK_PORT}")
        );
    }

    #[test]
    fn only_the_current_version_is_compatible() {
        assert_eq!(check_compatible(PROTOCOL_VERSION), Ok(()));
        for other in [0, PROTOCOL_VERSION + 1, u32::MAX] {
            assert_eq!(
                check_compatible(other),
                Err(ProtocolError::IncompatibleVersion {
                    peer: other,
                    supported: PROTOCOL_VERSION
                })
            );
        }
    }

    #[test]
    fn incompatible_version_names_both_sides() {
        let other = PROTOCOL_VERSION + 4;
        let message = check_compatible(other).unwrap_err().to_string();
        assert!(
            message.contains(&format!("version {other} "))
                && message.contains(&format!("speaks {PROTOCOL_VERSION}")),
            "{message}"
        );
    }
}
