//! The device on a real event manager, with split queues in guest memory
//! written by a small fake driver. A SOCK_SEQPACKET socket pair stands in
//! for the tap where the test is about the queues; the `needs_root_` test
//! runs a real tap in a network namespace of its own.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::devices::virtio::net::tap;
use crate::devices::virtio::{VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::vstate::interrupt::EventFdIrq;

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];
const MEM_SIZE: usize = 0x80_0000;
/// Where the rings of queue `i` start: desc table, then avail, then used.
const RINGS: [u64; 2] = [0x1_0000, 0x2_0000];
/// Buffers: the RX ones from here up, 0x2_0000 bytes each.
const BUFS: u64 = 0x10_0000;
const R: bool = false;
const W: bool = true;

type Loop = EventManager<Arc<Mutex<Net>>>;

/// One split queue as a driver sees it.
struct Ring {
    base: u64,
    next_desc: u16,
    avail_idx: u16,
    next_used: u16,
}

impl Ring {
    const SIZE: u16 = QUEUE_SIZE;

    fn desc(&self) -> u64 {
        self.base
    }
    fn avail(&self) -> u64 {
        self.base + 16 * u64::from(Self::SIZE)
    }
    fn used(&self) -> u64 {
        (self.avail() + 6 + 2 * u64::from(Self::SIZE) + 3) & !3
    }

    fn queue(&self, event_idx: bool) -> Queue {
        let mut q = Queue::new(Self::SIZE).unwrap();
        q.set_size(Self::SIZE);
        q.set_desc_table_address(Some(self.desc() as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail() as u32), Some(0));
        q.set_used_ring_address(Some(self.used() as u32), Some(0));
        q.set_event_idx(event_idx);
        q.set_ready(true);
        q
    }

    /// Make a chain of (address, length, device-writable) available.
    fn push(&mut self, mem: &GuestMemoryMmap, chain: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in chain.iter().enumerate() {
            let index = self.next_desc;
            self.next_desc = (self.next_desc + 1) % Self::SIZE;
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 } as u16;
            if i + 1 < chain.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let at = self.desc() + 16 * u64::from(index);
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(self.next_desc, GuestAddress(at + 14))
                .unwrap();
        }
        let slot = self.avail() + 4 + 2 * u64::from(self.avail_idx % Self::SIZE);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail() + 2))
            .unwrap();
        head
    }

    /// The new used entries, as (head, len).
    fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
        let end: u16 = mem.read_obj(GuestAddress(self.used() + 2)).unwrap();
        let mut used = Vec::new();
        while self.next_used != end {
            let at = self.used() + 4 + 8 * u64::from(self.next_used % Self::SIZE);
            used.push((
                mem.read_obj(GuestAddress(at)).unwrap(),
                mem.read_obj(GuestAddress(at + 4)).unwrap(),
            ));
            self.next_used = self.next_used.wrapping_add(1);
        }
        used
    }

    /// The driver's `used_event` (EVENT_IDX).
    fn set_used_event(&self, mem: &GuestMemoryMmap, value: u16) {
        let at = self.avail() + 4 + 2 * u64::from(Self::SIZE);
        mem.write_obj(value, GuestAddress(at)).unwrap();
    }
}

/// A SOCK_SEQPACKET pair: (the device's end, the test's end), both
/// non-blocking; each write is one frame, as on a tap.
fn seqpacket_pair() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into `fds`, an array of two ints.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(ret, 0, "socketpair: {}", io::Error::last_os_error());
    // SAFETY: both fds were just made and are owned by nobody else.
    fds.map(|fd| File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
        .into()
}

struct Rig {
    mem: GuestMemoryMmap,
    net: Arc<Mutex<Net>>,
    peer: File,
    irq: EventFd,
    rx: Ring,
    tx: Ring,
    em: Loop,
}

impl Rig {
    /// An active device on a socket pair, with EVENT_IDX as `event_idx`.
    fn new(event_idx: bool) -> Self {
        let (dev_end, peer) = seqpacket_pair();
        Self::on(dev_end, peer, event_idx)
    }

