//! virtio-mmio transport (virtio 1.2, section 4.2), version 2 ("modern") only.
//!
//! [`MmioTransport`] is the [`BusDevice`] the vCPU threads call on MMIO exits
//! in a device's window. It owns the driver-facing state machine (status,
//! feature and queue selectors) and writes what the driver negotiates into the
//! device's [`VirtioCommon`]; it never processes queues itself. Queue
//! notifications go straight to the queue eventfds (shared with the device, so
//! a notify never waits for the device lock), and the device picks them up on
//! the event loop.
//!
//! Every value here comes from the guest: nothing panics on it. Anything the
//! spec does not allow is logged (rate-limited) and ignored.

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::state::{QueueSnapshot, TransportState};
use super::{VirtioDevice, VirtioError, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;
use crate::logger::{guest_debug, guest_error, guest_warn};
use crate::vstate::memory::GuestMemoryMmap;

/// "virt" in little endian, at offset 0 of every virtio-mmio device.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern virtio-mmio interface; version 1 is the legacy one.
pub const VERSION: u32 = 2;
/// "HULL" in little endian. Informational only: drivers match on DeviceID.
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"HULL");
/// Size of the MMIO window one device needs (registers plus config space).
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

const CONFIG_SPACE_START: u64 = VIRTIO_MMIO_CONFIG as u64;

const ACKNOWLEDGE: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
const FAILED: u32 = VIRTIO_CONFIG_S_FAILED;

/// The guest-facing side of one virtio device.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    /// The device's queue eventfds, indexed like the queues.
    notify_evts: Vec<Arc<EventFd>>,
    device_type: u32,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
}

