//! The vsock TX path as a guest drives it: arbitrary guest memory and an
//! arbitrary descriptor chain are read as a packet, and whatever parses is
//! handed to the host-side muxer (connection requests, data, shutdowns,
//! resets, credit updates, for any ports), whose RX side is then drained.
#![no_main]

use std::os::fd::RawFd;
use std::sync::OnceLock;

use event_manager::EventSet;
use hull_vmm::devices::virtio::vsock::muxer::{EventRegistry, Muxer};
use hull_vmm::devices::virtio::vsock::packet::{read_tx, MAX_PKT_DATA};
use hull_vmm::devices::virtio::vsock::MuxerOptions;
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: u64 = 0x10_0000;

/// The muxer registers its sockets; the fuzzer has no event loop.
struct NoLoop;
impl EventRegistry for NoLoop {
    fn register(&mut self, _: RawFd, _: u32, _: EventSet) -> std::io::Result<()> {
        Ok(())
    }
    fn reregister(&mut self, _: RawFd, _: u32, _: EventSet) -> std::io::Result<()> {
        Ok(())
    }
    fn deregister(&mut self, _: RawFd, _: u32) -> std::io::Result<()> {
        Ok(())
    }
}

fn uds_dir() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hull-fuzz-vsock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    // [n descriptors: 1 byte][n × (addr u32, len u16, flags u8)][memory bytes]
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 8) + 1;
    if rest.len() < n * 7 {
        return;
    }
    let (table, contents) = rest.split_at(n * 7);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    // The memory contents go where descriptors most likely point.
    let _ = mem.write_slice(&contents[..contents.len().min(0x4000)], GuestAddress(0x1_0000));
    let descs: Vec<RawDescriptor> = table
        .chunks_exact(7)
        .map(|d| {
            let addr = u64::from(u32::from_le_bytes([d[0], d[1], d[2], d[3]])) % (MEM_SIZE + 0x1000);
            let len = u32::from(u16::from_le_bytes([d[4], d[5]]));
            let flags = u16::from(d[6]) & 0x2; // WRITE only; NEXT is set by the mock
            RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
        })
        .collect();
    let queue = MockSplitQueue::new(&mem, 16);
    let Ok(chain) = queue.build_desc_chain(&descs) else {
        return;
    };
    let mut payload = vec![0u8; MAX_PKT_DATA];
    let Ok(header) = read_tx(&mem, chain, &mut payload) else {
        return;
    };
    let len = (header.len as usize).min(payload.len());

    let uds = uds_dir().join("v.sock");
    let _ = std::fs::remove_file(&uds);
    let Ok(mut muxer) = Muxer::new(3, &uds, MuxerOptions::default()) else {
        return;
    };
    let mut registry = NoLoop;
    let _ = muxer.activate(&mut registry);
    muxer.send_pkt(&header, &payload[..len], &mut registry);
    // Whatever the muxer answers (a reset, a response) must come out whole.
    let mut rx = vec![0u8; MAX_PKT_DATA];
    let mut drained = 0;
    while muxer.has_pending_rx() && drained < 64 {
        let _ = muxer.recv_pkt(&mut rx, &mut registry);
        drained += 1;
    }
    muxer.deactivate(&mut registry);
});
