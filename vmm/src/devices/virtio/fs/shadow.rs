//! The shadow queue between the guest-facing virtio-fs device and its
//! vhost-user backend (virtiofsd): a split virtqueue and bounce buffers in
//! a memfd of their own, the only memory the backend is given
//! (docs/virtio-fs-design.md). Guest memory stays private to the VMM, so a
//! VM restored copy-on-write from a template can still share a directory,
//! and the backend never sees the guest.
//!
//! One request is one slot: the guest chain's readable bytes (the FUSE
//! in-header, arguments, write data) are copied to the slot's start, its
//! writable part follows, and the shadow chain is one readable and (if the
//! guest gave any) one writable descriptor over them. When the backend
//! returns the chain, the bytes it wrote go back into the guest's writable
//! descriptors. What the backend writes into the shared region is as
//! untrusted as what the guest writes into its own memory: used ids and
//! lengths are checked.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryError};

use crate::logger::guest_warn;
use crate::vstate::memory::GuestMemoryMmap;

/// Where the rings sit in the region; the bounce slots start at
/// [`SLOTS_AT`]. Room for up to [`MAX_SLOTS`] slots.
const DESC_AT: u64 = 0;
const AVAIL_AT: u64 = 0x1000;
const USED_AT: u64 = 0x2000;
const SLOTS_AT: u64 = 0x4000;
/// Two descriptors per slot, and the rings above must fit their pages.
pub const MAX_SLOTS: u16 = 128;

#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    #[error("making the shadow region (memfd)")]
    Memfd(#[source] std::io::Error),
    #[error("mapping the shadow region")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    #[error("{slots} slots: between 1 and {MAX_SLOTS} are possible")]
    Slots { slots: u16 },
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    #[error("the request needs {len} bytes, more than a slot's {slot_bytes}")]
    TooLarge { len: u64, slot_bytes: u32 },
    #[error("every slot is in flight")]
    Full,
    #[error("descriptor at {addr:#x}, {len} bytes, is outside guest memory")]
    Guest {
        addr: u64,
        len: u32,
        #[source]
        source: GuestMemoryError,
    },
    #[error("accessing the shadow region at {at:#x}")]
    Region {
        at: u64,
        #[source]
        source: GuestMemoryError,
    },
}

/// A request in flight: where its answer goes in the guest.
struct InFlight {
    /// The caller's name for the guest chain (its queue and head).
    token: u32,
    /// The guest's writable descriptors, in order.
    writable: Vec<(GuestAddress, u32)>,
    /// Where the readable part starts in the region.
    in_at: u64,
    /// Where the writable part starts in the region.
    out_at: u64,
}

/// A request the backend will never answer (see [`ShadowQueue::abandon`]).
pub struct Abandoned {
    pub token: u32,
    /// The first bytes of the request (a FUSE request's in-header starts
    /// with its length, opcode and unique id).
    pub head: [u8; 16],
    /// The guest's writable descriptors, in order.
    pub writable: Vec<(GuestAddress, u32)>,
}

/// A shadow virtqueue of `slots` requests of up to `slot_bytes` each.
pub struct ShadowQueue {
    file: Arc<File>,
    mem: GuestMemoryMmap,
    slot_bytes: u32,
    slots: Vec<Option<InFlight>>,
    next_avail: u16,
    next_used: u16,
}