    fn on(tap: File, peer: File, event_idx: bool) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let net = Arc::new(Mutex::new(Net::new(tap, MAC).unwrap()));
        let mut em = Loop::new().unwrap();
        em.add_subscriber(net.clone());
        let mut rig = Self {
            mem,
            net,
            peer,
            irq: EventFd::new(EFD_NONBLOCK).unwrap(),
            rx: Ring {
                base: RINGS[RXQ],
                next_desc: 0,
                avail_idx: 0,
                next_used: 0,
            },
            tx: Ring {
                base: RINGS[TXQ],
                next_desc: 0,
                avail_idx: 0,
                next_used: 0,
            },
            em,
        };
        rig.activate(event_idx);
        rig
    }

    fn activate(&mut self, event_idx: bool) {
        {
            let mut dev = self.dev();
            dev.common.queues[RXQ] = self.rx.queue(event_idx);
            dev.common.queues[TXQ] = self.tx.queue(event_idx);
        }
        let line = Arc::new(EventFdIrq(self.irq.try_clone().unwrap()));
        let interrupt = Arc::new(VirtioInterrupt::new(line));
        let mem = self.mem.clone();
        self.dev().common.activate(mem, interrupt).unwrap();
        self.turn();
    }

    fn dev(&self) -> MutexGuard<'_, Net> {
        self.net.lock().unwrap()
    }

    /// One pass of the event loop; returns how many events it served.
    fn turn(&mut self) -> usize {
        self.em.run_with_timeout(50).unwrap()
    }

    /// Run the loop until nothing is left to do.
    fn settle(&mut self) {
        for _ in 0..100 {
            if self.turn() == 0 {
                return;
            }
        }
        panic!("the device keeps the loop busy");
    }

    fn kick(&mut self, queue: usize) {
        self.dev().common.queue_evts[queue].write(1).unwrap();
    }

    fn interrupts(&self) -> u64 {
        self.irq.read().unwrap_or(0)
    }

    /// Post an RX buffer of `len` bytes (buffer `n` of the rig).
    fn post_rx(&mut self, n: u64, len: u32) -> u16 {
        let mem = self.mem.clone();
        self.rx.push(&mem, &[(BUFS + n * 0x2_0000, len, W)])
    }

    fn guest(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    /// What the device wrote to its tap, frame by frame.
    fn sent(&mut self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut buf = vec![0; 2 * MAX_FRAME_LEN];
        loop {
            match self.peer.read(&mut buf) {
                Ok(n) => frames.push(buf[..n].to_vec()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return frames,
                Err(e) => panic!("reading the device's frames: {e}"),
            }
        }
    }
}

/// A frame as the tap hands it: a zero header (its `num_buffers` left as
/// garbage) and `len` bytes of payload.
fn tap_frame(len: usize, seed: u8) -> Vec<u8> {
    let mut frame = vec![0u8; VNET_HDR_LEN];
    frame[NUM_BUFFERS..].copy_from_slice(&[0xaa, 0xbb]);
    frame.extend((0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed));
    frame
}

/// `frame` as the guest must see it: `num_buffers` 1.
fn as_delivered(frame: &[u8]) -> Vec<u8> {
    let mut frame = frame.to_vec();
    frame[NUM_BUFFERS..VNET_HDR_LEN].copy_from_slice(&[1, 0]);
    frame
}

#[test]
fn config_space_and_features() {
    let rig = Rig::new(false);
    let dev = rig.dev();
    let mut mac = [0u8; 6];
    dev.read_config(0, &mut mac);
    assert_eq!(mac, MAC);
    let mut status = [0u8; 2];
    dev.read_config(6, &mut status);
    assert_eq!(u16::from_le_bytes(status), VIRTIO_NET_S_LINK_UP as u16);
    let mut past = [0xffu8; 2];
    dev.read_config(8, &mut past);
    assert_eq!(past, [0xff; 2], "nothing past status is offered");
    assert_eq!(dev.common.device_type, TYPE_NET);
    assert_eq!(
        dev.common.avail_features,
        VIRTIO_F_VERSION_1
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_STATUS
            | 1 << VIRTIO_NET_F_CSUM
            | 1 << VIRTIO_NET_F_HOST_TSO4
            | 1 << VIRTIO_NET_F_HOST_TSO6
            | 1 << VIRTIO_NET_F_GUEST_CSUM
            | 1 << VIRTIO_NET_F_GUEST_TSO4
            | 1 << VIRTIO_NET_F_GUEST_TSO6
            | 1 << VIRTIO_RING_F_EVENT_IDX
    );
    assert_eq!(dev.tap_offloads, 0, "the driver accepted no offloads");
    let sizes: Vec<u16> = dev.common.queues.iter().map(|q| q.max_size()).collect();
    assert_eq!(sizes, [QUEUE_SIZE; 2]);
}

#[test]
fn tx_chains_reach_the_tap_with_their_header() {
    let mut rig = Rig::new(false);
    let frame = tap_frame(60, 1);
    let mem = rig.mem.clone();
    mem.write_slice(&frame, GuestAddress(BUFS)).unwrap();
    // Header and payload in two descriptors, then the whole in one.
    rig.tx.push(&mem, &[(BUFS, 12, R), (BUFS + 12, 60, R)]);
    rig.tx.push(&mem, &[(BUFS, 72, R)]);
    rig.kick(TXQ);
    rig.settle();
    assert_eq!(rig.sent(), [frame.clone(), frame]);
    assert_eq!(rig.tx.take_used(&mem), [(0, 0), (2, 0)]);
    assert_eq!(rig.interrupts(), 1, "one interrupt for the batch");
}

#[test]
fn bad_tx_chains_are_dropped_and_returned() {
    let mut rig = Rig::new(false);
    let mem = rig.mem.clone();
    let half = (MAX_FRAME_LEN / 2) as u32;
    let good = tap_frame(20, 2);
    mem.write_slice(&good, GuestAddress(BUFS)).unwrap();
    rig.tx.push(&mem, &[(BUFS, half, R), (BUFS, half + 1, R)]); // one byte too many
    rig.tx.push(&mem, &[(BUFS, 32, W)]); // device-writable
    rig.tx.push(&mem, &[(BUFS, 8, R)]); // shorter than the header
    rig.tx.push(&mem, &[(MEM_SIZE as u64 - 16, 32, R)]); // past guest memory
    rig.tx.push(&mem, &[(BUFS, good.len() as u32, R)]);
    rig.kick(TXQ);
    rig.settle();
    assert_eq!(rig.sent(), [good], "only the good frame goes out");
    let used = rig.tx.take_used(&mem);
    assert_eq!(used, [(0, 0), (2, 0), (3, 0), (4, 0), (5, 0)]);
    // A frame of exactly the maximum still goes.
    rig.tx.push(&mem, &[(BUFS, half, R), (BUFS, half, R)]);
    rig.kick(TXQ);
    rig.settle();
    let sent = rig.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].len(), MAX_FRAME_LEN);
}

