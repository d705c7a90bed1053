//! The virtio-net device: the RX and TX queues, the tap, and their
//! event-loop glue.
//!
//! - TX queue kick: each chain is gathered into one buffer and written to
//!   the tap; a frame the tap cannot take now (`EAGAIN`, `ENOBUFS`) is
//!   dropped, as a NIC drops it, and the loop never blocks.
//! - the tap readable (level-triggered): frames go into the RX buffers the
//!   guest posted. Out of buffers, the frame in hand is kept, the tap is no
//!   longer watched, and the guest is asked to kick the RX queue when it
//!   posts more; that kick delivers the kept frame first and watches the
//!   tap again. The tap is watched exactly while the device is active and
//!   no frame waits for a buffer.
//!
//! Both directions stop after a bounded amount of work per wakeup and come
//! back after the rest of the loop had its turn.

use std::fs::File;
use std::io::{self, Read, Write};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};

use super::frame::{self, FrameError};
use super::tap;
use super::{format_mac, parse_mac, MAX_FRAME_LEN, VNET_HDR_LEN};
use crate::devices::virtio::{
    read_config_bytes, VirtioCommon, VirtioDevice, VirtioError, TAG_ACTIVATE, TAG_DEVICE_BASE,
    TYPE_NET,
};
use crate::logger::{guest_debug, guest_error, guest_warn, ErrorChain};
use crate::vstate::memory::GuestMemoryMmap;

pub const RXQ: usize = 0;
pub const TXQ: usize = 1;
/// Descriptors in each queue.
pub const QUEUE_SIZE: u16 = 256;
/// TX chains served per wakeup: one full ring.
const TX_CHAINS_PER_TURN: usize = QUEUE_SIZE as usize;
/// RX steps (a frame read or a chain used) per wakeup: a busy tap cannot
/// hold the loop that also serves the other devices and the control socket.
const RX_STEPS_PER_TURN: usize = 256;
/// The tap's event-loop tag.
const TAG_TAP: u32 = TAG_DEVICE_BASE;
/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS: usize = 10;
/// What the device offers: the MAC and link status; checksum offload and
/// TCP segmentation both ways, so a bulk transfer moves 64 KiB frames and
/// no one computes a checksum in between (each guest interrupt and every
/// byte the guest touches costs emulated kernel time under nested PVM);
/// used-ring interrupt suppression.
pub const FEATURES: u64 = 1 << VIRTIO_NET_F_MAC
    | 1 << VIRTIO_NET_F_STATUS
    | 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6
    | 1 << VIRTIO_RING_F_EVENT_IDX;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("virtio plumbing")]
    Virtio(#[source] VirtioError),
    #[error("accessing virtio-net queue {index}")]
    Queue {
        index: usize,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("watching the tap")]
    EventLoop(#[source] event_manager::Error),
}

fn queue_err(index: usize) -> impl Fn(virtio_queue::Error) -> NetError {
    move |source| NetError::Queue { index, source }
}

/// How an RX pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RxEnd {
    /// The tap has nothing more now.
    Drained,
    /// A frame waits for the guest to post a buffer.
    NoBuffers,
    /// The pass used its share of the loop; more may wait.
    Budget,
    /// The tap failed or closed: not watched until the next RX kick.
    TapFailed,
}

/// A virtio-net device. Share it as `Arc<Mutex<Net>>` between its
/// [`MmioTransport`](crate::devices::virtio::mmio::MmioTransport) and the
/// event loop.
pub struct Net {
    common: VirtioCommon,
    /// The tap, non-blocking (or, in tests, any fd that keeps datagram
    /// boundaries).
    tap: File,
    mac: [u8; 6],
    /// The frame read from the tap last; `rx_len` is set while it waits
    /// for an RX buffer.
    rx_buf: Vec<u8>,
    rx_len: Option<usize>,
    tx_buf: Vec<u8>,
    /// Reused for the descriptors of each chain.
    descs: Vec<Descriptor>,
    tap_watched: bool,
    /// The tap's `TUN_F_*` offloads now: what the driver accepts in RX
    /// frames, 0 while it has accepted nothing.
    tap_offloads: u32,
    /// RX steps per wakeup ([`RX_STEPS_PER_TURN`]; tests lower it).
    rx_steps_per_turn: usize,
}

