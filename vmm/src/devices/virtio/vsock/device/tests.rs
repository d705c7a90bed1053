//! The device on a real event manager, with mock split queues in guest
//! memory standing in for the driver.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemory};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::devices::virtio::vsock::packet::tests::{desc, test_mem};
use crate::devices::virtio::vsock::packet::{
    HDR_SIZE, HOST_CID, OP_REQUEST, OP_RESPONSE, TYPE_STREAM,
};
use crate::devices::virtio::VirtioInterrupt;
use crate::vstate::interrupt::EventFdIrq;

const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
const GUEST_CID: u32 = 3;

type Loop = EventManager<Arc<Mutex<Vsock>>>;

fn run_until(em: &mut Loop, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        em.run_with_timeout(20).unwrap();
    }
}

fn read_hdr<M: GuestMemory>(mem: &M, addr: u64) -> PacketHeader {
    let mut raw = [0u8; HDR_SIZE];
    mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
    PacketHeader::from_bytes(&raw)
}

fn guest_hdr(op: u16, src_port: u32, dst_port: u32, len: u32) -> PacketHeader {
    PacketHeader {
        src_cid: u64::from(GUEST_CID),
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..PacketHeader::default()
    }
}

fn kick(dev: &Arc<Mutex<Vsock>>, queue: usize) {
    dev.lock().unwrap().common().queue_evts[queue]
        .write(1)
        .unwrap();
}

#[test]
fn host_connect_round_trip_through_the_queues() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let config = VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: path.clone(),
    };
    let dev = Arc::new(Mutex::new(Vsock::new(&config).unwrap()));
    let mem = test_mem();
    let rxq = MockSplitQueue::create(&mem, GuestAddress(0x0), 16);
    let txq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
    let evq = MockSplitQueue::create(&mem, GuestAddress(0x2000), 16);
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    {
        let mut d = dev.lock().unwrap();
        let mut cid = [0u8; 8];
        d.read_config(0, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), 3);
        let c = d.common_mut();
        c.queues[RXQ] = rxq.create_queue().unwrap();
        c.queues[TXQ] = txq.create_queue().unwrap();
        c.queues[EVQ] = evq.create_queue().unwrap();
        let line = Arc::new(EventFdIrq(irq.try_clone().unwrap()));
        c.activate(mem.clone(), Arc::new(VirtioInterrupt::new(line)))
            .unwrap();
    }
    let mut em = Loop::new().unwrap();
    em.add_subscriber(dev.clone());
    em.run_with_timeout(0).unwrap();

    // Host: CONNECT. Guest: one RX buffer, which receives the REQUEST.
    let mut host = UnixStream::connect(&path).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"CONNECT 1234\n").unwrap();
    rxq.add_desc_chains(&[desc(0x1_0000, 0x1000, F_WRITE)], 0)
        .unwrap();
    kick(&dev, RXQ);
    run_until(&mut em, "the REQUEST", || rxq.used().idx().load() == 1);
    let req = read_hdr(&mem, 0x1_0000);
    assert_eq!((req.op, req.dst_port, req.dst_cid), (OP_REQUEST, 1234, 3));
    let used = rxq.used().ring().ref_at(0).unwrap().load();
    assert_eq!((used.id(), used.len()), (0, HDR_SIZE as u32));
    assert!(irq.read().unwrap() > 0);
    let local = req.src_port;

    // Guest: RESPONSE on the TX queue. Host: reads OK.
    let resp = guest_hdr(OP_RESPONSE, 1234, local, 0);
    mem.write_slice(&resp.to_bytes(), GuestAddress(0x2_0000))
        .unwrap();
    txq.add_desc_chains(&[desc(0x2_0000, HDR_SIZE as u32, 0)], 0)
        .unwrap();
    kick(&dev, TXQ);
    run_until(&mut em, "the RESPONSE", || txq.used().idx().load() == 1);
    let mut ok = vec![0u8; format!("OK {local}\n").len()];
    host.read_exact(&mut ok).unwrap();
    assert_eq!(ok, format!("OK {local}\n").as_bytes());

    // Host to guest: lands in the next RX buffer.
    host.write_all(b"hello").unwrap();
    rxq.add_desc_chains(&[desc(0x3_0000, 0x1000, F_WRITE)], 1)
        .unwrap();
    kick(&dev, RXQ);
    run_until(&mut em, "host data", || rxq.used().idx().load() == 2);
    let rw = read_hdr(&mem, 0x3_0000);
    assert_eq!((rw.op, rw.len, rw.src_port), (OP_RW, 5, local));
    let mut data = [0u8; 5];
    mem.read_slice(&mut data, GuestAddress(0x3_0000 + HDR_SIZE as u64))
        .unwrap();
    assert_eq!(&data, b"hello");

    // Guest to host: header and data in two descriptors; then a malformed
    // chain (device-writable TX descriptor), which is consumed and dropped.
    mem.write_slice(
        &guest_hdr(OP_RW, 1234, local, 5).to_bytes(),
        GuestAddress(0x4_0000),
    )
    .unwrap();
    mem.write_slice(b"world", GuestAddress(0x5_0000)).unwrap();
    let split = |addr: u64, len: usize, flags: u32, next: u16| {
        RawDescriptor::from(SplitDescriptor::new(addr, len as u32, flags as u16, next))
    };
    // Descriptor table slots 1-2 (one chain) and 3 (another).
    let chain = [
        split(0x4_0000, HDR_SIZE, VRING_DESC_F_NEXT, 2),
        split(0x5_0000, 5, 0, 0),
        split(0x6_0000, HDR_SIZE, VRING_DESC_F_WRITE, 0),
    ];
    txq.add_desc_chains(&chain, 1).unwrap();
    kick(&dev, TXQ);
    run_until(&mut em, "guest data", || txq.used().idx().load() == 3);
    let mut got = [0u8; 5];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"world");
    assert_eq!(dev.lock().unwrap().muxer.connection_count(), 1);

    // Dropping the device removes the socket file.
    drop(em);
    drop(dev);
    assert!(!path.exists());
}