#[test]
fn a_frame_on_the_tap_fills_an_rx_chain() {
    let mut rig = Rig::new(false);
    let head = rig.post_rx(0, 1526);
    let frame = tap_frame(100, 3);
    rig.peer.write_all(&frame).unwrap();
    rig.settle();
    assert_eq!(rig.rx.take_used(&rig.mem.clone()), [(u32::from(head), 112)]);
    assert_eq!(rig.guest(BUFS, 112), as_delivered(&frame));
    assert_eq!(rig.interrupts(), 1);
    // A chain of several buffers is filled in order.
    let mem = rig.mem.clone();
    rig.rx.push(
        &mem,
        &[
            (BUFS + 0x1000, 12, W),
            (BUFS + 0x3000, 50, W),
            (BUFS + 0x5000, 200, W),
        ],
    );
    let frame = tap_frame(150, 4);
    rig.peer.write_all(&frame).unwrap();
    rig.settle();
    assert_eq!(rig.rx.take_used(&mem), [(1, 162)]);
    let delivered = as_delivered(&frame);
    assert_eq!(rig.guest(BUFS + 0x1000, 12), delivered[..12]);
    assert_eq!(rig.guest(BUFS + 0x3000, 50), delivered[12..62]);
    assert_eq!(rig.guest(BUFS + 0x5000, 100), delivered[62..]);
}

