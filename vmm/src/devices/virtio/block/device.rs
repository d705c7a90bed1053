//! The virtio-blk device: a raw image file, one request queue.

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

use super::disk::{Disk, DiskError};
use super::request::{Rejected, Request, RequestKind};
use super::BlockConfig;
use crate::devices::virtio::{
    read_config_bytes, VirtioCommon, VirtioDevice, VirtioError, TAG_ACTIVATE, TYPE_BLOCK,
};
use crate::logger::{guest_debug, guest_error, guest_warn, ErrorChain};
use crate::vstate::memory::GuestMemoryMmap;

/// Descriptors in the request queue.
pub const QUEUE_SIZE: u16 = 64;
/// Requests served per event-loop turn: one full ring.
const CHAINS_PER_TURN: usize = QUEUE_SIZE as usize;
const REQUEST_QUEUE: usize = 0;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("opening the disk image")]
    Disk(#[source] DiskError),
    #[error("virtio plumbing")]
    Virtio(#[source] VirtioError),
    #[error("accessing the request queue")]
    Queue(#[source] virtio_queue::Error),
}

/// A virtio-blk device. Share it as `Arc<Mutex<Block>>` between its
/// [`MmioTransport`](crate::devices::virtio::mmio::MmioTransport) and the
/// event loop.
pub struct Block {
    common: VirtioCommon,
    disk: Disk,
    config_space: [u8; 16],
    /// Reused for the descriptors of each chain.
    descs: Vec<Descriptor>,
    /// Chains served per event-loop turn ([`CHAINS_PER_TURN`]; tests lower it).
    chains_per_turn: usize,
}

impl Block {
    pub fn new(config: &BlockConfig) -> Result<Self, BlockError> {
        let disk = Disk::open(config).map_err(BlockError::Disk)?;
        let mut features =
            1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_SEG_MAX | 1 << VIRTIO_RING_F_EVENT_IDX;
        if config.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        let common =
            VirtioCommon::new(TYPE_BLOCK, features, &[QUEUE_SIZE]).map_err(BlockError::Virtio)?;

        // struct virtio_blk_config: capacity, size_max (not offered), seg_max.
        // Header and status take two descriptors of every chain.
        let seg_max = u32::from(QUEUE_SIZE) - 2;
        let mut config_space = [0u8; 16];
        config_space[..8].copy_from_slice(&disk.sectors().to_le_bytes());
        config_space[12..].copy_from_slice(&seg_max.to_le_bytes());

        Ok(Self {
            common,
            disk,
            config_space,
            descs: Vec::new(),
            chains_per_turn: CHAINS_PER_TURN,
        })
    }

    /// Disk size in 512-byte sectors, as the guest sees it.
    pub fn capacity(&self) -> u64 {
        self.disk.sectors()
    }

    /// Run the requests the driver has made available, at most
    /// `chains_per_turn` ([`CHAINS_PER_TURN`]), then interrupt the guest if it asked for it.
    /// With more waiting, the queue's eventfd is written again so the event
    /// loop comes back after serving everything else: a guest that keeps the
    /// ring full cannot hold the loop (vsock, the control socket, SIGTERM).
    /// Does nothing until the device is activated.
    pub fn process_queue(&mut self) -> Result<(), BlockError> {
        let (queue, mem, interrupt) = match self.common.queue_parts(REQUEST_QUEUE) {
            Ok(parts) => parts,
            Err(VirtioError::NotReady) => return Ok(()),
            Err(e) => return Err(BlockError::Virtio(e)),
        };
        if !queue.ready() {
            return Ok(());
        }
        let (mut used, mut served) = (false, 0);
        let more = 'turn: loop {
            queue.disable_notification(mem).map_err(BlockError::Queue)?;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                self.descs.clear();
                self.descs.extend(chain);
                let len = handle(&mut self.disk, mem, &self.descs);
                // Fails only for a head index beyond the queue, which the
                // guest put in its own avail ring; nothing to give back then.
                if let Err(e) = queue.add_used(mem, head, len) {
                    guest_warn!("virtio-blk: returning chain {head}: {e}");
                } else {
                    used = true;
                }
                served += 1;
                if served >= self.chains_per_turn {
                    break 'turn true;
                }
            }
            // Re-check after re-enabling notifications, so a request made
            // available in between is not left waiting for a kick.
            if !queue.enable_notification(mem).map_err(BlockError::Queue)? {
                break false;
            }
        };
        if used && queue.needs_notification(mem).map_err(BlockError::Queue)? {
            interrupt.signal_used_queue().map_err(BlockError::Virtio)?;
        }
        if more {
            self.common.queue_evts[REQUEST_QUEUE]
                .write(1)
                .map_err(|e| BlockError::Virtio(VirtioError::EventFd(e)))?;
        }
        Ok(())
    }
}

