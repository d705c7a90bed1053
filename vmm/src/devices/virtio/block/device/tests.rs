//! The device on a real event manager, with a mock split queue in guest
//! memory standing in for the driver and a temporary file as the disk.

use std::io::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};

use event_manager::{EventManager, SubscriberOps};
use tempfile::NamedTempFile;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::devices::virtio::block::request::SECTOR_SIZE;
use crate::devices::virtio::{VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::vstate::interrupt::EventFdIrq;

const MEM_SIZE: u64 = 0x10_0000;
const QSIZE: u16 = 16;
/// The used ring. Not the mock's: `MockSplitQueue` (0.18) puts it at
/// `avail + 4 + len` bytes, on top of the avail ring's tail and `used_event`.
const USED: u64 = 0x8000;
const HDR: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;
const SECTORS: u64 = 8;
const DISK_LEN: usize = (SECTORS * SECTOR_SIZE) as usize;
/// What untouched guest bytes hold.
const FILL: u8 = 0xee;
const R: bool = false;
const W: bool = true;

/// A chain as the driver builds it: (address, length, device-writable).
type Chain = [(u64, u32, bool)];

fn pattern() -> Vec<u8> {
    (0..DISK_LEN)
        .map(|i| (i % 251) as u8 ^ (i / 512) as u8)
        .collect()
}

fn guest_mem() -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    for addr in [HDR, DATA, STATUS] {
        mem.write_slice(&[FILL; 0x1_0000], GuestAddress(addr))
            .unwrap();
    }
    mem
}

/// A block device on a fresh 8-sector image, with its request queue in
/// `mem`, driven from the driver's side by a mock queue.
struct Rig<'a> {
    mem: &'a GuestMemoryMmap,
    mock: MockSplitQueue<'a, GuestMemoryMmap>,
    file: NamedTempFile,
    block: Arc<Mutex<Block>>,
    irq: EventFd,
    next_desc: u16,
    next_used: u16,
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMemoryMmap, read_only: bool) -> Self {
        let rig = Self::inactive(mem, read_only);
        rig.install_queue(false);
        rig.activate();
        rig
    }

    fn inactive(mem: &'a GuestMemoryMmap, read_only: bool) -> Self {
        let mut file = NamedTempFile::new().unwrap();
        file.write_all(&pattern()).unwrap();
        let config = BlockConfig {
            path: file.path().into(),
            read_only,
            id: Some("hull-disk-0".into()),
        };
        let block = Arc::new(Mutex::new(Block::new(&config).unwrap()));
        Self {
            mem,
            mock: MockSplitQueue::new(mem, QSIZE),
            file,
            block,
            irq: EventFd::new(EFD_NONBLOCK).unwrap(),
            next_desc: 0,
            next_used: 0,
        }
    }

    fn dev(&self) -> MutexGuard<'_, Block> {
        self.block.lock().unwrap()
    }

    fn install_queue(&self, event_idx: bool) {
        let mut queue: Queue = self.mock.create_queue().unwrap();
        queue.set_used_ring_address(Some(USED as u32), Some(0));
        queue.set_event_idx(event_idx);
        self.dev().common.queues[0] = queue;
    }

    fn activate(&self) {
        let line = Arc::new(EventFdIrq(self.irq.try_clone().unwrap()));
        let interrupt = Arc::new(VirtioInterrupt::new(line));
        self.dev()
            .common
            .activate(self.mem.clone(), interrupt)
            .unwrap();
    }

    fn header(&self, request_type: u32, sector: u64) {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&request_type.to_le_bytes());
        bytes[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&bytes, GuestAddress(HDR)).unwrap();
    }

    /// Make a chain of (address, length, device-writable) available.
    fn push(&mut self, descs: &Chain) {
        let first = self.next_desc;
        let raw: Vec<_> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, writable))| {
                let last = i + 1 == descs.len();
                let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
                if !last {
                    flags |= VRING_DESC_F_NEXT;
                }
                let next = if last { 0 } else { first + i as u16 + 1 };
                RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
            })
            .collect();
        self.mock.add_desc_chains(&raw, first).unwrap();
        self.next_desc += descs.len() as u16;
    }

    /// What a driver does before setting the queue up again after a
    /// reset: empty rings.
    fn reset_ring(&mut self) {
        let avail_idx = GuestAddress(self.mock.avail_addr().0 + 2);
        self.mem.write_obj(0u16, avail_idx).unwrap();
        self.mem.write_obj(0u16, GuestAddress(USED + 2)).unwrap();
        self.next_desc = 0;
        self.next_used = 0;
    }

    /// Process the queue; returns the new used entries as (head, len).
    fn run(&mut self) -> Vec<(u32, u32)> {
        self.dev().process_queue().unwrap();
        self.collect_used()
    }

    fn collect_used(&mut self) -> Vec<(u32, u32)> {
        let end: u16 = self.mem.read_obj(GuestAddress(USED + 2)).unwrap();
        let used = (self.next_used..end)
            .map(|i| {
                let elem = USED + 4 + 8 * u64::from(i % QSIZE);
                let id: u32 = self.mem.read_obj(GuestAddress(elem)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
                (id, len)
            })
            .collect();
        self.next_used = end;
        used
    }

    fn status(&self) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn guest(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn disk(&self) -> Vec<u8> {
        std::fs::read(self.file.path()).unwrap()
    }

    fn interrupts(&self) -> u64 {
        self.irq.read().unwrap_or(0)
    }
}

const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

#[test]
fn config_space_and_features() {
    let mem = guest_mem();
    let rig = Rig::inactive(&mem, false);
    let dev = rig.dev();
    let mut capacity = [0u8; 8];
    dev.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), SECTORS);
    let mut seg_max = [0u8; 4];
    dev.read_config(12, &mut seg_max);
    assert_eq!(u32::from_le_bytes(seg_max), u32::from(QUEUE_SIZE) - 2);
    assert_eq!(
        dev.common.avail_features,
        VIRTIO_F_VERSION_1
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_RING_F_EVENT_IDX
    );
    assert_eq!(dev.common.device_type, TYPE_BLOCK);
    let ro = Rig::inactive(&mem, true);
    assert_ne!(ro.dev().common.avail_features & 1 << VIRTIO_BLK_F_RO, 0);
}

