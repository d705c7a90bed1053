//! Frames between descriptor chains and a host buffer: every check of what
//! the guest put in a chain lives here. A frame is the 12-byte virtio-net
//! header followed by the Ethernet frame, moved as bytes: nothing of the
//! guest's packet is parsed on the host.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestMemoryError};

use super::{MAX_FRAME_LEN, VNET_HDR_LEN};
use crate::vstate::memory::GuestMemoryMmap;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("a TX chain has a device-writable descriptor")]
    WritableTx,
    #[error("an RX chain has a device-readable descriptor")]
    ReadableRx,
    #[error("the TX chain holds {len} bytes, less than the {VNET_HDR_LEN}-byte header")]
    ShortTx { len: usize },
    #[error("the TX chain holds more than {MAX_FRAME_LEN} bytes")]
    TooLongTx,
    #[error("the RX chain holds {capacity} bytes, less than the {VNET_HDR_LEN}-byte header")]
    ShortRx { capacity: u64 },
    #[error("a {len}-byte frame does not fit the RX chain's {capacity} bytes")]
    DoesNotFit { len: usize, capacity: u64 },
    #[error("descriptor at {addr:#x}, {len} bytes, is outside guest memory")]
    Memory {
        addr: u64,
        len: u32,
        #[source]
        source: GuestMemoryError,
    },
}

fn memory(desc: &Descriptor) -> impl FnOnce(GuestMemoryError) -> FrameError {
    let (addr, len) = (desc.addr().0, desc.len());
    move |source| FrameError::Memory { addr, len, source }
}

/// Gathers a TX chain's descriptors (header, then frame) into `buf`, which
/// holds [`MAX_FRAME_LEN`] bytes; returns the length. Every descriptor must
/// be device-readable; the lengths are summed before anything is copied.
pub fn gather_tx(
    mem: &GuestMemoryMmap,
    descs: &[Descriptor],
    buf: &mut [u8],
) -> Result<usize, FrameError> {
    let mut total = 0usize;
    for desc in descs {
        if desc.is_write_only() {
            return Err(FrameError::WritableTx);
        }
        total = total.saturating_add(desc.len() as usize);
    }
    if total > MAX_FRAME_LEN || total > buf.len() {
        return Err(FrameError::TooLongTx);
    }
    if total < VNET_HDR_LEN {
        return Err(FrameError::ShortTx { len: total });
    }
    let mut at = 0;
    for desc in descs {
        let len = desc.len() as usize;
        mem.read_slice(&mut buf[at..at + len], desc.addr())
            .map_err(memory(desc))?;
        at += len;
    }
    Ok(total)
}

/// What an RX chain offers: the sum of its descriptors' lengths, once each
/// is checked to be device-writable.
pub fn rx_capacity(descs: &[Descriptor]) -> Result<u64, FrameError> {
    let mut capacity = 0u64;
    for desc in descs {
        if !desc.is_write_only() {
            return Err(FrameError::ReadableRx);
        }
        capacity += u64::from(desc.len());
    }
    if capacity < VNET_HDR_LEN as u64 {
        return Err(FrameError::ShortRx { capacity });
    }
    Ok(capacity)
}

/// Scatters `frame` (header included) over an RX chain whose capacity
/// [`rx_capacity`] returned; returns the used length.
pub fn scatter_rx(
    mem: &GuestMemoryMmap,
    descs: &[Descriptor],
    capacity: u64,
    frame: &[u8],
) -> Result<u32, FrameError> {
    if frame.len() as u64 > capacity {
        return Err(FrameError::DoesNotFit {
            len: frame.len(),
            capacity,
        });
    }
    let mut rest = frame;
    for desc in descs {
        if rest.is_empty() {
            break;
        }
        let n = rest.len().min(desc.len() as usize);
        mem.write_slice(&rest[..n], desc.addr())
            .map_err(memory(desc))?;
        rest = &rest[n..];
    }
    // At most MAX_FRAME_LEN: read from the tap into a buffer of that size.
    Ok(frame.len() as u32)
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestAddress;

    use super::*;

    const R: u16 = 0;
    const W: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16) -> Descriptor {
        Descriptor::new(addr, len, flags, 0)
    }

    #[test]
    fn tx_chains_are_gathered_in_order_with_bounds() {
        let mem = mem();
        mem.write_slice(&[1; 12], GuestAddress(0x100)).unwrap();
        mem.write_slice(&[2; 60], GuestAddress(0x800)).unwrap();
        let mut buf = vec![0; MAX_FRAME_LEN];
        let descs = [desc(0x100, 12, R), desc(0x800, 60, R)];
        assert_eq!(gather_tx(&mem, &descs, &mut buf).unwrap(), 72);
        assert_eq!(&buf[..12], &[1; 12]);
        assert_eq!(&buf[12..72], &[2; 60]);

        let err = |descs: &[Descriptor]| gather_tx(&mem, descs, &mut vec![0; MAX_FRAME_LEN]);
        assert!(matches!(
            err(&[desc(0x100, 12, W)]),
            Err(FrameError::WritableTx)
        ));
        assert!(matches!(
            err(&[desc(0x100, 11, R)]),
            Err(FrameError::ShortTx { len: 11 })
        ));
        assert!(matches!(
            err(&[desc(0, 0x8000, R), desc(0, 0x8000, R), desc(0, 27, R)]),
            Err(FrameError::TooLongTx)
        ));
        assert!(matches!(
            err(&[desc(0, u32::MAX, R), desc(0, u32::MAX, R)]),
            Err(FrameError::TooLongTx)
        ));
        assert!(matches!(
            err(&[desc(0xfff0, 0x20, R)]),
            Err(FrameError::Memory { addr: 0xfff0, .. })
        ));
    }

    #[test]
    fn rx_frames_are_scattered_only_when_they_fit() {
        let mem = mem();
        let descs = [desc(0x100, 12, W), desc(0x800, 100, W)];
        let capacity = rx_capacity(&descs).unwrap();
        assert_eq!(capacity, 112);
        let frame: Vec<u8> = (0..80).collect();
        assert_eq!(scatter_rx(&mem, &descs, capacity, &frame).unwrap(), 80);
        let mut back = [0u8; 68];
        mem.read_slice(&mut back, GuestAddress(0x800)).unwrap();
        assert_eq!(&back[..], &frame[12..]);
        assert!(matches!(
            scatter_rx(&mem, &descs, capacity, &[0; 113]),
            Err(FrameError::DoesNotFit { len: 113, .. })
        ));
        assert!(matches!(
            rx_capacity(&[desc(0x100, 12, W), desc(0x800, 100, R)]),
            Err(FrameError::ReadableRx)
        ));
        assert!(matches!(
            rx_capacity(&[desc(0x100, 11, W)]),
            Err(FrameError::ShortRx { capacity: 11 })
        ));
        let outside = [desc(0xfff0, 0x100, W)];
        assert!(matches!(
            scatter_rx(&mem, &outside, 0x100, &[0; 0x20]),
            Err(FrameError::Memory { .. })
        ));
    }
}