impl Net {
    /// A device on `tap` (set up by [`super::tap`]) with the guest MAC `mac`.
    pub fn new(tap: File, mac: [u8; 6]) -> Result<Self, NetError> {
        Ok(Self {
            common: VirtioCommon::new(TYPE_NET, FEATURES, &[QUEUE_SIZE; 2])
                .map_err(NetError::Virtio)?,
            tap,
            mac,
            rx_buf: vec![0; MAX_FRAME_LEN],
            rx_len: None,
            tx_buf: vec![0; MAX_FRAME_LEN],
            descs: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            tap_watched: false,
            tap_offloads: 0,
            rx_steps_per_turn: RX_STEPS_PER_TURN,
        })
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// `struct virtio_net_config` up to `status`: the MAC, link up.
    fn config_space(&self) -> [u8; 8] {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac);
        config[6..].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config
    }

    /// Send the frames of the TX chains the driver made available, at most
    /// [`TX_CHAINS_PER_TURN`]; with more waiting, the queue's eventfd is
    /// written so the loop comes back after the rest had its turn.
    pub fn process_tx(&mut self) -> Result<(), NetError> {
        let Self {
            common,
            tap,
            tx_buf,
            descs,
            ..
        } = self;
        let (queue, mem, interrupt) = common.queue_parts(TXQ).map_err(NetError::Virtio)?;
        let (mut used, mut served, mut empty_passes) = (false, 0, 0);
        let more = loop {
            queue.disable_notification(mem).map_err(queue_err(TXQ))?;
            let before = served;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                descs.clear();
                descs.extend(chain);
                match frame::gather_tx(mem, descs, tx_buf) {
                    Ok(len) => send(tap, &tx_buf[..len]),
                    Err(e) => {
                        guest_warn!("virtio-net: dropping TX chain {head}: {}", ErrorChain(&e))
                    }
                }
                // Fails only for a head beyond the queue, which the guest put
                // in its own avail ring; nothing to give back then.
                match queue.add_used(mem, head, 0) {
                    Ok(()) => used = true,
                    Err(e) => guest_warn!("virtio-net: returning TX chain {head}: {e}"),
                }
                served += 1;
                if served >= TX_CHAINS_PER_TURN {
                    break;
                }
            }
            if served >= TX_CHAINS_PER_TURN {
                break true;
            }
            empty_passes = if served == before {
                empty_passes + 1
            } else {
                0
            };
            // Re-check after re-enabling notifications: a chain made
            // available in between is not left waiting for a kick. A ring
            // that claims more but yields nothing twice (a bad avail index)
            // waits for the next kick instead of spinning.
            if !queue.enable_notification(mem).map_err(queue_err(TXQ))? || empty_passes >= 2 {
                break false;
            }
        };
        if used && queue.needs_notification(mem).map_err(queue_err(TXQ))? {
            interrupt.signal_used_queue().map_err(NetError::Virtio)?;
        }
        if more {
            common.queue_evts[TXQ]
                .write(1)
                .map_err(|e| NetError::Virtio(VirtioError::EventFd(e)))?;
        }
        Ok(())
    }

    /// Move frames from the tap into the guest's RX buffers: the one kept
    /// from before first, then what the tap has, for at most
    /// [`RX_STEPS_PER_TURN`] steps.
    pub(super) fn process_rx(&mut self) -> Result<RxEnd, NetError> {
        let Self {
            common,
            tap,
            rx_buf,
            rx_len,
            descs,
            rx_steps_per_turn,
            ..
        } = self;
        let (queue, mem, interrupt) = common.queue_parts(RXQ).map_err(NetError::Virtio)?;
        // Kicks are wanted only when out of buffers (asked for below).
        queue.disable_notification(mem).map_err(queue_err(RXQ))?;
        let (mut used, mut steps, mut retried) = (false, 0, false);
        let end = loop {
            if steps >= *rx_steps_per_turn {
                break RxEnd::Budget;
            }
            steps += 1;
            let len = match *rx_len {
                Some(len) => len,
                None => match read_frame(tap, rx_buf) {
                    Ok(Some(len)) => {
                        *rx_len = Some(len);
                        len
                    }
                    Ok(None) => break RxEnd::Drained,
                    Err(e) => {
                        guest_error!("virtio-net: reading the tap: {e}");
                        break RxEnd::TapFailed;
                    }
                },
            };
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                // Ask for a kick, then look once more in case the guest
                // posted a buffer in between.
                if queue.enable_notification(mem).map_err(queue_err(RXQ))? && !retried {
                    retried = true;
                    continue;
                }
                break RxEnd::NoBuffers;
            };
            retried = false;
            let head = chain.head_index();
            descs.clear();
            descs.extend(chain);
            match deliver(mem, descs, &rx_buf[..len]) {
                Delivered::Used(written) => {
                    *rx_len = None;
                    add_used(queue, mem, head, written, &mut used);
                }
                Delivered::FrameDropped => {
                    *rx_len = None;
                    // The chain stays the guest's for the next frame.
                    queue.set_next_avail(queue.next_avail().wrapping_sub(1));
                }
                Delivered::ChainRefused => add_used(queue, mem, head, 0, &mut used),
            }
        };
        if used && queue.needs_notification(mem).map_err(queue_err(RXQ))? {
            interrupt.signal_used_queue().map_err(NetError::Virtio)?;
        }
        if end == RxEnd::Budget && rx_len.is_some() {
            // The kept frame is not on the tap any more: come back for it.
            common.queue_evts[RXQ]
                .write(1)
                .map_err(|e| NetError::Virtio(VirtioError::EventFd(e)))?;
        }
        Ok(end)
    }

    /// Watch the tap or stop watching it.
    fn watch_tap(&mut self, ops: &mut EventOps, watch: bool) -> Result<(), NetError> {
        if watch == self.tap_watched {
            return Ok(());
        }
        let events = Events::with_data(&self.tap, TAG_TAP, EventSet::IN);
        if watch {
            ops.add(events)
        } else {
            ops.remove(events)
        }
        .map_err(NetError::EventLoop)?;
        self.tap_watched = watch;
        Ok(())
    }

    /// Tells the tap which offloads the frames it hands over may use: those
    /// the driver accepted, none while it has accepted none (a frame with a
    /// partial checksum or a 64 KiB segment would be garbage to it). The
    /// kernel then segments and checksums whatever the driver cannot take.
    /// A failure leaves the tap at no offloads, which every driver takes.
    fn match_tap_offloads(&mut self) {
        let wanted = if self.common.is_activated() {
            tap::offloads_for(self.common.acked_features)
        } else {
            0
        };
        if wanted == self.tap_offloads {
            return;
        }
        match tap::set_offloads(&self.tap, wanted) {
            Ok(()) => self.tap_offloads = wanted,
            Err(e) => guest_warn!("virtio-net: setting the tap's offloads to {wanted:#x}: {e}"),
        }
    }

    fn rx(&mut self, ops: &mut EventOps) -> Result<(), NetError> {
        let end = self.process_rx()?;
        self.watch_tap(ops, matches!(end, RxEnd::Drained | RxEnd::Budget))
    }

    fn handle(&mut self, tag: u32, ops: &mut EventOps) -> Result<(), NetError> {
        if tag == TAG_ACTIVATE {
            self.common.on_activate(ops).map_err(NetError::Virtio)?;
            // A frame kept from before a reset belonged to the old driver.
            self.rx_len = None;
            self.match_tap_offloads();
            return self.watch_tap(ops, true);
        }
        if let Some(evt) = self.common.queue_evts.get(tag as usize) {
            // Nonblocking; an empty counter just means a spurious wakeup.
            let _ = evt.read();
        }
        if !self.common.is_activated() {
            // The driver reset the device: no frames until it is active again.
            self.rx_len = None;
            self.match_tap_offloads();
            return self.watch_tap(ops, false);
        }
        match tag {
            TAG_TAP => self.rx(ops),
            t if t as usize == RXQ => self.rx(ops),
            t if t as usize == TXQ => self.process_tx(),
            t => {
                guest_warn!("virtio-net: event with unknown tag {t:#x}");
                Ok(())
            }
        }
    }
}