impl ShadowQueue {
    pub fn new(slots: u16, slot_bytes: u32) -> Result<Self, ShadowError> {
        if slots == 0 || slots > MAX_SLOTS {
            return Err(ShadowError::Slots { slots });
        }
        let size = SLOTS_AT + u64::from(slots) * u64::from(slot_bytes);
        // SAFETY: memfd_create with a NUL-terminated name and flags; the
        // returned fd is owned right below.
        let fd =
            unsafe { libc::memfd_create(c"hull-virtio-fs-shadow".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(ShadowError::Memfd(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just made and nothing else owns it.
        let file = Arc::new(File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
        file.set_len(size).map_err(ShadowError::Memfd)?;
        let mem = map(&file, size)?;
        Ok(Self {
            file,
            mem,
            slot_bytes,
            slots: (0..slots).map(|_| None).collect(),
            next_avail: 0,
            next_used: 0,
        })
    }

    /// The region, to hand to the backend (`SET_MEM_TABLE`): its fd and
    /// size; the ring addresses below are offsets into it.
    pub fn region(&self) -> (&File, u64) {
        let size = SLOTS_AT + self.slots.len() as u64 * u64::from(self.slot_bytes);
        (&self.file, size)
    }

    /// Where the region is mapped in this process: the `userspace_addr`
    /// of the memory table, and the base of the ring addresses a vhost-user
    /// frontend sends.
    pub fn host_address(&self) -> u64 {
        use vm_memory::GuestMemoryBackend;
        self.mem
            .get_host_address(GuestAddress(0))
            .expect("the region starts at 0") as u64
    }

    /// The queue size the backend is told (`SET_VRING_NUM`).
    pub fn size(&self) -> u16 {
        2 * self.slots.len() as u16
    }

    /// Descriptor table, avail ring, used ring: offsets in the region.
    pub fn ring_addresses(&self) -> (u64, u64, u64) {
        (DESC_AT, AVAIL_AT, USED_AT)
    }

    /// Whether a slot is free for [`Self::submit`].
    pub fn has_room(&self) -> bool {
        self.slots.iter().any(Option::is_none)
    }

    /// Puts a guest request (its descriptors `descs`, read from `guest`)
    /// on the shadow queue, under the caller's `token`. The caller kicks
    /// the backend.
    pub fn submit(
        &mut self,
        guest: &GuestMemoryMmap,
        token: u32,
        descs: &[Descriptor],
    ) -> Result<(), ShadowError> {
        let (mut readable, mut writable) = (0u64, Vec::new());
        for desc in descs {
            if desc.is_write_only() {
                writable.push((desc.addr(), desc.len()));
            } else if !writable.is_empty() {
                return Err(ShadowError::ReadableAfterWritable);
            } else {
                readable += u64::from(desc.len());
            }
        }
        let out_len: u64 = writable.iter().map(|&(_, len)| u64::from(len)).sum();
        if readable + out_len > u64::from(self.slot_bytes) {
            return Err(ShadowError::TooLarge {
                len: readable + out_len,
                slot_bytes: self.slot_bytes,
            });
        }
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(ShadowError::Full)?;
        let base = SLOTS_AT + slot as u64 * u64::from(self.slot_bytes);
        let mut at = base;
        let mut chunk = Vec::new();
        for desc in descs.iter().filter(|d| !d.is_write_only()) {
            chunk.resize(desc.len() as usize, 0);
            guest
                .read_slice(&mut chunk, desc.addr())
                .map_err(|source| ShadowError::Guest {
                    addr: desc.addr().0,
                    len: desc.len(),
                    source,
                })?;
            self.write(&chunk, at)?;
            at += chunk.len() as u64;
        }
        // The chain: slot * 2 readable, slot * 2 + 1 writable (if any).
        let first = 2 * slot as u16;
        let has_out = out_len > 0;
        let next_flag = if has_out { VRING_DESC_F_NEXT as u16 } else { 0 };
        self.write_desc(first, base, readable as u32, next_flag, first + 1)?;
        if has_out {
            self.write_desc(first + 1, at, out_len as u32, VRING_DESC_F_WRITE as u16, 0)?;
        }
        let ring_slot = u64::from(self.next_avail % self.size());
        self.write(&first.to_le_bytes(), AVAIL_AT + 4 + 2 * ring_slot)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        // The entry before the index: the backend reads them in that order.
        fence(Ordering::Release);
        self.write(&self.next_avail.to_le_bytes(), AVAIL_AT + 2)?;
        self.slots[slot] = Some(InFlight {
            token,
            in_at: base,
            writable,
            out_at: at,
        });
        Ok(())
    }

    /// The requests the backend returned since the last call: their
    /// answers copied into the guest's writable descriptors; each as its
    /// token and the bytes written, for the guest's used ring. A used
    /// entry naming no request in flight is skipped with a warning: the
    /// requests returned with it must still reach the guest.
    /// With no `guest` (the driver reset the device: the chains are gone),
    /// the slots are freed and nothing is copied. A request's slot is free
    /// only once the backend returned it: it may still be writing there.
    pub fn complete(
        &mut self,
        guest: Option<&GuestMemoryMmap>,
    ) -> Result<Vec<(u32, u32)>, ShadowError> {
        let used_idx: u16 = self.read_obj(USED_AT + 2)?;
        // The entries after the index the backend published them with.
        fence(Ordering::Acquire);
        let mut done = Vec::new();
        while self.next_used != used_idx {
            let entry = USED_AT + 4 + 8 * u64::from(self.next_used % self.size());
            let id: u32 = self.read_obj(entry)?;
            let len: u32 = self.read_obj(entry + 4)?;
            self.next_used = self.next_used.wrapping_add(1);
            let slot = (id / 2) as usize;
            let in_flight = match self.slots.get_mut(slot) {
                Some(s) if id.is_multiple_of(2) && s.is_some() => s.take().expect("checked"),
                _ => {
                    guest_warn!("virtio-fs: the backend returned descriptor {id}, which heads no request in flight");
                    continue;
                }
            };
            let written = match guest {
                Some(guest) => self.copy_back(guest, &in_flight, len)?,
                None => 0,
            };
            done.push((in_flight.token, written));
        }
        Ok(done)
    }

    /// Every request still in flight, taken back: for when the backend is
    /// gone and the caller answers them itself.
    pub fn abandon(&mut self) -> Vec<Abandoned> {
        let mut abandoned = Vec::new();
        for in_flight in self.slots.iter_mut().filter_map(Option::take) {
            let mut head = [0u8; 16];
            // The slot is inside the region: cannot fail; zeros if it did.
            let _ = self
                .mem
                .read_slice(&mut head, GuestAddress(in_flight.in_at));
            abandoned.push(Abandoned {
                token: in_flight.token,
                head,
                writable: in_flight.writable,
            });
        }
        abandoned
    }

    /// Copies up to `len` answer bytes (no more than the guest offered)
    /// into the guest; returns how many.
    fn copy_back(
        &self,
        guest: &GuestMemoryMmap,
        in_flight: &InFlight,
        len: u32,
    ) -> Result<u32, ShadowError> {
        let mut left = u64::from(len);
        let mut from = in_flight.out_at;
        let mut written = 0u32;
        let mut chunk = Vec::new();
        for &(addr, cap) in &in_flight.writable {
            if left == 0 {
                break;
            }
            let n = left.min(u64::from(cap));
            chunk.resize(n as usize, 0);
            self.mem
                .read_slice(&mut chunk, GuestAddress(from))
                .map_err(|source| ShadowError::Region { at: from, source })?;
            guest
                .write_slice(&chunk, addr)
                .map_err(|source| ShadowError::Guest {
                    addr: addr.0,
                    len: cap,
                    source,
                })?;
            from += n;
            left -= n;
            written += n as u32;
        }
        Ok(written)
    }

    fn write_desc(
        &self,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<(), ShadowError> {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        self.write(&raw, DESC_AT + 16 * u64::from(index))
    }

    fn write(&self, bytes: &[u8], at: u64) -> Result<(), ShadowError> {
        self.mem
            .write_slice(bytes, GuestAddress(at))
            .map_err(|source| ShadowError::Region { at, source })
    }

    fn read_obj<T: vm_memory::ByteValued>(&self, at: u64) -> Result<T, ShadowError> {
        self.mem
            .read_obj(GuestAddress(at))
            .map_err(|source| ShadowError::Region { at, source })
    }
}

/// The region mapped shared, as the backend maps it.
fn map(file: &Arc<File>, size: u64) -> Result<GuestMemoryMmap, ShadowError> {
    let offset = FileOffset::from_arc(file.clone(), 0);
    GuestMemoryMmap::from_ranges_with_files([(GuestAddress(0), size as usize, Some(offset))])
        .map_err(ShadowError::Map)
}

/// The region's fd, for `SCM_RIGHTS`.
impl AsRawFd for ShadowQueue {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests;