#[test]
fn without_rx_buffers_a_frame_waits_for_the_kick() {
    let mut rig = Rig::new(true);
    let (a, b) = (tap_frame(40, 5), tap_frame(50, 6));
    rig.peer.write_all(&a).unwrap();
    rig.peer.write_all(&b).unwrap();
    rig.settle();
    assert!(!rig.dev().tap_watched, "the tap rests while a frame waits");
    assert_eq!(rig.dev().rx_len, Some(a.len()));
    assert_eq!(rig.interrupts(), 0);
    // The guest is asked to kick when it posts the next buffer.
    let mem = rig.mem.clone();
    let avail_event: u16 = mem
        .read_obj(GuestAddress(rig.rx.used() + 4 + 8 * u64::from(QUEUE_SIZE)))
        .unwrap();
    assert_eq!(avail_event, 0);

    rig.post_rx(0, 1526);
    rig.post_rx(1, 1526);
    rig.kick(RXQ);
    rig.settle();
    assert_eq!(rig.rx.take_used(&mem), [(0, 52), (1, 62)]);
    assert_eq!(rig.guest(BUFS, a.len()), as_delivered(&a));
    assert_eq!(rig.guest(BUFS + 0x2_0000, b.len()), as_delivered(&b));
    assert!(rig.dev().tap_watched);
    assert!(rig.interrupts() >= 1);
}

#[test]
fn a_frame_larger_than_the_chain_is_dropped_and_the_chain_kept() {
    let mut rig = Rig::new(false);
    rig.post_rx(0, 112);
    let (big, small) = (tap_frame(101, 7), tap_frame(30, 8));
    rig.peer.write_all(&big).unwrap();
    rig.peer.write_all(&small).unwrap();
    rig.settle();
    assert_eq!(rig.rx.take_used(&rig.mem.clone()), [(0, 42)]);
    assert_eq!(rig.guest(BUFS, small.len()), as_delivered(&small));
    // A chain no frame fits (shorter than the header, or readable) goes
    // back empty and the frame waits for the next one.
    let mem = rig.mem.clone();
    rig.rx.push(&mem, &[(BUFS, 8, W)]);
    rig.rx.push(&mem, &[(BUFS, 100, R)]);
    rig.post_rx(1, 1526);
    let next = tap_frame(10, 9);
    rig.peer.write_all(&next).unwrap();
    rig.settle();
    assert_eq!(rig.rx.take_used(&mem), [(1, 0), (2, 0), (3, 22)]);
}

#[test]
fn interrupts_follow_used_event() {
    let mut rig = Rig::new(true);
    let mem = rig.mem.clone();
    // The driver wants an interrupt once the third buffer is used.
    rig.rx.set_used_event(&mem, 2);
    for n in 0..4 {
        rig.post_rx(n, 1526);
    }
    for seed in 0..2 {
        rig.peer.write_all(&tap_frame(10, seed)).unwrap();
    }
    rig.settle();
    assert_eq!(rig.rx.take_used(&mem).len(), 2);
    assert_eq!(rig.interrupts(), 0);
    rig.peer.write_all(&tap_frame(10, 3)).unwrap();
    rig.settle();
    assert_eq!(rig.rx.take_used(&mem).len(), 1);
    assert_eq!(rig.interrupts(), 1);
}