#[test]
fn read_fills_guest_memory() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, false);
    rig.header(VIRTIO_BLK_T_IN, 2);
    rig.push(&[
        (HDR, 16, R),
        (DATA, 512, W),
        (DATA + 0x1000, 1024, W),
        (STATUS, 1, W),
    ]);
    assert_eq!(rig.run(), [(0, 1537)]);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
    let disk = pattern();
    assert_eq!(rig.guest(DATA, 512), disk[1024..1536]);
    assert_eq!(rig.guest(DATA + 0x1000, 1024), disk[1536..2560]);
    assert_eq!(rig.guest(DATA + 512, 1), [FILL]);
    assert_eq!(rig.interrupts(), 1);
}

#[test]
fn write_updates_the_file() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, false);
    rig.mem
        .write_slice(&[0xab; 1024], GuestAddress(DATA))
        .unwrap();
    rig.mem
        .write_slice(&[0xcd; 512], GuestAddress(DATA + 0x1000))
        .unwrap();
    rig.header(VIRTIO_BLK_T_OUT, 5);
    rig.push(&[
        (HDR, 16, R),
        (DATA, 1024, R),
        (DATA + 0x1000, 512, R),
        (STATUS, 1, W),
    ]);
    assert_eq!(rig.run(), [(0, 1)]);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
    let mut want = pattern();
    want[2560..3584].fill(0xab);
    want[3584..4096].fill(0xcd);
    assert_eq!(rig.disk(), want);
}

