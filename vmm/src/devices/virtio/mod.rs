//! virtio devices on the virtio-mmio transport.
//!
//! Every device implements [`VirtioDevice`] and keeps the state all devices
//! share in a [`VirtioCommon`]: features, queues, queue eventfds, activation and
//! interrupts are written once here, not per device. The transport
//! ([`mmio::MmioTransport`]) drives the guest-facing register protocol; each
//! device is also an event-manager subscriber that processes its queues on the
//! VMM's event loop thread.

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod state;
pub mod vsock;

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::logger::guest_warn;
use crate::vstate::interrupt::IrqLine;
use crate::vstate::memory::GuestMemoryMmap;

/// virtio device IDs (virtio 1.2, section 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// Feature bit every hull device offers: the modern (1.0+) interface.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Interrupt status bits of the virtio-mmio `InterruptStatus` register.
pub const INT_USED_RING: u32 = 0x1;
pub const INT_CONFIG: u32 = 0x2;

/// Event-loop tag of a device's activation eventfd; queue `i` uses tag `i`.
/// Device-specific sources use tags from [`TAG_DEVICE_BASE`] up.
pub const TAG_ACTIVATE: u32 = 0x100;
pub const TAG_DEVICE_BASE: u32 = 0x200;

#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("creating an eventfd")]
    EventFd(#[source] io::Error),
    #[error("signalling the guest")]
    Interrupt(#[source] io::Error),
    #[error("registering an event source with the event loop")]
    EventLoop(#[source] event_manager::Error),
    #[error("device activated without guest memory or interrupt")]
    NotReady,
    #[error("virtio queue {index} is not valid for the guest memory")]
    InvalidQueue { index: usize },
    #[error("restoring the device: {0}")]
    Snapshot(String),
}

/// The interrupt state a virtio-mmio device exposes, and its line to the guest.
pub struct VirtioInterrupt {
    status: AtomicU32,
    line: Arc<dyn IrqLine>,
}

impl VirtioInterrupt {
    pub fn new(line: Arc<dyn IrqLine>) -> Self {
        Self {
            status: AtomicU32::new(0),
            line,
        }
    }

    /// Tell the guest that a queue's used ring has new entries.
    pub fn signal_used_queue(&self) -> Result<(), VirtioError> {
        self.signal(INT_USED_RING)
    }

    /// Tell the guest that the device configuration changed.
    pub fn signal_config_change(&self) -> Result<(), VirtioError> {
        self.signal(INT_CONFIG)
    }

    fn signal(&self, bit: u32) -> Result<(), VirtioError> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.line.trigger().map_err(VirtioError::Interrupt)
    }

    /// The `InterruptStatus` register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The `InterruptACK` register.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The status a snapshot saved.
    pub fn restore_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }
}

/// State every virtio device shares. The transport fills it in during driver
/// negotiation; the device reads queues and memory from it once activated.
pub struct VirtioCommon {
    pub device_type: u32,
    pub avail_features: u64,
    pub acked_features: u64,
    pub queues: Vec<Queue>,
    /// One per queue. Shared: the transport writes them on the vCPU threads
    /// (QueueNotify) without taking the device lock; the device reads them
    /// on the event loop.
    pub queue_evts: Vec<Arc<EventFd>>,
    activate_evt: EventFd,
    /// Whether the event loop watches `queue_evts` (from the first activation on).
    queues_watched: bool,
    mem: Option<GuestMemoryMmap>,
    interrupt: Option<Arc<VirtioInterrupt>>,
}

impl VirtioCommon {
    /// `queue_sizes` gives the maximum size of each queue the device has.
    pub fn new(
        device_type: u32,
        avail_features: u64,
        queue_sizes: &[u16],
    ) -> Result<Self, VirtioError> {
        let queues = queue_sizes
            .iter()
            .map(|&size| Queue::new(size).map_err(|_| VirtioError::InvalidQueue { index: 0 }))
            .collect::<Result<Vec<_>, _>>()?;
        let queue_evts = queue_sizes
            .iter()
            .map(|_| {
                EventFd::new(EFD_NONBLOCK)
                    .map(Arc::new)
                    .map_err(VirtioError::EventFd)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            device_type,
            avail_features: avail_features | VIRTIO_F_VERSION_1,
            acked_features: 0,
            queues,
            queue_evts,
            activate_evt: EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?,
            queues_watched: false,
            mem: None,
            interrupt: None,
        })
    }

    pub fn has_feature(&self, bit: u64) -> bool {
        self.acked_features & (1 << bit) != 0
    }

    pub fn is_activated(&self) -> bool {
        self.mem.is_some()
    }