#[test]
fn a_busy_tap_is_served_a_turn_at_a_time() {
    let mut rig = Rig::new(false);
    rig.dev().rx_steps_per_turn = 3;
    for n in 0..5 {
        rig.post_rx(n, 1526);
        rig.peer.write_all(&tap_frame(10, n as u8)).unwrap();
    }
    let mem = rig.mem.clone();
    assert_eq!(rig.turn(), 1);
    assert_eq!(rig.rx.take_used(&mem).len(), 3);
    rig.settle();
    assert_eq!(rig.rx.take_used(&mem).len(), 2);
}

#[test]
fn a_reset_device_stops_reading_until_it_is_active_again() {
    let mut rig = Rig::new(false);
    rig.dev().common.reset();
    rig.peer.write_all(&tap_frame(10, 1)).unwrap();
    rig.settle();
    assert!(!rig.dev().tap_watched);
    // Reset: the driver sets the rings up afresh and activates again.
    let mem = rig.mem.clone();
    for ring in [&mut rig.rx, &mut rig.tx] {
        mem.write_obj(0u16, GuestAddress(ring.avail() + 2)).unwrap();
        mem.write_obj(0u16, GuestAddress(ring.used() + 2)).unwrap();
        (ring.next_desc, ring.avail_idx, ring.next_used) = (0, 0, 0);
    }
    rig.activate(false);
    assert!(rig.dev().tap_watched);
    rig.post_rx(0, 1526);
    rig.settle();
    // The frame sent while reset was still on the tap.
    assert_eq!(rig.rx.take_used(&mem), [(0, 22)]);
}

#[test]
fn the_mac_survives_a_snapshot_and_the_tap_does_not_matter() {
    let rig = Rig::new(false);
    let saved = rig.dev().device_state();
    assert_eq!(saved, serde_json::json!({"mac": "02:00:00:00:00:42"}));
    let (other_tap, _peer) = seqpacket_pair();
    let mut restored = Net::new(other_tap, [2, 9, 9, 9, 9, 9]).unwrap();
    assert!(!restored.restore_device_state(&saved).unwrap());
    assert_eq!(restored.mac(), MAC);
    let mut mac = [0u8; 6];
    restored.read_config(0, &mut mac);
    assert_eq!(mac, MAC);
    for bad in [serde_json::json!({}), serde_json::json!({"mac": "nope"})] {
        assert!(restored.restore_device_state(&bad).is_err(), "{bad}");
    }
}

/// A frame that names itself: ethertype 0x88b5 (local experimental).
fn ether_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    frame.extend_from_slice(&[0x88, 0xb5]);
    frame.extend_from_slice(payload);
    frame.resize(60, 0);
    frame
}

/// A raw packet socket bound to interface `index`, non-blocking.
fn packet_socket(index: u32) -> File {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket call; the fd is owned right after.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK,
            i32::from(proto),
        )
    };
    assert!(fd >= 0, "packet socket: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just made and is owned by nobody else.
    let sock = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: sockaddr_ll is plain data; all zeros is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = index as i32;
    // SAFETY: `addr` is a sockaddr_ll of the length given.
    let ret = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(ret, 0, "bind: {}", io::Error::last_os_error());
    sock
}

/// Brings interface `name` up.
fn link_up(name: &str) {
    // SAFETY: plain socket call; the fd is owned right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    assert!(fd >= 0);
    // SAFETY: `fd` was just made and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all zeros is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as i16;
    // SAFETY: SIOCSIFFLAGS reads an ifreq, which `req` is.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    assert_eq!(ret, 0, "SIOCSIFFLAGS: {}", io::Error::last_os_error());
}

/// Frames of the test's own ethertype that `sock` has, waiting a little.
fn wait_for_ours(sock: &mut File) -> Vec<u8> {
    let mut buf = vec![0; MAX_FRAME_LEN];
    for _ in 0..200 {
        match sock.read(&mut buf) {
            Ok(n) if n >= 14 && buf[12..14] == [0x88, 0xb5] => return buf[..n].to_vec(),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("packet socket: {e}"),
        }
    }
    panic!("no frame of ours arrived");
}

