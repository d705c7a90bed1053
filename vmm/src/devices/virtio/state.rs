//! What a virtio device keeps in a snapshot: the transport's registers, the
//! negotiated features, every queue's addresses and indices, and the
//! device's own part ([`super::VirtioDevice::device_state`]).

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

use super::{VirtioCommon, VirtioError};

/// One queue's configuration and position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
}

impl QueueSnapshot {
    pub fn of(queue: &Queue) -> Self {
        let s = queue.state();
        QueueSnapshot {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx: s.event_idx_enabled,
        }
    }

    /// The queue again; refused (as the driver's values would be) when the
    /// sizes or addresses are not valid for a queue.
    pub fn to_queue(&self, index: usize) -> Result<Queue, VirtioError> {
        Queue::try_from(QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
        .map_err(|_| VirtioError::InvalidQueue { index })
    }
}

/// A virtio-mmio device in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub queue_sel: u32,
    pub interrupt_status: u32,
    pub acked_features: u64,
    pub queues: Vec<QueueSnapshot>,
    /// The device's own part.
    pub device: serde_json::Value,
}

impl VirtioCommon {
    /// Negotiated features and queues from a snapshot, before activation.
    pub fn restore(&mut self, acked: u64, queues: &[QueueSnapshot]) -> Result<(), VirtioError> {
        if queues.len() != self.queues.len() {
            return Err(VirtioError::Snapshot(format!(
                "{} queues saved, the device has {}",
                queues.len(),
                self.queues.len()
            )));
        }
        if acked & !self.avail_features != 0 {
            return Err(VirtioError::Snapshot(format!(
                "features {:#x} were never offered",
                acked & !self.avail_features
            )));
        }
        let restored = queues
            .iter()
            .enumerate()
            .map(|(i, q)| q.to_queue(i))
            .collect::<Result<Vec<_>, _>>()?;
        self.acked_features = acked;
        self.queues = restored;
        Ok(())
    }
}
