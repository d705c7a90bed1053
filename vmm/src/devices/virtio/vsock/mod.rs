//! virtio-vsock with Firecracker's "hybrid vsock" host side.
//!
//! The guest sees a standard virtio-vsock device (virtio 1.2, section 5.10).
//! The host sees Unix sockets:
//! - host-initiated: connect to `uds_path`, write `CONNECT <port>\n`, read
//!   `OK <local port>\n` once the guest accepted, then stream bytes. If the
//!   guest refuses or does not answer, the VMM closes the stream.
//! - guest-initiated: a guest connection to CID 2, port P is forwarded to the
//!   Unix socket `<uds_path>_P`.
//!
//! [`device::Vsock`] is the virtio device and event subscriber;
//! [`muxer::Muxer`] owns the Unix sockets and the connection table;
//! [`connection::Connection`] is one stream's state machine;
//! [`packet`] reads and writes the wire format from descriptor chains.

pub mod connection;
pub mod device;
pub mod muxer;
pub mod packet;

pub use device::Vsock;
pub use muxer::MuxerOptions;

use super::VirtioError;

pub use hull_protocol::vmm_config::VsockConfig;

/// The guest CID is one a guest may have.
pub fn validate(config: &VsockConfig) -> Result<(), VsockError> {
    if config.guest_cid < 3 || config.guest_cid == u32::MAX {
        return Err(VsockError::InvalidCid {
            cid: config.guest_cid,
        });
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error(
        "guest CID {cid} is reserved (it must be at least 3 and not {})",
        u32::MAX
    )]
    InvalidCid { cid: u32 },
    #[error("setting up the hybrid vsock host side")]
    Muxer(#[source] muxer::MuxerError),
    #[error("setting up the virtio device")]
    Virtio(#[source] VirtioError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rejects_reserved_cids_and_unknown_fields() {
        let ok: VsockConfig =
            serde_json::from_str(r#"{"guest_cid": 3, "uds_path": "/run/v.sock"}"#).unwrap();
        assert!(validate(&ok).is_ok());
        for cid in [0, 1, 2, u32::MAX] {
            let c = VsockConfig {
                guest_cid: cid,
                ..ok.clone()
            };
            assert!(matches!(validate(&c), Err(VsockError::InvalidCid { .. })));
        }
        assert!(serde_json::from_str::<VsockConfig>(
            r#"{"guest_cid": 3, "uds_path": "/v", "cid": 4}"#
        )
        .is_err());
    }
}