/// What became of a frame offered to an RX chain.
enum Delivered {
    /// Written; the used length.
    Used(u32),
    /// Larger than the chain: the frame is dropped, the chain kept.
    FrameDropped,
    /// A chain no frame can go into: returned empty, the frame kept.
    ChainRefused,
}

fn deliver(mem: &GuestMemoryMmap, descs: &[Descriptor], frame: &[u8]) -> Delivered {
    let result = frame::rx_capacity(descs)
        .and_then(|capacity| frame::scatter_rx(mem, descs, capacity, frame));
    match result {
        Ok(written) => Delivered::Used(written),
        Err(e @ FrameError::DoesNotFit { .. }) => {
            guest_warn!("virtio-net: dropping an RX frame: {}", ErrorChain(&e));
            Delivered::FrameDropped
        }
        Err(e) => {
            guest_warn!("virtio-net: refusing an RX chain: {}", ErrorChain(&e));
            Delivered::ChainRefused
        }
    }
}

fn add_used(queue: &mut Queue, mem: &GuestMemoryMmap, head: u16, len: u32, used: &mut bool) {
    match queue.add_used(mem, head, len) {
        Ok(()) => *used = true,
        Err(e) => guest_warn!("virtio-net: returning RX chain {head}: {e}"),
    }
}