impl MmioTransport {
    /// `mem` is handed to the device when the driver activates it;
    /// `interrupt` is the device's interrupt line and status register.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Self {
        let (device_type, notify_evts) = {
            let dev = device.lock().expect("virtio device lock poisoned");
            let common = dev.common();
            (common.device_type, common.queue_evts.clone())
        };
        Self {
            device,
            mem,
            interrupt,
            notify_evts,
            device_type,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
        }
    }

    /// The device behind this transport.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// The transport and its device, for a snapshot (the vCPUs are paused).
    pub fn save_state(&self) -> TransportState {
        let dev = self.locked_device();
        let common = dev.common();
        TransportState {
            device_type: self.device_type,
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt.status(),
            acked_features: common.acked_features,
            queues: common.queues.iter().map(QueueSnapshot::of).collect(),
            device: dev.device_state(),
        }
    }

    /// Takes on a saved transport and device, in a VM restored from a
    /// snapshot: a device the driver had activated is activated again, its
    /// queues are kicked once (a notification may have been lost at the
    /// pause), and a changed configuration is signalled.
    pub fn restore_state(&mut self, saved: &TransportState) -> Result<(), VirtioError> {
        if saved.device_type != self.device_type {
            return Err(VirtioError::Snapshot(format!(
                "a device of type {} was saved in the slot of a type {} device",
                saved.device_type, self.device_type
            )));
        }
        let config_changed = {
            let mut dev = self.locked_device();
            dev.common_mut()
                .restore(saved.acked_features, &saved.queues)?;
            dev.restore_device_state(&saved.device)?
        };
        self.status = saved.status;
        self.device_features_sel = saved.device_features_sel;
        self.driver_features_sel = saved.driver_features_sel;
        self.queue_sel = saved.queue_sel;
        self.interrupt.restore_status(saved.interrupt_status);
        if !self.status_is(DRIVER_OK, FAILED | NEEDS_RESET) {
            return Ok(());
        }
        self.activate()?;
        for evt in &self.notify_evts {
            evt.write(1).map_err(VirtioError::EventFd)?;
        }
        if config_changed {
            self.interrupt.signal_config_change()?;
        }
        Ok(())
    }

    fn locked_device(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().expect("virtio device lock poisoned")
    }

    /// True when every bit of `set` and no bit of `clear` is in the status.
    fn status_is(&self, set: u32, clear: u32) -> bool {
        self.status & (set | clear) == set
    }

    fn read_register(&mut self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC_VALUE,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device_type,
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => {
                let features = self.locked_device().common().avail_features;
                feature_page(features, self.device_features_sel)
            }
            VIRTIO_MMIO_QUEUE_NUM_MAX => self.with_queue(|q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => self.with_queue(|q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            // No shared memory regions: their length reads as -1 (4.2.2.1).
            VIRTIO_MMIO_SHM_LEN_LOW
            | VIRTIO_MMIO_SHM_LEN_HIGH
            | VIRTIO_MMIO_SHM_BASE_LOW
            | VIRTIO_MMIO_SHM_BASE_HIGH => u32::MAX,
            // hull devices never change their configuration under the driver.
            VIRTIO_MMIO_CONFIG_GENERATION => 0,
            _ => {
                guest_warn!(
                    "virtio-mmio (type {}): read of unknown or write-only register {offset:#x}",
                    self.device_type
                );
                0
            }
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => self.ack_features(value),
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM => match u16::try_from(value) {
                Ok(size) => self.update_queue(|q| q.set_size(size)),
                Err(_) => self.warn_value("QueueNum", value),
            },
            VIRTIO_MMIO_QUEUE_READY => match value {
                0 | 1 => self.update_queue(|q| q.set_ready(value == 1)),
                _ => self.warn_value("QueueReady", value),
            },
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(value),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.set_status(value),
            VIRTIO_MMIO_QUEUE_DESC_LOW => {
                self.update_queue(|q| q.set_desc_table_address(Some(value), None))
            }
            VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                self.update_queue(|q| q.set_desc_table_address(None, Some(value)))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => {
                self.update_queue(|q| q.set_avail_ring_address(Some(value), None))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                self.update_queue(|q| q.set_avail_ring_address(None, Some(value)))
            }
            VIRTIO_MMIO_QUEUE_USED_LOW => {
                self.update_queue(|q| q.set_used_ring_address(Some(value), None))
            }
            VIRTIO_MMIO_QUEUE_USED_HIGH => {
                self.update_queue(|q| q.set_used_ring_address(None, Some(value)))
            }
            VIRTIO_MMIO_SHM_SEL => {}
            _ => guest_warn!(
                "virtio-mmio (type {}): write of unknown or read-only register {offset:#x}",
                self.device_type
            ),
        }
    }

    fn warn_value(&self, register: &str, value: u32) {
        guest_warn!(
            "virtio-mmio (type {}): invalid {register} value {value:#x}",
            self.device_type
        );
    }

    /// The selected queue's value, or 0 when QueueSel names no queue (which
    /// is how the driver learns that a queue does not exist).
    fn with_queue(&self, f: impl FnOnce(&Queue) -> u32) -> u32 {
        let dev = self.locked_device();
        usize::try_from(self.queue_sel)
            .ok()
            .and_then(|i| dev.common().queues.get(i))
            .map_or(0, f)
    }

    /// Queue configuration is only writable between FEATURES_OK and DRIVER_OK.
    fn update_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if !self.status_is(FEATURES_OK, DRIVER_OK | FAILED | NEEDS_RESET) {
            let status = self.status;
            guest_warn!(
                "virtio-mmio (type {}): queue configured in status {status:#x}",
                self.device_type
            );
            return;
        }
        let sel = self.queue_sel;
        let updated = {
            let mut dev = self.locked_device();
            let queue = usize::try_from(sel)
                .ok()
                .and_then(|i| dev.common_mut().queues.get_mut(i));
            queue.map(f).is_some()
        };
        if !updated {
            self.warn_value("QueueSel", sel);
        }
    }

    /// DriverFeatures: the driver accepts one 32-bit page of features. Bits
    /// the device did not offer are dropped.
    fn ack_features(&mut self, value: u32) {
        if !self.status_is(DRIVER, FEATURES_OK | FAILED | NEEDS_RESET) {
            let status = self.status;
            guest_warn!(
                "virtio-mmio (type {}): features written in status {status:#x}",
                self.device_type
            );
            return;
        }
        let shift = match self.driver_features_sel {
            0 => 0,
            1 => 32,
            sel => return self.warn_value("DriverFeaturesSel", sel),
        };
        let mut dev = self.locked_device();
        let common = dev.common_mut();
        let page = u64::from(value) << shift;
        let unknown = page & !common.avail_features;
        let mask = u64::from(u32::MAX) << shift;
        common.acked_features = (common.acked_features & !mask) | (page & common.avail_features);
        drop(dev);
        if unknown != 0 {
            guest_warn!(
                "virtio-mmio (type {}): driver accepted features {unknown:#x} that were not offered",
                self.device_type
            );
        }
    }

    fn notify(&mut self, index: u32) {
        let evt = usize::try_from(index)
            .ok()
            .and_then(|i| self.notify_evts.get(i));
        match evt {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    guest_error!(
                        "virtio-mmio (type {}): signalling queue {index}: {e}",
                        self.device_type
                    );
                }
            }
            None => self.warn_value("QueueNotify", index),
        }
    }

    /// The device status state machine (virtio 1.2, sections 2.1 and 3.1.1).
    /// The driver sets one bit at a time, in order, never clears one, and
    /// resets the device by writing 0.
    fn set_status(&mut self, value: u32) {
        if value == 0 {
            return self.reset();
        }
        if value & FAILED != 0 {
            // The driver gave up; it must reset before trying again.
            self.status |= FAILED;
            return;
        }
        let old = self.status;
        guest_debug!(
            "virtio-mmio (type {}): status {old:#x} -> {value:#x}",
            self.device_type
        );
        let added = value & !old;
        let valid = value & old == old
            && match added {
                ACKNOWLEDGE => old == 0,
                DRIVER => old == ACKNOWLEDGE,
                FEATURES_OK => old == ACKNOWLEDGE | DRIVER,
                DRIVER_OK => old == ACKNOWLEDGE | DRIVER | FEATURES_OK,
                _ => false,
            };
        if !valid {
            // Rewriting the current status is harmless; anything else is not.
            if value != old {
                guest_warn!(
                    "virtio-mmio (type {}): invalid status transition {old:#x} -> {value:#x}",
                    self.device_type
                );
            }
            return;
        }
        match added {
            // A modern-only device refuses drivers that do not accept
            // VERSION_1: FEATURES_OK stays clear and the driver sees that.
            FEATURES_OK if !self.version_1_acked() => {
                guest_warn!(
                    "virtio-mmio (type {}): driver did not accept VIRTIO_F_VERSION_1",
                    self.device_type
                );
            }
            DRIVER_OK => {
                self.status = value;
                if let Err(e) = self.activate() {
                    // Usually the guest's fault (rings outside its memory).
                    guest_warn!(
                        "virtio-mmio (type {}): activation failed: {e}",
                        self.device_type
                    );
                    self.status |= NEEDS_RESET;
                    // A status change is signalled as a config change (2.1.2).
                    if let Err(e) = self.interrupt.signal_config_change() {
                        guest_error!("virtio-mmio: signalling NEEDS_RESET: {e}");
                    }
                }
            }
            _ => self.status = value,
        }
    }

    fn version_1_acked(&self) -> bool {
        self.locked_device().common().acked_features & VIRTIO_F_VERSION_1 != 0
    }

    /// DRIVER_OK: check the queues the driver enabled against guest memory,
    /// then hand memory and interrupt to the device.
    fn activate(&mut self) -> Result<(), VirtioError> {
        let mut dev = self.locked_device();
        let common = dev.common_mut();
        let event_idx = common.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for (index, queue) in common.queues.iter_mut().enumerate() {
            if !queue.ready() {
                continue;
            }
            if !queue.is_valid(&self.mem) {
                return Err(VirtioError::InvalidQueue { index });
            }
            queue.set_event_idx(event_idx);
        }
        common.activate(self.mem.clone(), self.interrupt.clone())
    }

    fn reset(&mut self) {
        self.locked_device().common_mut().reset();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.ack(u32::MAX);
    }

    /// Register accesses must be 32-bit wide and aligned (4.2.2.2); returns
    /// the register offset when this one is.
    fn register_offset(&self, offset: u64, len: usize, what: &str) -> Option<u32> {
        match u32::try_from(offset) {
            Ok(off) if len == 4 && off.is_multiple_of(4) => Some(off),
            _ => {
                guest_warn!(
                    "virtio-mmio (type {}): ignored {len}-byte {what} at {offset:#x}",
                    self.device_type
                );
                None
            }
        }
    }
}

/// 32-bit page `sel` of a 64-bit feature set; pages beyond 1 are empty.
fn feature_page(features: u64, sel: u32) -> u32 {
    match sel {
        0 => features as u32,
        1 => (features >> 32) as u32,
        _ => 0,
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= CONFIG_SPACE_START {
            self.locked_device()
                .read_config(offset - CONFIG_SPACE_START, data);
            return;
        }
        if let Some(off) = self.register_offset(offset, data.len(), "read") {
            let value = self.read_register(off);
            data.copy_from_slice(&value.to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_START {
            if self.status_is(DRIVER, FAILED | NEEDS_RESET) {
                self.locked_device()
                    .write_config(offset - CONFIG_SPACE_START, data);
            } else {
                let status = self.status;
                guest_warn!(
                    "virtio-mmio (type {}): config written in status {status:#x}",
                    self.device_type
                );
            }
            return;
        }
        let Some(off) = self.register_offset(offset, data.len(), "write") else {
            return;
        };
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(data);
        self.write_register(off, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests;
