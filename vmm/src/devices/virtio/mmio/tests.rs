//! The transport driven register by register, as a guest driver would.

use super::*;
use crate::devices::virtio::{read_config_bytes, VirtioCommon, INT_CONFIG, INT_USED_RING};
use crate::vstate::interrupt::{EventFdIrq, IrqLine};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EFD_NONBLOCK;

const TYPE_DUMMY: u32 = 42;
const F_LOW: u64 = 1 << 3;
const F_HIGH: u64 = 1 << 40;
const F_EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;

struct Dummy {
    common: VirtioCommon,
    config: [u8; 8],
    written: Vec<(u64, Vec<u8>)>,
}

impl VirtioDevice for Dummy {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.written.push((offset, data.to_vec()));
    }
}

struct Fixture {
    dev: Arc<Mutex<Dummy>>,
    transport: MmioTransport,
    irq: EventFd,
    mem: GuestMemoryMmap,
}

fn fixture() -> Fixture {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let common = VirtioCommon::new(TYPE_DUMMY, F_LOW | F_HIGH | F_EVENT_IDX, &[16, 8]).unwrap();
    let dev = Arc::new(Mutex::new(Dummy {
        common,
        config: [1, 2, 3, 4, 5, 6, 7, 8],
        written: Vec::new(),
    }));
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let line: Arc<dyn IrqLine> = Arc::new(EventFdIrq(irq.try_clone().unwrap()));
    let interrupt = Arc::new(VirtioInterrupt::new(line));
    let transport = MmioTransport::new(dev.clone(), mem.clone(), interrupt);
    Fixture {
        dev,
        transport,
        irq,
        mem,
    }
}

fn read(t: &mut MmioTransport, reg: u32) -> u32 {
    let mut data = [0xffu8; 4];
    t.read(u64::from(reg), &mut data);
    u32::from_le_bytes(data)
}

fn write(t: &mut MmioTransport, reg: u32, value: u32) {
    t.write(u64::from(reg), &value.to_le_bytes());
}