/// Parse and run one chain, write its status byte; returns the used length.
fn handle(disk: &mut Disk, mem: &GuestMemoryMmap, descs: &[Descriptor]) -> u32 {
    let request = match Request::parse(mem, descs, disk.sectors()) {
        Ok(request) => request,
        Err(Rejected { error, status }) => {
            guest_warn!("virtio-blk: malformed request: {}", ErrorChain(&error));
            return match status {
                Some(addr) => complete(mem, addr, VIRTIO_BLK_S_IOERR, 0),
                None => 0,
            };
        }
    };
    let result = match &request.kind {
        RequestKind::In { sector, data } => disk.read(mem, *sector, data),
        RequestKind::Out { sector, data } => disk.write(mem, *sector, data).map(|()| 0),
        RequestKind::Flush => disk.flush().map(|()| 0),
        RequestKind::GetId { data } => disk.write_id(mem, data),
        RequestKind::Unsupported { request_type } => {
            guest_debug!("virtio-blk: unsupported request type {request_type}");
            return complete(mem, request.status, VIRTIO_BLK_S_UNSUPP, 0);
        }
    };
    match result {
        Ok(written) => complete(mem, request.status, VIRTIO_BLK_S_OK, written),
        Err(e) => {
            guest_warn!("virtio-blk: request failed: {}", ErrorChain(&e));
            complete(mem, request.status, VIRTIO_BLK_S_IOERR, 0)
        }
    }
}

/// Write the status byte; the used length counts the data the device wrote
/// plus the status. After a failure only the status is counted, even if some
/// data was written (the length is a lower bound, virtio 1.2, 2.7.8.2).
fn complete(mem: &GuestMemoryMmap, status_addr: GuestAddress, status: u32, written: u32) -> u32 {
    // The status address was checked by Request::parse.
    if let Err(e) = mem.write_obj(status as u8, status_addr) {
        guest_error!("virtio-blk: writing the status byte at {status_addr:?}: {e}");
        return 0;
    }
    written.saturating_add(1)
}

impl VirtioDevice for Block {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn device_state(&self) -> serde_json::Value {
        serde_json::json!({
            "sectors": self.capacity(),
            "read_only": self.common.avail_features & (1 << VIRTIO_BLK_F_RO) != 0,
        })
    }

    /// A restored slot may hold another disk: the same kind (read-only or
    /// not), any size; the guest is told of a new size.
    fn restore_device_state(&mut self, saved: &serde_json::Value) -> Result<bool, VirtioError> {
        let read_only = self.common.avail_features & (1 << VIRTIO_BLK_F_RO) != 0;
        if saved["read_only"].as_bool() != Some(read_only) {
            return Err(VirtioError::Snapshot(format!(
                "the disk in this slot was saved {}, the new one is {}",
                if read_only { "read-write" } else { "read-only" },
                if read_only { "read-only" } else { "read-write" },
            )));
        }
        Ok(saved["sectors"].as_u64() != Some(self.capacity()))
    }
}

impl MutEventSubscriber for Block {
    #[allow(
        clippy::disallowed_macros,
        reason = "runs once, when the builder adds the device to the event loop"
    )]
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.common.init_events(ops) {
            log::error!("virtio-blk: {}", ErrorChain(&e));
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TAG_ACTIVATE => {
                if let Err(e) = self.common.on_activate(ops) {
                    guest_error!("virtio-blk: activating: {}", ErrorChain(&e));
                }
            }
            tag if tag as usize == REQUEST_QUEUE => {
                // Nonblocking; an empty counter just means a spurious wakeup.
                let _ = self.common.queue_evts[REQUEST_QUEUE].read();
                if let Err(e) = self.process_queue() {
                    guest_error!(
                        "virtio-blk: processing the request queue: {}",
                        ErrorChain(&e)
                    );
                }
            }
            tag => guest_warn!("virtio-blk: event with unknown tag {tag:#x}"),
        }
    }
}

#[cfg(test)]
mod tests;
