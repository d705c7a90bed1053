//! The virtio-vsock packet (virtio 1.2, section 5.10.6): a 44-byte
//! little-endian header, followed on `OP_RW` by `len` bytes of data, carried
//! in one descriptor chain. TX chains (guest to host) are device-readable, RX
//! chains (host to guest) device-writable.
//!
//! Everything here treats the chain as hostile: a short header, a descriptor
//! in the wrong direction, a `len` past the end of the buffers or an address
//! outside guest memory is a [`PacketError`], never a panic or an access out
//! of bounds.

use std::io::{self, Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};

use crate::vstate::memory::GuestMemoryMmap;

/// Size of the packet header on the wire.
pub const HDR_SIZE: usize = 44;
/// Largest data payload hull accepts or produces in one packet (the Linux
/// driver's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PKT_DATA: usize = 64 * 1024;

/// The host's CID; the guest reaches the VMM at this address.
pub const HOST_CID: u64 = 2;
/// `type` of a stream socket, the only type this device carries.
pub const TYPE_STREAM: u16 = 1;

/// Packet operations.
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// `OP_SHUTDOWN` flags: the sender will receive / send no more data.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("descriptor {index} of a TX chain is device-writable")]
    WriteOnlyDescriptor { index: usize },
    #[error("descriptor {index} of an RX chain is device-readable")]
    ReadOnlyDescriptor { index: usize },
    #[error("descriptor chain is not valid for guest memory")]
    Chain(#[source] virtio_queue::Error),
    #[error("descriptor chain holds {len} bytes, less than the {HDR_SIZE}-byte header")]
    ShortHeader { len: usize },
    #[error("packet data length {len} exceeds the maximum of {MAX_PKT_DATA}")]
    DataTooLong { len: u32 },
    #[error("packet data length {len} exceeds the {available} bytes the chain holds")]
    DataBeyondBuffer { len: u32, available: usize },
    #[error("accessing guest memory")]
    Memory(#[source] io::Error),
}

/// The packet header, in host byte order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl PacketHeader {
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        Self {
            src_cid: u64::from_le_bytes(field(b, 0)),
            dst_cid: u64::from_le_bytes(field(b, 8)),
            src_port: u32::from_le_bytes(field(b, 16)),
            dst_port: u32::from_le_bytes(field(b, 20)),
            len: u32::from_le_bytes(field(b, 24)),
            type_: u16::from_le_bytes(field(b, 28)),
            op: u16::from_le_bytes(field(b, 30)),
            flags: u32::from_le_bytes(field(b, 32)),
            buf_alloc: u32::from_le_bytes(field(b, 36)),
            fwd_cnt: u32::from_le_bytes(field(b, 40)),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

fn field<const N: usize>(b: &[u8; HDR_SIZE], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

/// Read a guest TX packet: returns its header, with its data (for `OP_RW`)
/// copied into `data[..hdr.len]`. `data` must hold [`MAX_PKT_DATA`] bytes.
pub fn read_tx(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    data: &mut [u8],
) -> Result<PacketHeader, PacketError> {
    if let Some(index) = chain.clone().position(|d| d.is_write_only()) {
        return Err(PacketError::WriteOnlyDescriptor { index });
    }
    let mut reader: Reader = Reader::new(mem, chain).map_err(PacketError::Chain)?;
    let total = reader.available_bytes();
    let mut raw = [0u8; HDR_SIZE];
    if total < HDR_SIZE {
        return Err(PacketError::ShortHeader { len: total });
    }
    reader.read_exact(&mut raw).map_err(PacketError::Memory)?;
    let hdr = PacketHeader::from_bytes(&raw);
    let len = hdr.len as usize;
    if len > MAX_PKT_DATA {
        return Err(PacketError::DataTooLong { len: hdr.len });
    }
    if len > total - HDR_SIZE {
        return Err(PacketError::DataBeyondBuffer {
            len: hdr.len,
            available: total - HDR_SIZE,
        });
    }
    if hdr.op == OP_RW {
        let dst = data
            .get_mut(..len)
            .ok_or(PacketError::DataTooLong { len: hdr.len })?;
        reader.read_exact(dst).map_err(PacketError::Memory)?;
    }
    Ok(hdr)
}

/// A guest RX buffer, checked and ready to receive one packet.
pub struct RxBuffer<'a> {
    writer: Writer<'a>,
}

impl<'a> RxBuffer<'a> {
    pub fn new(
        mem: &'a GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<Self, PacketError> {
        if let Some(index) = chain.clone().position(|d| !d.is_write_only()) {
            return Err(PacketError::ReadOnlyDescriptor { index });
        }
        let writer: Writer = Writer::new(mem, chain).map_err(PacketError::Chain)?;
        let len = writer.available_bytes();
        if len < HDR_SIZE {
            return Err(PacketError::ShortHeader { len });
        }
        Ok(Self { writer })
    }

    /// How many data bytes fit after the header.
    pub fn data_capacity(&self) -> usize {
        (self.writer.available_bytes() - HDR_SIZE).min(MAX_PKT_DATA)
    }

    /// Write the header and `data` (which must be `hdr.len` bytes long and
    /// fit [`Self::data_capacity`]); returns the bytes written, for the used ring.
    pub fn write(mut self, hdr: &PacketHeader, data: &[u8]) -> Result<u32, PacketError> {
        if data.len() != hdr.len as usize || data.len() > self.data_capacity() {
            return Err(PacketError::DataBeyondBuffer {
                len: hdr.len,
                available: self.data_capacity(),
            });
        }
        self.writer
            .write_all(&hdr.to_bytes())
            .and_then(|()| self.writer.write_all(data))
            .map_err(PacketError::Memory)?;
        // At most HDR_SIZE + MAX_PKT_DATA.
        Ok((HDR_SIZE + data.len()) as u32)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const F_WRITE: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

    pub(crate) fn test_mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    pub(crate) fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn hdr(op: u16, len: u32) -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 2000,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        }
    }

    fn parse_tx(
        mem: &GuestMemoryMmap,
        descs: &[RawDescriptor],
    ) -> Result<PacketHeader, PacketError> {
        let q = MockSplitQueue::new(mem, 16);
        let chain = q.build_desc_chain(descs).unwrap();
        let mut data = vec![0u8; MAX_PKT_DATA];
        read_tx(mem, chain, &mut data)
    }

    #[test]
    fn header_round_trips_through_bytes() {
        let h = PacketHeader {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0xdead_beef,
            dst_port: 5,
            len: 6,
            type_: 1,
            op: OP_SHUTDOWN,
            flags: SHUTDOWN_BOTH,
            buf_alloc: 9,
            fwd_cnt: 10,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[30..32], &OP_SHUTDOWN.to_le_bytes());
        assert_eq!(PacketHeader::from_bytes(&b), h);
    }

    #[test]
    fn tx_packet_with_data_split_across_descriptors() {
        let mem = test_mem();
        mem.write_slice(&hdr(OP_RW, 5).to_bytes(), GuestAddress(0x1_0000))
            .unwrap();
        mem.write_slice(b"hello", GuestAddress(0x2_0000)).unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        let chain = q
            .build_desc_chain(&[desc(0x1_0000, 44, 0), desc(0x2_0000, 5, 0)])
            .unwrap();
        let mut data = vec![0u8; MAX_PKT_DATA];
        let h = read_tx(&mem, chain, &mut data).unwrap();
        assert_eq!(h, hdr(OP_RW, 5));
        assert_eq!(&data[..5], b"hello");
    }

    #[test]
    fn tx_chain_shorter_than_header_is_rejected() {
        let mem = test_mem();
        let err = parse_tx(&mem, &[desc(0x1_0000, 43, 0)]).unwrap_err();
        assert!(
            matches!(err, PacketError::ShortHeader { len: 43 }),
            "{err:?}"
        );
    }

    #[test]
    fn tx_chain_with_writable_descriptor_is_rejected() {
        let mem = test_mem();
        let err = parse_tx(&mem, &[desc(0x1_0000, 44, 0), desc(0x2_0000, 8, F_WRITE)]).unwrap_err();
        assert!(
            matches!(err, PacketError::WriteOnlyDescriptor { index: 1 }),
            "{err:?}"
        );
    }

    #[test]
    fn tx_len_beyond_the_buffer_is_rejected() {
        let mem = test_mem();
        mem.write_slice(&hdr(OP_RW, 100).to_bytes(), GuestAddress(0x1_0000))
            .unwrap();
        let err = parse_tx(&mem, &[desc(0x1_0000, 44 + 99, 0)]).unwrap_err();
        assert!(
            matches!(
                err,
                PacketError::DataBeyondBuffer {
                    len: 100,
                    available: 99
                }
            ),
            "{err:?}"
        );
        mem.write_slice(&hdr(OP_RW, u32::MAX).to_bytes(), GuestAddress(0x1_0000))
            .unwrap();
        let err = parse_tx(&mem, &[desc(0x1_0000, 44, 0)]).unwrap_err();
        assert!(matches!(err, PacketError::DataTooLong { .. }), "{err:?}");
    }

    #[test]
    fn descriptor_outside_guest_memory_is_rejected() {
        let mem = test_mem();
        let err = parse_tx(&mem, &[desc(0xFFFF_F000, 44, 0)]).unwrap_err();
        assert!(matches!(err, PacketError::Chain(_)), "{err:?}");
        // Straddling the end of memory.
        let err = parse_tx(&mem, &[desc(0x10_0000 - 20, 44, 0)]).unwrap_err();
        assert!(matches!(err, PacketError::Chain(_)), "{err:?}");

        let q = MockSplitQueue::new(&mem, 16);
        let chain = q
            .build_desc_chain(&[desc(0x10_0000 - 20, 64, F_WRITE)])
            .unwrap();
        assert!(matches!(
            RxBuffer::new(&mem, chain),
            Err(PacketError::Chain(_))
        ));
    }

    #[test]
    fn rx_buffer_checks_direction_and_size_then_writes() {
        let mem = test_mem();
        let q = MockSplitQueue::new(&mem, 16);
        let chain = q.build_desc_chain(&[desc(0x1_0000, 64, 0)]).unwrap();
        assert!(matches!(
            RxBuffer::new(&mem, chain),
            Err(PacketError::ReadOnlyDescriptor { index: 0 })
        ));
        let chain = q.build_desc_chain(&[desc(0x1_0000, 40, F_WRITE)]).unwrap();
        assert!(matches!(
            RxBuffer::new(&mem, chain),
            Err(PacketError::ShortHeader { len: 40 })
        ));

        let chain = q
            .build_desc_chain(&[desc(0x1_0000, 30, F_WRITE), desc(0x2_0000, 20, F_WRITE)])
            .unwrap();
        let buf = RxBuffer::new(&mem, chain).unwrap();
        assert_eq!(buf.data_capacity(), 6);
        let h = hdr(OP_RW, 6);
        assert_eq!(buf.write(&h, b"abcdef").unwrap(), 50);
        let mut raw = [0u8; 50];
        mem.read_slice(&mut raw[..30], GuestAddress(0x1_0000))
            .unwrap();
        mem.read_slice(&mut raw[30..], GuestAddress(0x2_0000))
            .unwrap();
        let got: &[u8; HDR_SIZE] = raw[..HDR_SIZE].try_into().unwrap();
        assert_eq!(PacketHeader::from_bytes(got), h);
        assert_eq!(&raw[HDR_SIZE..], b"abcdef");

        let chain = q.build_desc_chain(&[desc(0x1_0000, 50, F_WRITE)]).unwrap();
        let buf = RxBuffer::new(&mem, chain).unwrap();
        assert!(buf.write(&hdr(OP_RW, 7), b"abcdefg").is_err());
    }
}