#[test]
fn flush_and_get_id() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, false);
    rig.header(VIRTIO_BLK_T_FLUSH, 0);
    rig.push(&[(HDR, 16, R), (STATUS, 1, W)]);
    assert_eq!(rig.run(), [(0, 1)]);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);

    rig.header(VIRTIO_BLK_T_GET_ID, 0);
    rig.push(&[(HDR, 16, R), (DATA, 20, W), (STATUS, 1, W)]);
    assert_eq!(rig.run(), [(2, 21)]);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(rig.guest(DATA, 21), b"hull-disk-0\0\0\0\0\0\0\0\0\0\xee");

    // A short buffer gets what fits.
    rig.push(&[(HDR, 16, R), (DATA + 0x100, 8, W), (STATUS, 1, W)]);
    assert_eq!(rig.run(), [(5, 9)]);
    assert_eq!(rig.guest(DATA + 0x100, 9), b"hull-dis\xee");

    // Split over two buffers, the id continues where the first ended.
    rig.push(&[
        (HDR, 16, R),
        (DATA + 0x200, 5, W),
        (DATA + 0x300, 32, W),
        (STATUS, 1, W),
    ]);
    assert_eq!(rig.run(), [(8, 21)]);
    assert_eq!(rig.guest(DATA + 0x200, 6), b"hull-\xee");
    assert_eq!(rig.guest(DATA + 0x300, 16), b"disk-0\0\0\0\0\0\0\0\0\0\xee");
}

#[test]
fn read_only_disk_refuses_writes() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, true);
    rig.mem
        .write_slice(&[0xab; 512], GuestAddress(DATA))
        .unwrap();
    rig.header(VIRTIO_BLK_T_OUT, 0);
    rig.push(&[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)]);
    assert_eq!(rig.run(), [(0, 1)]);
    assert_eq!(rig.status(), IOERR);
    assert_eq!(rig.disk(), pattern());
    // Reads and flushes still work.
    rig.header(VIRTIO_BLK_T_IN, 1);
    rig.push(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
    assert_eq!(rig.run(), [(3, 513)]);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(rig.guest(DATA, 512), pattern()[512..1024]);
    rig.header(VIRTIO_BLK_T_FLUSH, 0);
    rig.push(&[(HDR, 16, R), (STATUS, 1, W)]);
    assert_eq!(rig.run(), [(6, 1)]);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn unsupported_type_answers_unsupp() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, false);
    rig.header(11, 0); // VIRTIO_BLK_T_DISCARD, not offered
    rig.push(&[(HDR, 16, R), (DATA, 16, R), (STATUS, 1, W)]);
    assert_eq!(rig.run(), [(0, 1)]);
    assert_eq!(rig.status(), VIRTIO_BLK_S_UNSUPP as u8);
}

#[test]
fn malformed_chains_fail_with_ioerr_and_touch_nothing() {
    let past_mem = MEM_SIZE - 256;
    let cases: &[(&str, u32, u64, &Chain)] = &[
        ("status only", VIRTIO_BLK_T_IN, 0, &[(STATUS, 1, W)]),
        (
            "writable header",
            VIRTIO_BLK_T_IN,
            0,
            &[(HDR, 16, W), (DATA, 512, W), (STATUS, 1, W)],
        ),
        (
            "short header",
            VIRTIO_BLK_T_IN,
            0,
            &[(HDR, 8, R), (DATA, 512, W), (STATUS, 1, W)],
        ),
        (
            "header outside memory",
            VIRTIO_BLK_T_IN,
            0,
            &[(MEM_SIZE, 16, R), (STATUS, 1, W)],
        ),
        (
            "2-byte status",
            VIRTIO_BLK_T_IN,
            0,
            &[(HDR, 16, R), (DATA, 512, W), (STATUS, 2, W)],
        ),
        (
            "read into readable",
            VIRTIO_BLK_T_IN,
            0,
            &[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)],
        ),
        (
            "write from writable",
            VIRTIO_BLK_T_OUT,
            0,
            &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)],
        ),
        (
            "partial sector",
            VIRTIO_BLK_T_OUT,
            0,
            &[(HDR, 16, R), (DATA, 100, R), (STATUS, 1, W)],
        ),
        (
            "read past the end",
            VIRTIO_BLK_T_IN,
            SECTORS - 1,
            &[(HDR, 16, R), (DATA, 1024, W), (STATUS, 1, W)],
        ),
        (
            "write past the end",
            VIRTIO_BLK_T_OUT,
            SECTORS,
            &[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)],
        ),
        (
            "sector overflow",
            VIRTIO_BLK_T_OUT,
            u64::MAX,
            &[(HDR, 16, R), (DATA, 512, R), (STATUS, 1, W)],
        ),
        (
            "read to outside memory",
            VIRTIO_BLK_T_IN,
            0,
            &[
                (HDR, 16, R),
                (DATA, 512, W),
                (past_mem, 512, W),
                (STATUS, 1, W),
            ],
        ),
        (
            "write from outside memory",
            VIRTIO_BLK_T_OUT,
            0,
            &[
                (HDR, 16, R),
                (DATA, 512, R),
                (past_mem, 512, R),
                (STATUS, 1, W),
            ],
        ),
        (
            "get-id into readable",
            VIRTIO_BLK_T_GET_ID,
            0,
            &[(HDR, 16, R), (DATA, 20, R), (STATUS, 1, W)],
        ),
    ];
    for &(name, request_type, sector, descs) in cases {
        let mem = guest_mem();
        let mut rig = Rig::new(&mem, false);
        rig.mem
            .write_slice(&[0xab; 512], GuestAddress(DATA))
            .unwrap();
        rig.header(request_type, sector);
        rig.push(descs);
        assert_eq!(rig.run(), [(0, 1)], "{name}");
        assert_eq!(rig.status(), IOERR, "{name}");
        assert_eq!(rig.disk(), pattern(), "{name}: disk changed");
        assert_eq!(
            rig.guest(DATA, 512),
            [0xab; 512],
            "{name}: guest memory changed"
        );
        assert_eq!(rig.guest(DATA + 512, 1), [FILL], "{name}");
    }
}