/// Accept `features` (both halves) and reach FEATURES_OK, as Linux does.
fn negotiate(t: &mut MmioTransport, features: u64) {
    write(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
    write(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
    write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    write(t, VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
    write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    write(t, VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
    write(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
}

/// Point queue `index` at the rings of `q` and enable it.
fn setup_queue(t: &mut MmioTransport, index: u32, q: &MockSplitQueue<GuestMemoryMmap>) {
    let split = |a: GuestAddress| (a.0 as u32, (a.0 >> 32) as u32);
    write(t, VIRTIO_MMIO_QUEUE_SEL, index);
    write(t, VIRTIO_MMIO_QUEUE_NUM, 16);
    for (addr, low, high) in [
        (
            q.desc_table_addr(),
            VIRTIO_MMIO_QUEUE_DESC_LOW,
            VIRTIO_MMIO_QUEUE_DESC_HIGH,
        ),
        (
            q.avail_addr(),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW,
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
        ),
        (
            q.used_addr(),
            VIRTIO_MMIO_QUEUE_USED_LOW,
            VIRTIO_MMIO_QUEUE_USED_HIGH,
        ),
    ] {
        let (lo, hi) = split(addr);
        write(t, low, lo);
        write(t, high, hi);
    }
    write(t, VIRTIO_MMIO_QUEUE_READY, 1);
}

#[test]
fn identification_registers() {
    let Fixture { mut transport, .. } = fixture();
    let t = &mut transport;
    assert_eq!(read(t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(read(t, VIRTIO_MMIO_VERSION), 2);
    assert_eq!(read(t, VIRTIO_MMIO_DEVICE_ID), TYPE_DUMMY);
    assert_eq!(read(t, VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
    assert_eq!(read(t, VIRTIO_MMIO_STATUS), 0);
    assert_eq!(read(t, VIRTIO_MMIO_CONFIG_GENERATION), 0);
    assert_eq!(read(t, VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
    write(t, VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(read(t, VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
    assert_eq!(read(t, VIRTIO_MMIO_QUEUE_READY), 0);
    write(t, VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(read(t, VIRTIO_MMIO_QUEUE_NUM_MAX), 8);
    // A queue that does not exist reads as size 0.
    write(t, VIRTIO_MMIO_QUEUE_SEL, 2);
    assert_eq!(read(t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
    write(t, VIRTIO_MMIO_QUEUE_SEL, u32::MAX);
    assert_eq!(read(t, VIRTIO_MMIO_QUEUE_READY), 0);
}

#[test]
fn features_negotiated_across_both_halves() {
    let Fixture {
        mut transport, dev, ..
    } = fixture();
    let t = &mut transport;
    let offered = F_LOW | F_HIGH | F_EVENT_IDX | VIRTIO_F_VERSION_1;
    for (sel, want) in [(0, offered as u32), (1, (offered >> 32) as u32), (2, 0)] {
        write(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel);
        assert_eq!(read(t, VIRTIO_MMIO_DEVICE_FEATURES), want, "page {sel}");
    }

    // Before DRIVER, feature writes are ignored.
    write(t, VIRTIO_MMIO_DRIVER_FEATURES, u32::MAX);
    assert_eq!(dev.lock().unwrap().common.acked_features, 0);

    // Bits not offered (bit 0, bit 63) are dropped; both halves stick.
    write(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
    write(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
    write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    write(
        t,
        VIRTIO_MMIO_DRIVER_FEATURES,
        (offered >> 32) as u32 | 1 << 31,
    );
    write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    write(t, VIRTIO_MMIO_DRIVER_FEATURES, offered as u32 | 1);
    assert_eq!(dev.lock().unwrap().common.acked_features, offered);
    // Rewriting one half leaves the other alone.
    write(t, VIRTIO_MMIO_DRIVER_FEATURES, 0);
    assert_eq!(
        dev.lock().unwrap().common.acked_features,
        F_HIGH | VIRTIO_F_VERSION_1
    );
    // A page beyond 1 is ignored.
    write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 2);
    write(t, VIRTIO_MMIO_DRIVER_FEATURES, u32::MAX);
    assert_eq!(
        dev.lock().unwrap().common.acked_features,
        F_HIGH | VIRTIO_F_VERSION_1
    );

    write(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(
        read(t, VIRTIO_MMIO_STATUS),
        ACKNOWLEDGE | DRIVER | FEATURES_OK
    );
    // After FEATURES_OK the features are frozen.
    write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    write(t, VIRTIO_MMIO_DRIVER_FEATURES, F_LOW as u32);
    assert_eq!(
        dev.lock().unwrap().common.acked_features,
        F_HIGH | VIRTIO_F_VERSION_1
    );
}

#[test]
fn features_ok_refused_without_version_1() {
    let Fixture { mut transport, .. } = fixture();
    negotiate(&mut transport, F_LOW);
    assert_eq!(
        read(&mut transport, VIRTIO_MMIO_STATUS),
        ACKNOWLEDGE | DRIVER
    );
}

#[test]
fn status_sequence_activates_and_reset_clears() {
    let Fixture {
        mut transport,
        dev,
        irq,
        mem,
    } = fixture();
    let t = &mut transport;
    let q = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);

    // Skipping a step is refused.
    write(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
    assert_eq!(read(t, VIRTIO_MMIO_STATUS), 0);
    write(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
    write(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | FEATURES_OK);
    write(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER_OK);
    assert_eq!(read(t, VIRTIO_MMIO_STATUS), ACKNOWLEDGE);
    // Clearing a bit is refused too.
    write(t, VIRTIO_MMIO_STATUS, DRIVER);
    assert_eq!(read(t, VIRTIO_MMIO_STATUS), ACKNOWLEDGE);
    write(t, VIRTIO_MMIO_STATUS, 0);
    // Queues cannot be configured before FEATURES_OK.
    write(t, VIRTIO_MMIO_QUEUE_READY, 1);
    assert!(!dev.lock().unwrap().common.queues[0].ready());

    negotiate(t, VIRTIO_F_VERSION_1 | F_EVENT_IDX);
    setup_queue(t, 0, &q);
    assert_eq!(read(t, VIRTIO_MMIO_QUEUE_READY), 1);
    {
        let d = dev.lock().unwrap();
        let queue = &d.common.queues[0];
        assert_eq!(queue.desc_table(), 0x1000);
        assert_eq!(queue.avail_ring(), q.avail_addr().0);
        assert_eq!(queue.used_ring(), q.used_addr().0);
        assert!(!d.common.is_activated());
    }
    write(t, VIRTIO_MMIO_STATUS, 0xf);
    assert_eq!(read(t, VIRTIO_MMIO_STATUS), 0xf);
    {
        let d = dev.lock().unwrap();
        assert!(d.common.is_activated());
        assert!(d.common.queues[0].event_idx_enabled());
        assert!(!d.common.queues[1].event_idx_enabled());
    }
    // Queue configuration is frozen once the device runs.
    write(t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x8000);
    assert_eq!(dev.lock().unwrap().common.queues[0].desc_table(), 0x1000);

    // QueueNotify writes the queue's eventfd; a bad index is ignored.
    write(t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    write(t, VIRTIO_MMIO_QUEUE_NOTIFY, 7);
    assert_eq!(dev.lock().unwrap().common.queue_evts[1].read().unwrap(), 1);
    assert!(dev.lock().unwrap().common.queue_evts[0].read().is_err());

    // InterruptStatus reflects what the device raised; ACK clears bits.
    dev.lock()
        .unwrap()
        .common
        .interrupt()
        .unwrap()
        .signal_used_queue()
        .unwrap();
    assert_eq!(irq.read().unwrap(), 1);
    assert_eq!(read(t, VIRTIO_MMIO_INTERRUPT_STATUS), INT_USED_RING);
    write(t, VIRTIO_MMIO_INTERRUPT_ACK, INT_USED_RING);
    assert_eq!(read(t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);

    // Reset: status, features, queues and activation are gone.
    write(t, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(read(t, VIRTIO_MMIO_STATUS), 0);
    let d = dev.lock().unwrap();
    assert!(!d.common.is_activated());
    assert_eq!(d.common.acked_features, 0);
    assert!(!d.common.queues[0].ready());
    assert_eq!(d.common.queues[0].desc_table(), 0);
}

#[test]
fn invalid_queue_sets_needs_reset() {
    let Fixture {
        mut transport,
        dev,
        irq,
        ..
    } = fixture();
    let t = &mut transport;
    negotiate(t, VIRTIO_F_VERSION_1);
    write(t, VIRTIO_MMIO_QUEUE_SEL, 0);
    // Used ring beyond the end of guest memory.
    write(t, VIRTIO_MMIO_QUEUE_USED_HIGH, 1);
    write(t, VIRTIO_MMIO_QUEUE_READY, 1);
    write(t, VIRTIO_MMIO_STATUS, 0xf);
    assert_eq!(read(t, VIRTIO_MMIO_STATUS), 0xf | NEEDS_RESET);
    assert!(!dev.lock().unwrap().common.is_activated());
    assert_eq!(read(t, VIRTIO_MMIO_INTERRUPT_STATUS), INT_CONFIG);
    assert_eq!(irq.read().unwrap(), 1);
    // Only a reset gets the device out of it.
    write(t, VIRTIO_MMIO_STATUS, 0xf | NEEDS_RESET);
    assert_eq!(read(t, VIRTIO_MMIO_STATUS), 0xf | NEEDS_RESET);
    write(t, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(read(t, VIRTIO_MMIO_STATUS), 0);
    assert_eq!(read(t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
}

#[test]
fn failed_bit_sticks_until_reset() {
    let Fixture {
        mut transport, dev, ..
    } = fixture();
    let t = &mut transport;
    negotiate(t, VIRTIO_F_VERSION_1);
    write(t, VIRTIO_MMIO_STATUS, 0xb | FAILED);
    assert_eq!(read(t, VIRTIO_MMIO_STATUS), 0xb | FAILED);
    write(t, VIRTIO_MMIO_STATUS, 0xf | FAILED);
    assert!(!dev.lock().unwrap().common.is_activated());
    write(t, VIRTIO_MMIO_STATUS, 0xf);
    assert_eq!(read(t, VIRTIO_MMIO_STATUS), 0xb | FAILED);
}

#[test]
fn config_space_any_width() {
    let Fixture {
        mut transport, dev, ..
    } = fixture();
    let t = &mut transport;
    let mut b = [0xffu8; 1];
    t.read(0x103, &mut b);
    assert_eq!(b, [4]);
    let mut w = [0xffu8; 2];
    t.read(0x106, &mut w);
    assert_eq!(w, [7, 8]);
    // Past the end of the device's config: zeros, not stale bytes.
    let mut q = [0xffu8; 8];
    t.read(0x104, &mut q);
    assert_eq!(q, [0; 8]);
    t.read(0x1000_0000, &mut q);
    assert_eq!(q, [0; 8]);

    // Config writes need DRIVER.
    t.write(0x100, &[9]);
    assert!(dev.lock().unwrap().written.is_empty());
    write(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE);
    write(t, VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
    t.write(0x102, &[9, 9]);
    assert_eq!(dev.lock().unwrap().written, vec![(2, vec![9, 9])]);
}

#[test]
fn bad_register_accesses_are_ignored() {
    let Fixture {
        mut transport, dev, ..
    } = fixture();
    let t = &mut transport;
    // Reads of the wrong width or alignment return zeros.
    for (offset, len) in [(0u64, 1usize), (0, 2), (0, 8), (2, 4), (0x4, 3), (0xff, 1)] {
        let mut data = vec![0xffu8; len];
        t.read(offset, &mut data);
        assert!(data.iter().all(|&b| b == 0), "{offset:#x}/{len}");
    }
    // Unknown and write-only registers read as zero.
    for reg in [0x18, 0x40, VIRTIO_MMIO_QUEUE_DESC_LOW, 0xf8] {
        assert_eq!(read(t, reg), 0, "{reg:#x}");
    }
    // Odd-sized and misaligned writes never reach the state machine.
    t.write(u64::from(VIRTIO_MMIO_STATUS), &[1]);
    t.write(u64::from(VIRTIO_MMIO_STATUS), &[1, 0, 0, 0, 0, 0, 0, 0]);
    t.write(u64::from(VIRTIO_MMIO_STATUS) + 1, &[1, 0, 0, 0]);
    t.write(u64::MAX - 3, &[1, 0, 0, 0]);
    assert_eq!(read(t, VIRTIO_MMIO_STATUS), 0);
    // Read-only and unknown registers ignore writes.
    write(t, VIRTIO_MMIO_MAGIC_VALUE, 0);
    write(t, VIRTIO_MMIO_DEVICE_FEATURES, 0);
    write(t, 0xf0, 1);
    assert_eq!(read(t, VIRTIO_MMIO_MAGIC_VALUE), MAGIC_VALUE);
    // Invalid queue values.
    negotiate(t, VIRTIO_F_VERSION_1);
    write(t, VIRTIO_MMIO_QUEUE_SEL, 0);
    write(t, VIRTIO_MMIO_QUEUE_NUM, 0x1_0000);
    write(t, VIRTIO_MMIO_QUEUE_NUM, 3);
    write(t, VIRTIO_MMIO_QUEUE_NUM, 32);
    write(t, VIRTIO_MMIO_QUEUE_READY, 2);
    write(t, VIRTIO_MMIO_QUEUE_SEL, 9);
    write(t, VIRTIO_MMIO_QUEUE_READY, 1);
    let d = dev.lock().unwrap();
    assert_eq!(d.common.queues[0].size(), 16);
    assert!(!d.common.queues[0].ready());
    assert!(!d.common.queues[1].ready());
}