    /// Guest memory, once the driver has activated the device.
    pub fn mem(&self) -> Result<&GuestMemoryMmap, VirtioError> {
        self.mem.as_ref().ok_or(VirtioError::NotReady)
    }

    pub fn interrupt(&self) -> Result<&VirtioInterrupt, VirtioError> {
        self.interrupt.as_deref().ok_or(VirtioError::NotReady)
    }

    /// Everything processing queue `index` needs, borrowed at once so a
    /// device can pop chains, touch guest memory and signal the guest in one
    /// loop. Fails until the driver has activated the device (and again after
    /// a reset).
    pub fn queue_parts(
        &mut self,
        index: usize,
    ) -> Result<(&mut Queue, &GuestMemoryMmap, &VirtioInterrupt), VirtioError> {
        let (Some(mem), Some(interrupt)) = (self.mem.as_ref(), self.interrupt.as_deref()) else {
            return Err(VirtioError::NotReady);
        };
        let queue = self
            .queues
            .get_mut(index)
            .ok_or(VirtioError::InvalidQueue { index })?;
        Ok((queue, mem, interrupt))
    }

    /// Called by the transport at DRIVER_OK: records memory and interrupt and
    /// wakes the event loop, which then starts watching the queue eventfds.
    pub fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Result<(), VirtioError> {
        self.mem = Some(mem);
        self.interrupt = Some(interrupt);
        self.activate_evt.write(1).map_err(VirtioError::EventFd)
    }

    /// Called by the transport when the driver resets the device.
    pub fn reset(&mut self) {
        self.acked_features = 0;
        self.mem = None;
        self.interrupt = None;
        for q in &mut self.queues {
            q.reset();
        }
    }

    /// For `MutEventSubscriber::init`: wait for activation.
    pub fn init_events(&self, ops: &mut EventOps) -> Result<(), VirtioError> {
        ops.add(Events::with_data(
            &self.activate_evt,
            TAG_ACTIVATE,
            EventSet::IN,
        ))
        .map_err(VirtioError::EventLoop)
    }

    /// For `MutEventSubscriber::process` on [`TAG_ACTIVATE`]: start watching
    /// every queue's eventfd (tag = queue index), once. Activation stays
    /// watched: a driver may reset the device and activate it again (virtio
    /// 1.2, 2.1.1), and the device must notice each activation.
    pub fn on_activate(&mut self, ops: &mut EventOps) -> Result<(), VirtioError> {
        let _ = self.activate_evt.read();
        if self.queues_watched {
            return Ok(());
        }
        for (i, evt) in self.queue_evts.iter().enumerate() {
            ops.add(Events::with_data(evt.as_ref(), i as u32, EventSet::IN))
                .map_err(VirtioError::EventLoop)?;
        }
        self.queues_watched = true;
        Ok(())
    }
}

/// A virtio device as the transport sees it.
pub trait VirtioDevice: Send {
    fn common(&self) -> &VirtioCommon;
    fn common_mut(&mut self) -> &mut VirtioCommon;

    /// Read from the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// The device's own state beyond [`VirtioCommon`], for a snapshot.
    fn device_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Takes on what [`Self::device_state`] saved, before the restored
    /// device is activated. Returns whether the guest must be told that the
    /// configuration changed (a disk of another size in the same slot).
    fn restore_device_state(&mut self, _saved: &serde_json::Value) -> Result<bool, VirtioError> {
        Ok(false)
    }

    /// Write to the device-specific configuration space (ignored by
    /// default, with a rate-limited warning: the guest decides how often).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        guest_warn!(
            "virtio device type {}: guest wrote {} bytes of read-only config at {offset:#x}",
            self.common().device_type,
            data.len()
        );
    }
}

/// Copy the part of `config` that `offset`/`data` cover; reads past the end
/// leave `data` untouched (zero-filled by the transport).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..).and_then(|s| s.get(..data.len())) {
        data.copy_from_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device with nothing writable in its config space.
    struct ReadOnly(VirtioCommon);

    impl VirtioDevice for ReadOnly {
        fn common(&self) -> &VirtioCommon {
            &self.0
        }
        fn common_mut(&mut self) -> &mut VirtioCommon {
            &mut self.0
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            read_config_bytes(&[7; 4], offset, data);
        }
    }

    #[test]
    fn writes_to_read_only_config_are_ignored() {
        let mut dev = ReadOnly(VirtioCommon::new(TYPE_NET, 0, &[8]).unwrap());
        for offset in 0..100 {
            dev.write_config(offset % 4, &[0xff]);
        }
        let mut config = [0; 4];
        dev.read_config(0, &mut config);
        assert_eq!(config, [7; 4]);
    }
}