#[test]
fn chains_without_a_status_byte_are_returned_empty() {
    let cases: &[(&str, &Chain)] = &[
        (
            "readable status",
            &[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, R)],
        ),
        (
            "empty status",
            &[(HDR, 16, R), (DATA, 512, W), (STATUS, 0, W)],
        ),
        (
            "status outside memory",
            &[(HDR, 16, R), (DATA, 512, W), (MEM_SIZE, 1, W)],
        ),
    ];
    for &(name, descs) in cases {
        let mem = guest_mem();
        let mut rig = Rig::new(&mem, false);
        rig.header(VIRTIO_BLK_T_IN, 0);
        rig.push(descs);
        assert_eq!(rig.run(), [(0, 0)], "{name}");
        assert_eq!(rig.status(), FILL, "{name}");
        assert_eq!(rig.guest(DATA, 16), [FILL; 16], "{name}");
    }
}

#[test]
fn descriptor_loop_and_bad_head_do_not_hang() {
    let mem = guest_mem();
    let mut rig = Rig::new(&mem, false);
    rig.header(VIRTIO_BLK_T_IN, 0);
    // Descriptor 1 chains back to 0: the chain ends at the queue size.
    let looped = [
        Descriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1),
        Descriptor::new(
            STATUS,
            1,
            (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16,
            0,
        ),
    ]
    .map(RawDescriptor::from);
    rig.mock.add_desc_chains(&looped, 0).unwrap();
    rig.next_desc = 2;
    // A head index beyond the queue, then a good request.
    {
        let mock = &rig.mock;
        let idx = mock.avail().idx().load();
        mock.avail()
            .ring()
            .ref_at(usize::from(idx))
            .unwrap()
            .store(100);
        mock.avail().idx().store(idx + 1);
    }
    rig.push(&[(HDR, 16, R), (STATUS, 1, W)]);
    // The loop's status is IOERR; the bad head is skipped; the read of
    // zero sectors succeeds.
    let used = rig.run();
    assert_eq!(used, [(0, 1), (2, 1)]);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(rig.guest(DATA, 1), [FILL]);
}

