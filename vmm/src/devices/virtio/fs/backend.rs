//! The vhost-user side of virtio-fs: the connection to virtiofsd and the
//! shadow queue it serves. Set up once, when the VMM starts: the memory
//! table is the shadow region alone, the backend's request queue (1) is
//! that region's ring, its hiprio queue (0) stays unused (see the module
//! documentation of `fs`).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::shadow::{ShadowError, ShadowQueue};
use super::{SLOTS, SLOT_BYTES};
use crate::devices::virtio::VIRTIO_F_VERSION_1;

/// The backend's queues: hiprio (0) and one request queue (1).
const BACKEND_QUEUES: u64 = 2;
/// The backend queue every request goes to.
const REQUEST_QUEUE: usize = 1;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("connecting to the vhost-user backend at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: vhost::Error,
    },
    #[error("vhost-user {step}")]
    Handshake {
        step: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("the backend does not offer {0}")]
    Missing(&'static str),
    #[error("the shadow queue")]
    Shadow(#[source] ShadowError),
    #[error("creating an eventfd")]
    EventFd(#[source] std::io::Error),
}

/// A connected, configured vhost-user-fs backend.
pub struct Backend {
    /// Kept open: the backend (virtiofsd) exits when it closes.
    frontend: Frontend,
    pub queue: ShadowQueue,
    /// Written after requests are put on the shadow queue.
    pub kick: EventFd,
    /// Written by the backend after it returns requests.
    pub call: EventFd,
}

impl Backend {
    /// Connects to the backend's socket and hands it the shadow queue.
    pub fn connect(socket: &Path) -> Result<Self, BackendError> {
        let frontend =
            Frontend::connect(socket, BACKEND_QUEUES).map_err(|source| BackendError::Connect {
                path: socket.to_path_buf(),
                source,
            })?;
        let queue = ShadowQueue::new(SLOTS, SLOT_BYTES).map_err(BackendError::Shadow)?;
        let kick = EventFd::new(EFD_NONBLOCK).map_err(BackendError::EventFd)?;
        let call = EventFd::new(EFD_NONBLOCK).map_err(BackendError::EventFd)?;
        let mut backend = Self {
            frontend,
            queue,
            kick,
            call,
        };
        backend.handshake()?;
        Ok(backend)
    }

    /// Features: VERSION_1 and PROTOCOL_FEATURES (with no protocol feature:
    /// no backend-initiated requests, no shared-memory regions, no DAX).
    fn handshake(&mut self) -> Result<(), BackendError> {
        let step = |step| move |source| BackendError::Handshake { step, source };
        let frontend = &mut self.frontend;
        frontend.set_owner().map_err(step("SET_OWNER"))?;
        let offered = frontend.get_features().map_err(step("GET_FEATURES"))?;
        let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        for (bit, name) in [
            (VIRTIO_F_VERSION_1, "VIRTIO_F_VERSION_1"),
            (protocol, "VHOST_USER_F_PROTOCOL_FEATURES"),
        ] {
            if offered & bit == 0 {
                return Err(BackendError::Missing(name));
            }
        }
        frontend
            .set_features(VIRTIO_F_VERSION_1 | protocol)
            .map_err(step("SET_FEATURES"))?;
        frontend
            .set_protocol_features(VhostUserProtocolFeatures::empty())
            .map_err(step("SET_PROTOCOL_FEATURES"))?;
        let (file, size) = self.queue.region();
        let base = self.queue.host_address();
        frontend
            .set_mem_table(&[VhostUserMemoryRegionInfo {
                guest_phys_addr: 0,
                memory_size: size,
                userspace_addr: base,
                mmap_offset: 0,
                mmap_handle: file.as_raw_fd(),
            }])
            .map_err(step("SET_MEM_TABLE"))?;
        let num = self.queue.size();
        let (desc, avail, used) = self.queue.ring_addresses();
        frontend
            .set_vring_num(REQUEST_QUEUE, num)
            .map_err(step("SET_VRING_NUM"))?;
        frontend
            .set_vring_addr(
                REQUEST_QUEUE,
                &VringConfigData {
                    queue_max_size: num,
                    queue_size: num,
                    flags: 0,
                    desc_table_addr: base + desc,
                    used_ring_addr: base + used,
                    avail_ring_addr: base + avail,
                    log_addr: None,
                },
            )
            .map_err(step("SET_VRING_ADDR"))?;
        frontend
            .set_vring_base(REQUEST_QUEUE, 0)
            .map_err(step("SET_VRING_BASE"))?;
        frontend
            .set_vring_call(REQUEST_QUEUE, &self.call)
            .map_err(step("SET_VRING_CALL"))?;
        frontend
            .set_vring_kick(REQUEST_QUEUE, &self.kick)
            .map_err(step("SET_VRING_KICK"))?;
        frontend
            .set_vring_enable(REQUEST_QUEUE, true)
            .map_err(step("SET_VRING_ENABLE"))?;
        // SET_VRING_ENABLE has no answer (no REPLY_ACK negotiated), and the
        // backend's queue thread drops a kick it reads while the ring is
        // still disabled: a kick right after the handshake (a restored VM
        // with requests in flight, a guest that is quick) could be lost
        // and the device would hang. The backend handles its messages in
        // order, so the answer to a GET_FEATURES means the ring is enabled.
        frontend
            .get_features()
            .map_err(step("GET_FEATURES (after SET_VRING_ENABLE)"))?;
        Ok(())
    }

    /// The connection, for the event loop to notice the backend hang up.
    pub fn socket(&self) -> &Frontend {
        &self.frontend
    }
}

#[cfg(test)]
mod tests;
