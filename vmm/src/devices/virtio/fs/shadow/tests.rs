//! The shadow queue against a fake backend that maps the same memfd, as
//! virtiofsd does, and answers each request with its bytes upper-cased.

use std::sync::Arc;

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use vm_memory::{Bytes, GuestAddress};

use super::*;

const W: u16 = VRING_DESC_F_WRITE as u16;

fn guest() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

fn desc(addr: u64, len: u32, flags: u16) -> Descriptor {
    Descriptor::new(addr, len, flags, 0)
}

/// The backend's view: the same region, mapped on its own.
struct Backend {
    mem: GuestMemoryMmap,
    size: u16,
    next_avail: u16,
    used: u16,
}

impl Backend {
    fn of(queue: &ShadowQueue) -> Self {
        let (file, size) = queue.region();
        let file = Arc::new(file.try_clone().unwrap());
        Self {
            mem: map(&file, size).unwrap(),
            size: queue.size(),
            next_avail: 0,
            used: 0,
        }
    }

    /// Answers every request made available: the readable bytes upper-cased
    /// into the writable descriptor, as many as fit; returns what it read.
    fn serve(&mut self) -> Vec<Vec<u8>> {
        let avail: u16 = self.mem.read_obj(GuestAddress(AVAIL_AT + 2)).unwrap();
        let mut seen = Vec::new();
        while self.next_avail != avail {
            let slot = u64::from(self.next_avail % self.size);
            let head: u16 = self
                .mem
                .read_obj(GuestAddress(AVAIL_AT + 4 + 2 * slot))
                .unwrap();
            self.next_avail = self.next_avail.wrapping_add(1);
            let (addr, len, flags, next) = self.desc(head);
            let mut request = vec![0u8; len as usize];
            self.mem
                .read_slice(&mut request, GuestAddress(addr))
                .unwrap();
            let mut written = 0;
            if flags & VRING_DESC_F_NEXT as u16 != 0 {
                let (out, cap, out_flags, _) = self.desc(next);
                assert_ne!(out_flags & W, 0, "the second descriptor is writable");
                let answer = request.to_ascii_uppercase();
                let n = answer.len().min(cap as usize);
                self.mem
                    .write_slice(&answer[..n], GuestAddress(out))
                    .unwrap();
                written = n as u32;
            }
            self.push_used(u32::from(head), written);
            seen.push(request);
        }
        seen
    }

    fn desc(&self, index: u16) -> (u64, u32, u16, u16) {
        let at = DESC_AT + 16 * u64::from(index);
        (
            self.mem.read_obj(GuestAddress(at)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 8)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 12)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 14)).unwrap(),
        )
    }

    fn push_used(&mut self, id: u32, len: u32) {
        let entry = USED_AT + 4 + 8 * u64::from(self.used % self.size);
        self.mem.write_obj(id, GuestAddress(entry)).unwrap();
        self.mem.write_obj(len, GuestAddress(entry + 4)).unwrap();
        self.used = self.used.wrapping_add(1);
        self.mem
            .write_obj(self.used, GuestAddress(USED_AT + 2))
            .unwrap();
    }
}

#[test]
fn a_request_crosses_and_its_answer_comes_back_into_the_guest() {
    let guest = guest();
    guest
        .write_slice(b"fuse-in:", GuestAddress(0x1000))
        .unwrap();
    guest.write_slice(b"hello", GuestAddress(0x2000)).unwrap();
    let mut queue = ShadowQueue::new(4, 0x1000).unwrap();
    let mut backend = Backend::of(&queue);
    // Readable in two pieces, writable in two pieces of 6 and 100 bytes.
    let chain = [
        desc(0x1000, 8, 0),
        desc(0x2000, 5, 0),
        desc(0x3000, 6, W),
        desc(0x4000, 100, W),
    ];
    queue.submit(&guest, 7, &chain).unwrap();
    assert_eq!(backend.serve(), [b"fuse-in:hello".to_vec()]);
    assert_eq!(queue.complete(Some(&guest)).unwrap(), [(7, 13)]);
    let mut out = [0u8; 13];
    guest
        .read_slice(&mut out[..6], GuestAddress(0x3000))
        .unwrap();
    guest
        .read_slice(&mut out[6..], GuestAddress(0x4000))
        .unwrap();
    assert_eq!(&out, b"FUSE-IN:HELLO");
    assert!(
        queue.complete(Some(&guest)).unwrap().is_empty(),
        "nothing new"
    );
}

#[test]
fn a_request_without_an_answer_is_one_readable_descriptor() {
    let guest = guest();
    guest.write_slice(b"forget", GuestAddress(0x1000)).unwrap();
    let mut queue = ShadowQueue::new(2, 0x1000).unwrap();
    let mut backend = Backend::of(&queue);
    queue.submit(&guest, 3, &[desc(0x1000, 6, 0)]).unwrap();
    assert_eq!(backend.serve(), [b"forget".to_vec()]);
    assert_eq!(queue.complete(Some(&guest)).unwrap(), [(3, 0)]);
}