/// Needs root and /dev/net/tun: a real tap in a fresh network namespace,
/// frames both ways between the queues and a packet socket on the tap.
#[test]
fn needs_root_frames_cross_a_real_tap_both_ways() {
    tap::tests::in_fresh_netns(|| {
        let (tap_file, name) = tap::create("hulltst%d").expect("needs root and /dev/net/tun");
        link_up(&name);
        let c_name = std::ffi::CString::new(name.clone()).unwrap();
        // SAFETY: a NUL-terminated name that lives across the call.
        let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        assert_ne!(index, 0);
        let mut sock = packet_socket(index);
        let (_, unused_peer) = seqpacket_pair();
        let mut rig = Rig::on(tap_file, unused_peer, true);

        // TX: the guest's frame comes out of the interface, header gone.
        let mem = rig.mem.clone();
        let out = ether_frame(b"from the guest");
        let mut with_hdr = vec![0u8; VNET_HDR_LEN];
        with_hdr.extend_from_slice(&out);
        mem.write_slice(&with_hdr, GuestAddress(BUFS)).unwrap();
        rig.tx.push(&mem, &[(BUFS, with_hdr.len() as u32, R)]);
        rig.kick(TXQ);
        rig.settle();
        assert_eq!(rig.tx.take_used(&mem), [(0, 0)]);
        assert_eq!(wait_for_ours(&mut sock), out);

        // RX: a frame sent on the interface lands in a guest buffer with
        // a plain header (no offloads: flags and GSO type 0).
        // The kernel's own frames (IPv6 MLD, router solicitations) may be
        // waiting for a buffer already: post some, and kick as a driver
        // whose avail_event was passed does.
        for n in 0..32 {
            rig.post_rx(n, 1526);
        }
        rig.kick(RXQ);
        let inbound = ether_frame(b"to the guest");
        assert_eq!((&sock).write(&inbound).unwrap(), inbound.len());
        let mut found = None;
        for _ in 0..100 {
            rig.turn();
            for (head, len) in rig.rx.take_used(&mem) {
                let got = rig.guest(BUFS + u64::from(head) * 0x2_0000, len as usize);
                if got.len() > VNET_HDR_LEN + 14 && got[VNET_HDR_LEN + 12..][..2] == [0x88, 0xb5] {
                    found = Some(got);
                }
            }
            if found.is_some() {
                break;
            }
        }
        let got = found.expect("the frame reached no RX buffer");
        assert_eq!(&got[..VNET_HDR_LEN], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(&got[VNET_HDR_LEN..], &inbound[..]);
    });
}

/// Needs root and /dev/net/tun: the tap's offloads follow what the driver
/// accepted, at each activation, and go back to none after a reset.
#[test]
fn needs_root_the_taps_offloads_follow_the_driver() {
    tap::tests::in_fresh_netns(|| {
        let (tap_file, _) = tap::create("hulltst%d").expect("needs root and /dev/net/tun");
        let (_, unused_peer) = seqpacket_pair();
        let mut rig = Rig::on(tap_file, unused_peer, false);
        assert_eq!(rig.dev().tap_offloads, 0, "nothing accepted");

        let activate_with = |rig: &mut Rig, features: u64| {
            // The device notices a reset at its next event (the tap
            // readable, a kick), before it reads anything.
            rig.dev().common.reset();
            rig.kick(RXQ);
            rig.settle();
            assert_eq!(
                rig.dev().tap_offloads,
                0,
                "a reset device takes no offloads"
            );
            rig.dev().common.acked_features = features;
            rig.activate(false);
            rig.settle();
            rig.dev().tap_offloads
        };
        let all = FEATURES | VIRTIO_F_VERSION_1;
        assert_eq!(
            activate_with(&mut rig, all),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
        let v4_only = all & !(1 << VIRTIO_NET_F_GUEST_TSO6);
        assert_eq!(
            activate_with(&mut rig, v4_only),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4
        );
        // Segments need checksum offload: without GUEST_CSUM, nothing.
        let no_csum = all & !(1 << VIRTIO_NET_F_GUEST_CSUM);
        assert_eq!(activate_with(&mut rig, no_csum), 0);
    });
}