#[test]
fn event_idx_suppresses_interrupts_and_publishes_avail_event() {
    let mem = guest_mem();
    let mut rig = Rig::inactive(&mem, false);
    rig.install_queue(true);
    rig.activate();
    let used_event = |rig: &Rig, v: u16| {
        let addr = rig.mock.avail_addr().0 + 4 + 2 * u64::from(QSIZE);
        rig.mem.write_obj(v, GuestAddress(addr)).unwrap();
    };
    let avail_event = |rig: &Rig| -> u16 {
        let addr = USED + 4 + 8 * u64::from(QSIZE);
        rig.mem.read_obj(GuestAddress(addr)).unwrap()
    };
    rig.header(VIRTIO_BLK_T_FLUSH, 0);
    used_event(&rig, 0);
    rig.push(&[(HDR, 16, R), (STATUS, 1, W)]);
    assert_eq!(rig.run(), [(0, 1)]);
    assert_eq!(rig.interrupts(), 1);
    assert_eq!(avail_event(&rig), 1);
    // The driver only wants to hear about used entry 3.
    used_event(&rig, 3);
    rig.push(&[(HDR, 16, R), (STATUS, 1, W)]);
    assert_eq!(rig.run(), [(2, 1)]);
    assert_eq!(rig.interrupts(), 0);
    rig.push(&[(HDR, 16, R), (STATUS, 1, W)]);
    rig.push(&[(HDR, 16, R), (STATUS, 1, W)]);
    assert_eq!(rig.run(), [(4, 1), (6, 1)]);
    assert_eq!(rig.interrupts(), 1);
    assert_eq!(avail_event(&rig), 4);
}

#[test]
fn event_loop_activates_then_processes_kicks() {
    let mem = guest_mem();
    let mut rig = Rig::inactive(&mem, false);
    let mut em = EventManager::<Arc<Mutex<Block>>>::new().unwrap();
    em.add_subscriber(rig.block.clone());

    // Before activation a kick is not even watched, and processing is a no-op.
    rig.header(VIRTIO_BLK_T_IN, 0);
    rig.push(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
    rig.dev().process_queue().unwrap();
    assert!(rig.collect_used().is_empty());

    rig.install_queue(false);
    rig.activate();
    assert_eq!(em.run_with_timeout(100).unwrap(), 1);
    rig.dev().common.queue_evts[0].write(1).unwrap();
    assert_eq!(em.run_with_timeout(100).unwrap(), 1);
    assert_eq!(rig.collect_used(), [(0, 513)]);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(rig.guest(DATA, 512), pattern()[..512]);
    assert_eq!(rig.interrupts(), 1);

    // After a reset, kicks are drained but nothing is processed.
    rig.dev().common.reset();
    rig.push(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
    rig.dev().common.queue_evts[0].write(1).unwrap();
    assert_eq!(em.run_with_timeout(100).unwrap(), 1);
    assert!(rig.collect_used().is_empty());

    // The driver sets the queue up again and re-activates: the device
    // notices and serves the next kick (virtio 1.2, 2.1.1).
    rig.reset_ring();
    rig.install_queue(false);
    rig.activate();
    assert_eq!(em.run_with_timeout(100).unwrap(), 1);
    rig.push(&[(HDR, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
    rig.dev().common.queue_evts[0].write(1).unwrap();
    assert_eq!(em.run_with_timeout(100).unwrap(), 1);
    assert_eq!(rig.collect_used(), [(0, 513)]);
    assert_eq!(rig.status(), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn a_full_ring_is_served_a_turn_at_a_time() {
    let mem = guest_mem();
    let mut rig = Rig::inactive(&mem, false);
    let mut em = EventManager::<Arc<Mutex<Block>>>::new().unwrap();
    em.add_subscriber(rig.block.clone());
    rig.install_queue(false);
    rig.activate();
    assert_eq!(em.run_with_timeout(100).unwrap(), 1);
    rig.dev().chains_per_turn = 4;
    // Ten one-descriptor chains (malformed, answered without a status
    // byte): the descriptor table has room for them.
    for _ in 0..10 {
        rig.push(&[(HDR, 16, R)]);
    }
    rig.dev().common.queue_evts[0].write(1).unwrap();
    // Each turn serves four and, while more wait, wakes the loop again.
    for served in [4, 4, 2] {
        assert_eq!(em.run_with_timeout(100).unwrap(), 1);
        assert_eq!(rig.collect_used().len(), served);
    }
    assert_eq!(
        em.run_with_timeout(50).unwrap(),
        0,
        "nothing left to wake for"
    );
    assert_eq!(rig.interrupts(), 3);
}
