//! The virtio-blk request parser on arbitrary descriptor chains over
//! arbitrary guest memory contents: it must accept or reject every chain
//! without panicking, and never hand back segments outside guest memory.
#![no_main]

use hull_vmm::devices::virtio::block::request::Request;
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: u64 = 0x10_0000;

fuzz_target!(|data: &[u8]| {
    // [capacity: 1 byte][n: 1 byte][n × (addr u32, len u32, flags u8)][memory]
    let [cap, n, rest @ ..] = data else {
        return;
    };
    let n = usize::from(n % 16) + 1;
    if rest.len() < n * 9 {
        return;
    }
    let (table, contents) = rest.split_at(n * 9);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    let _ = mem.write_slice(&contents[..contents.len().min(0x4000)], GuestAddress(0x1_0000));
    let descs: Vec<Descriptor> = table
        .chunks_exact(9)
        .map(|d| {
            let addr = u64::from(u32::from_le_bytes([d[0], d[1], d[2], d[3]])) % (MEM_SIZE + 0x1000);
            let len = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
            Descriptor::new(addr, len, u16::from(d[8]) & 0x2, 0)
        })
        .collect();
    let capacity = u64::from(*cap) * 8;
    if let Ok(request) = Request::parse(&mem, &descs, capacity) {
        let _ = format!("{request:?}");
    }
});