#[test]
fn slots_run_out_and_come_back_around_the_ring() {
    let guest = guest();
    let mut queue = ShadowQueue::new(2, 0x100).unwrap();
    let mut backend = Backend::of(&queue);
    let chain = [desc(0x1000, 4, 0), desc(0x2000, 4, W)];
    for round in 0..10u32 {
        queue.submit(&guest, 2 * round, &chain).unwrap();
        queue.submit(&guest, 2 * round + 1, &chain).unwrap();
        assert!(!queue.has_room());
        assert!(matches!(
            queue.submit(&guest, 99, &chain),
            Err(ShadowError::Full)
        ));
        assert_eq!(backend.serve().len(), 2);
        let heads: Vec<u32> = queue
            .complete(Some(&guest))
            .unwrap()
            .into_iter()
            .map(|(head, _)| head)
            .collect();
        assert_eq!(heads, [2 * round, 2 * round + 1]);
    }
}

#[test]
fn bad_guest_chains_are_refused() {
    let guest = guest();
    let mut queue = ShadowQueue::new(2, 0x100).unwrap();
    assert!(matches!(
        queue.submit(&guest, 0, &[desc(0x1000, 4, W), desc(0x2000, 4, 0)]),
        Err(ShadowError::ReadableAfterWritable)
    ));
    assert!(matches!(
        queue.submit(&guest, 0, &[desc(0x1000, 0x80, 0), desc(0x2000, 0x81, W)]),
        Err(ShadowError::TooLarge { len: 0x101, .. })
    ));
    assert!(matches!(
        queue.submit(&guest, 0, &[desc(0xf_fff0, 0x20, 0)]),
        Err(ShadowError::Guest { .. })
    ));
    assert!(queue.has_room(), "a refused chain takes no slot");
    assert!(matches!(
        ShadowQueue::new(0, 0x100),
        Err(ShadowError::Slots { slots: 0 })
    ));
    assert!(matches!(
        ShadowQueue::new(MAX_SLOTS + 1, 0x100),
        Err(ShadowError::Slots { .. })
    ));
}

#[test]
fn a_lying_backend_cannot_return_what_is_not_in_flight_or_overflow_the_guest() {
    let guest = guest();
    let mut queue = ShadowQueue::new(2, 0x100).unwrap();
    let mut backend = Backend::of(&queue);
    // An answer longer than the guest offered: only the offered bytes.
    guest
        .write_slice(&[b'a'; 16], GuestAddress(0x1000))
        .unwrap();
    guest.write_slice(&[0xee; 8], GuestAddress(0x2000)).unwrap();
    queue
        .submit(&guest, 1, &[desc(0x1000, 16, 0), desc(0x2000, 4, W)])
        .unwrap();
    backend.serve();
    // The fake wrote 4 (what fit); claim 200.
    let entry = USED_AT + 4;
    backend
        .mem
        .write_obj(200u32, GuestAddress(entry + 4))
        .unwrap();
    assert_eq!(queue.complete(Some(&guest)).unwrap(), [(1, 4)]);
    let mut after = [0u8; 8];
    guest.read_slice(&mut after, GuestAddress(0x2000)).unwrap();
    assert_eq!(
        &after, b"AAAA\xee\xee\xee\xee",
        "nothing past the guest's buffer"
    );
    // Used ids that head nothing in flight are skipped; a real answer
    // returned after them still reaches the guest.
    queue.submit(&guest, 5, &[desc(0x1000, 4, 0)]).unwrap();
    backend.push_used(3, 0);
    backend.push_used(2, 0);
    backend.serve();
    assert_eq!(queue.complete(Some(&guest)).unwrap(), [(5, 0)]);
}

#[test]
fn abandoned_requests_come_back_with_their_head() {
    let guest = guest();
    let mut queue = ShadowQueue::new(2, 0x100).unwrap();
    guest
        .write_slice(b"0123456789abcdefXYZ", GuestAddress(0x1000))
        .unwrap();
    queue
        .submit(&guest, 7, &[desc(0x1000, 19, 0), desc(0x2000, 8, W)])
        .unwrap();
    let abandoned = queue.abandon();
    assert_eq!(abandoned.len(), 1);
    assert_eq!(abandoned[0].token, 7);
    assert_eq!(&abandoned[0].head, b"0123456789abcdef");
    assert_eq!(abandoned[0].writable, [(GuestAddress(0x2000), 8)]);
    assert!(queue.has_room(), "abandoned slots are free again");
    assert!(queue.abandon().is_empty());
}

#[test]
fn after_a_reset_slots_free_only_when_the_backend_returns_them() {
    let guest = guest();
    let mut queue = ShadowQueue::new(1, 0x100).unwrap();
    let mut backend = Backend::of(&queue);
    guest.write_slice(b"ping", GuestAddress(0x1000)).unwrap();
    guest.write_slice(&[0xee; 4], GuestAddress(0x2000)).unwrap();
    queue
        .submit(&guest, 1, &[desc(0x1000, 4, 0), desc(0x2000, 4, W)])
        .unwrap();
    // Nothing returned yet: the slot stays the backend's.
    assert!(queue.complete(None).unwrap().is_empty());
    assert!(!queue.has_room());
    backend.serve();
    assert_eq!(queue.complete(None).unwrap(), [(1, 0)]);
    assert!(queue.has_room());
    let mut after = [0u8; 4];
    guest.read_slice(&mut after, GuestAddress(0x2000)).unwrap();
    assert_eq!(
        after, [0xee; 4],
        "nothing copied into a reset guest's buffer"
    );
}