/// One frame from the tap into `buf`, its `num_buffers` set to 1 (the tap
/// fills only the 10 bytes of `virtio_net_hdr`); `None` when there is none
/// now. A datagram shorter than the header is dropped.
fn read_frame(tap: &File, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        match (&*tap).read(buf) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(len) if len < VNET_HDR_LEN => {
                guest_warn!("virtio-net: dropping a {len}-byte frame from the tap");
            }
            Ok(len) => {
                buf[NUM_BUFFERS..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
                return Ok(Some(len));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// One frame to the tap. A frame the tap cannot take now is dropped: a
/// NIC drops it too, and TCP resends it.
fn send(tap: &File, frame: &[u8]) {
    match (&*tap).write(frame) {
        Ok(_) => {}
        Err(e)
            if e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS) =>
        {
            guest_debug!("virtio-net: the tap is full, a TX frame is dropped");
        }
        Err(e) => guest_warn!(
            "virtio-net: writing a {}-byte frame to the tap: {e}",
            frame.len()
        ),
    }
}

impl VirtioDevice for Net {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    /// The MAC; a frame waiting for a buffer is not kept (a lost frame).
    fn device_state(&self) -> serde_json::Value {
        serde_json::json!({ "mac": format_mac(&self.mac) })
    }

    /// The guest keeps the MAC it was saved with, whatever this VM's config
    /// says: its driver read it at probe and reads it again at will. The
    /// tap is this VM's own.
    fn restore_device_state(&mut self, saved: &serde_json::Value) -> Result<bool, VirtioError> {
        let mac = saved["mac"]
            .as_str()
            .ok_or_else(|| VirtioError::Snapshot(format!("no MAC saved: {saved}")))
            .and_then(|text| parse_mac(text).map_err(VirtioError::Snapshot))?;
        self.mac = mac;
        Ok(false)
    }
}

impl MutEventSubscriber for Net {
    #[allow(
        clippy::disallowed_macros,
        reason = "runs once, when the builder adds the device to the event loop"
    )]
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.common.init_events(ops) {
            log::error!("virtio-net: {}", ErrorChain(&e));
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if let Err(e) = self.handle(events.data(), ops) {
            guest_error!("virtio-net: {}", ErrorChain(&e));
        }
    }
}

#[cfg(test)]
mod tests;
