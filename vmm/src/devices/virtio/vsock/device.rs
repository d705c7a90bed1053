//! The virtio-vsock device: three queues (rx, tx, event), the guest CID in
//! config space, and the event-loop glue between the queues and the muxer.
//!
//! - tx queue kick: every chain is parsed and handed to the muxer, then
//!   returned to the guest (the muxer never refuses a packet: flow control
//!   bounds what it buffers);
//! - rx queue kick, or any muxer event: the muxer's packets fill the RX
//!   buffers the guest posted;
//! - event queue: present, never used (no transport reset events: hull does
//!   not snapshot).

use std::io;
use std::os::unix::io::RawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::QueueT;
use vm_memory::Bytes;

use super::muxer::{EventRegistry, Muxer, MuxerOptions};
use super::packet::{self, PacketHeader, RxBuffer, MAX_PKT_DATA, OP_RW};
use super::{VsockConfig, VsockError};
use crate::devices::virtio::{
    read_config_bytes, VirtioCommon, VirtioDevice, VirtioError, TAG_ACTIVATE, TAG_DEVICE_BASE,
    TYPE_VSOCK,
};
use crate::logger::{guest_error, guest_warn, ErrorChain};
use crate::vstate::memory::GuestMemoryMmap;

pub const RXQ: usize = 0;
pub const TXQ: usize = 1;
pub const EVQ: usize = 2;
const QUEUE_SIZES: [u16; 3] = [64; 3];

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("vsock device not ready")]
    Virtio(#[source] VirtioError),
    #[error("accessing virtio queue {index}")]
    Queue {
        index: usize,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("activating the hybrid vsock host side")]
    Muxer(#[source] super::muxer::MuxerError),
}

/// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (virtio 1.2, 5.10.6.2): the guest
/// drops every connection and reads its CID again.
const EVENT_TRANSPORT_RESET: u32 = 0;

pub struct Vsock {
    common: VirtioCommon,
    guest_cid: u64,
    /// Restored from a snapshot: the guest's connections have no host side
    /// any more, so the next activation sends a transport reset.
    reset_pending: bool,
    muxer: Muxer,
    /// Packet data on its way between guest memory and the muxer.
    rx_data: Vec<u8>,
    tx_data: Vec<u8>,
}

impl Vsock {
    /// A vsock device for `config`, listening on `config.uds_path` from now
    /// on (host connections queue until the guest driver activates it).
    pub fn new(config: &VsockConfig) -> Result<Self, VsockError> {
        Self::with_options(config, MuxerOptions::default())
    }

    pub fn with_options(config: &VsockConfig, opts: MuxerOptions) -> Result<Self, VsockError> {
        super::validate(config)?;
        let guest_cid = u64::from(config.guest_cid);
        Ok(Self {
            common: VirtioCommon::new(TYPE_VSOCK, 0, &QUEUE_SIZES).map_err(VsockError::Virtio)?,
            guest_cid,
            reset_pending: false,
            muxer: Muxer::new(guest_cid, &config.uds_path, opts).map_err(VsockError::Muxer)?,
            rx_data: vec![0; MAX_PKT_DATA],
            tx_data: vec![0; MAX_PKT_DATA],
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    fn queue_err(index: usize) -> impl Fn(virtio_queue::Error) -> DeviceError {
        move |source| DeviceError::Queue { index, source }
    }

    /// Hand every chain of the TX queue to the muxer.
    fn process_tx(&mut self, reg: &mut dyn EventRegistry) -> Result<(), DeviceError> {
        // Cheap (a few Arcs); lets the queues be borrowed mutably alongside.
        let mem: GuestMemoryMmap = self.common.mem().map_err(DeviceError::Virtio)?.clone();
        let queue = &mut self.common.queues[TXQ];
        let mut used = false;
        loop {
            queue
                .disable_notification(&mem)
                .map_err(Self::queue_err(TXQ))?;
            while let Some(chain) = queue.pop_descriptor_chain(&mem) {
                let head = chain.head_index();
                match packet::read_tx(&mem, chain, &mut self.tx_data) {
                    Ok(hdr) => {
                        let len = if hdr.op == OP_RW { hdr.len as usize } else { 0 };
                        self.muxer.send_pkt(&hdr, &self.tx_data[..len], reg);
                    }
                    Err(e) => {
                        guest_warn!("vsock: dropping TX chain {head}: {}", ErrorChain(&e));
                    }
                }
                queue
                    .add_used(&mem, head, 0)
                    .map_err(Self::queue_err(TXQ))?;
                used = true;
            }
            if !queue
                .enable_notification(&mem)
                .map_err(Self::queue_err(TXQ))?
            {
                break;
            }
        }
        if used
            && queue
                .needs_notification(&mem)
                .map_err(Self::queue_err(TXQ))?
        {
            self.signal_used()?;
        }
        Ok(())
    }

    /// Fill the RX buffers the guest posted with the muxer's packets.
    fn process_rx(&mut self, reg: &mut dyn EventRegistry) -> Result<(), DeviceError> {
        if !self.muxer.has_pending_rx() {
            return Ok(());
        }
        let mem: GuestMemoryMmap = self.common.mem().map_err(DeviceError::Virtio)?.clone();
        let queue = &mut self.common.queues[RXQ];
        let mut used = false;
        'refill: loop {
            while self.muxer.has_pending_rx() {
                let Some(chain) = queue.pop_descriptor_chain(&mem) else {
                    break;
                };
                let head = chain.head_index();
                let len = match RxBuffer::new(&mem, chain) {
                    Ok(buf) => {
                        let cap = buf.data_capacity();
                        let Some(hdr) = self.muxer.recv_pkt(&mut self.rx_data[..cap], reg) else {
                            // Nothing after all: give the buffer back.
                            queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                            break 'refill;
                        };
                        write_rx(buf, &hdr, &self.rx_data)
                    }
                    Err(e) => {
                        guest_warn!("vsock: dropping RX chain {head}: {}", ErrorChain(&e));
                        0
                    }
                };
                queue
                    .add_used(&mem, head, len)
                    .map_err(Self::queue_err(RXQ))?;
                used = true;
            }
            // Out of buffers with packets left: ask for a kick when the guest
            // posts more, and look again in case it just did.
            if !self.muxer.has_pending_rx()
                || !queue
                    .enable_notification(&mem)
                    .map_err(Self::queue_err(RXQ))?
            {
                break;
            }
        }
        if used
            && queue
                .needs_notification(&mem)
                .map_err(Self::queue_err(RXQ))?
        {
            self.signal_used()?;
        }
        Ok(())
    }

    /// Puts a transport reset on the event queue, if one is pending and the
    /// driver has given a buffer for it.
    fn send_reset_event(&mut self) -> Result<(), DeviceError> {
        if !self.reset_pending {
            return Ok(());
        }
        let mem: GuestMemoryMmap = self.common.mem().map_err(DeviceError::Virtio)?.clone();
        let queue = &mut self.common.queues[EVQ];
        let Some(chain) = queue.pop_descriptor_chain(&mem) else {
            guest_warn!("vsock: no event buffer for the transport reset");
            return Ok(());
        };
        let head = chain.head_index();
        let written = chain
            .writable()
            .next()
            .filter(|d| d.len() >= 4)
            .map(|d| {
                mem.write_obj(EVENT_TRANSPORT_RESET.to_le(), d.addr())
                    .is_ok()
            })
            .unwrap_or(false);
        queue
            .add_used(&mem, head, if written { 4 } else { 0 })
            .map_err(Self::queue_err(EVQ))?;
        self.reset_pending = false;
        self.signal_used()
    }

    fn signal_used(&self) -> Result<(), DeviceError> {
        self.common
            .interrupt()
            .and_then(|i| i.signal_used_queue())
            .map_err(DeviceError::Virtio)
    }

    fn handle(
        &mut self,
        tag: u32,
        events: EventSet,
        ops: &mut EventOps,
    ) -> Result<(), DeviceError> {
        if tag == TAG_ACTIVATE {
            self.common.on_activate(ops).map_err(DeviceError::Virtio)?;
            // After a reset the guest's driver starts with no connection:
            // drop what the muxer still holds from before, then serve again.
            self.muxer.deactivate(ops);
            self.muxer.activate(ops).map_err(DeviceError::Muxer)?;
            self.send_reset_event()?;
            return self.process_rx(ops);
        }
        if let Some(evt) = self.common.queue_evts.get(tag as usize) {
            if let Err(e) = evt.read() {
                guest_warn!("vsock: reading queue {tag} eventfd: {e}");
            }
        }
        if !self.common.is_activated() {
            // The driver reset the device: its connections are gone.
            if tag >= TAG_DEVICE_BASE {
                self.muxer.deactivate(ops);
            }
            return Ok(());
        }
        match tag as usize {
            RXQ => self.process_rx(ops),
            TXQ => {
                self.process_tx(ops)?;
                self.process_rx(ops)
            }
            EVQ => Ok(()),
            _ => {
                self.muxer.handle_event(tag, events, ops);
                self.process_rx(ops)
            }
        }
    }
}

fn write_rx(buf: RxBuffer, hdr: &PacketHeader, data: &[u8]) -> u32 {
    buf.write(hdr, &data[..hdr.len as usize])
        .unwrap_or_else(|e| {
            guest_warn!("vsock: writing RX packet {hdr:?}: {}", ErrorChain(&e));
            0
        })
}

impl VirtioDevice for Vsock {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn device_state(&self) -> serde_json::Value {
        serde_json::json!({ "guest_cid": self.guest_cid })
    }

    /// The host side of every connection is gone: the guest gets a
    /// transport reset once the device is active again. The CID stays.
    fn restore_device_state(&mut self, saved: &serde_json::Value) -> Result<bool, VirtioError> {
        if saved["guest_cid"].as_u64() != Some(self.guest_cid) {
            return Err(VirtioError::Snapshot(format!(
                "vsock CID {} was saved, this VM has {}",
                saved["guest_cid"], self.guest_cid
            )));
        }
        self.reset_pending = true;
        Ok(false)
    }
}

impl MutEventSubscriber for Vsock {
    #[allow(
        clippy::disallowed_macros,
        reason = "runs once, when the builder adds the device to the event loop"
    )]
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.common.init_events(ops) {
            log::error!("vsock: {}", ErrorChain(&e));
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if let Err(e) = self.handle(events.data(), events.event_set(), ops) {
            guest_error!("vsock: {}", ErrorChain(&e));
        }
    }
}

/// The muxer's host streams live in the device's event-manager slot.
impl EventRegistry for EventOps<'_> {
    fn register(&mut self, fd: RawFd, tag: u32, events: EventSet) -> io::Result<()> {
        self.add(Events::with_data_raw(fd, tag, events))
            .map_err(io::Error::other)
    }

    fn reregister(&mut self, fd: RawFd, tag: u32, events: EventSet) -> io::Result<()> {
        self.modify(Events::with_data_raw(fd, tag, events))
            .map_err(io::Error::other)
    }

    fn deregister(&mut self, fd: RawFd, tag: u32) -> io::Result<()> {
        self.remove(Events::with_data_raw(fd, tag, EventSet::empty()))
            .map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests;
