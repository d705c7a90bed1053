//! Parsing a virtio-blk descriptor chain into a typed [`Request`].
//!
//! hull accepts the framing every Linux driver uses: a 16-byte device-readable
//! header descriptor, the data descriptors (device-writable for IN and GET_ID,
//! device-readable for OUT), and a 1-byte device-writable status descriptor
//! last. Everything in the chain comes from the guest, so every length,
//! direction, address and sector range is checked here, before the device
//! touches the file or guest memory.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError, Permissions};

use crate::vstate::memory::GuestMemoryMmap;

pub const SECTOR_SHIFT: u32 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
/// `struct virtio_blk_outhdr`: le32 type, le32 reserved (ioprio), le64 sector.
pub const HEADER_LEN: u32 = 16;
pub const STATUS_LEN: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the descriptor chain is empty")]
    EmptyChain,
    #[error(
        "the last descriptor ({len} bytes at {addr:#x}, device-writable: {writable}) \
         is not a 1-byte device-writable status in guest memory"
    )]
    Status { addr: u64, len: u32, writable: bool },
    #[error("the chain has a status descriptor but no header")]
    NoHeader,
    #[error(
        "the header descriptor ({len} bytes, device-writable: {writable}) \
         is not a 16-byte device-readable buffer"
    )]
    Header { len: u32, writable: bool },
    #[error("reading the request header at {addr:#x}")]
    ReadHeader {
        addr: u64,
        #[source]
        source: GuestMemoryError,
    },
    #[error("data descriptor {index} of a {request} request has the wrong direction (device-writable: {writable})")]
    DataDirection {
        index: usize,
        request: &'static str,
        writable: bool,
    },
    #[error("data descriptor {index} ({len} bytes at {addr:#x}) is outside guest memory")]
    DataOutOfMemory { index: usize, addr: u64, len: u32 },
    #[error("{len} data bytes are not a whole number of sectors")]
    PartialSector { len: u64 },
    #[error("sector {sector} + {sectors} sectors is beyond the disk's {capacity} sectors")]
    BeyondCapacity {
        sector: u64,
        sectors: u64,
        capacity: u64,
    },
}

/// A run of guest memory the device reads from or writes to; checked to lie
/// inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Read from the disk at `sector` into `data`.
    In {
        sector: u64,
        data: Vec<Segment>,
    },
    /// Write `data` to the disk at `sector`.
    Out {
        sector: u64,
        data: Vec<Segment>,
    },
    Flush,
    /// Write the device ID into `data`.
    GetId {
        data: Vec<Segment>,
    },
    /// Any other type; answered with VIRTIO_BLK_S_UNSUPP.
    Unsupported {
        request_type: u32,
    },
}

/// A well-formed request: what to do, and where its status byte goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    pub status: GuestAddress,
}

/// A chain that is not a request the device can run. `status` is where the
/// guest can be told (with VIRTIO_BLK_S_IOERR), if the chain has a usable
/// status byte at all.
#[derive(Debug)]
pub struct Rejected {
    pub error: RequestError,
    pub status: Option<GuestAddress>,
}

impl Request {
    /// Parse the descriptors of one chain, in chain order, for a disk of
    /// `capacity` sectors.
    pub fn parse(
        mem: &GuestMemoryMmap,
        descs: &[Descriptor],
        capacity: u64,
    ) -> Result<Request, Rejected> {
        let Some((status_desc, rest)) = descs.split_last() else {
            return Err(Rejected {
                error: RequestError::EmptyChain,
                status: None,
            });
        };
        // Any device-writable byte in guest memory can carry the status;
        // anything but exactly one byte is still a malformed request.
        let writable_status = status_desc.is_write_only()
            && status_desc.len() >= STATUS_LEN
            && mem.check_range(status_desc.addr(), 1, Permissions::Write);
        let status_error = || RequestError::Status {
            addr: status_desc.addr().0,
            len: status_desc.len(),
            writable: status_desc.is_write_only(),
        };
        if !writable_status {
            return Err(Rejected {
                error: status_error(),
                status: None,
            });
        }
        let status = status_desc.addr();
        let reject = |error| Rejected {
            error,
            status: Some(status),
        };
        if status_desc.len() != STATUS_LEN {
            return Err(reject(status_error()));
        }
        let kind = parse_kind(mem, rest, capacity).map_err(reject)?;
        Ok(Request { kind, status })
    }
}

/// Parse header and data (the chain without its status descriptor).
fn parse_kind(
    mem: &GuestMemoryMmap,
    descs: &[Descriptor],
    capacity: u64,
) -> Result<RequestKind, RequestError> {
    let (header, data) = descs.split_first().ok_or(RequestError::NoHeader)?;
    if header.is_write_only() || header.len() != HEADER_LEN {
        return Err(RequestError::Header {
            len: header.len(),
            writable: header.is_write_only(),
        });
    }
    let mut bytes = [0u8; HEADER_LEN as usize];
    mem.read_slice(&mut bytes, header.addr())
        .map_err(|source| RequestError::ReadHeader {
            addr: header.addr().0,
            source,
        })?;
    let [t0, t1, t2, t3, _, _, _, _, s @ ..] = bytes;
    let request_type = u32::from_le_bytes([t0, t1, t2, t3]);
    let sector = u64::from_le_bytes(s);

    Ok(match request_type {
        VIRTIO_BLK_T_IN => {
            let data = segments(mem, data, true, "read")?;
            check_range(&data, sector, capacity)?;
            RequestKind::In { sector, data }
        }
        VIRTIO_BLK_T_OUT => {
            let data = segments(mem, data, false, "write")?;
            check_range(&data, sector, capacity)?;
            RequestKind::Out { sector, data }
        }
        VIRTIO_BLK_T_FLUSH => RequestKind::Flush,
        VIRTIO_BLK_T_GET_ID => RequestKind::GetId {
            data: segments(mem, data, true, "get-id")?,
        },
        request_type => RequestKind::Unsupported { request_type },
    })
}

/// Check direction and guest-memory bounds of the data descriptors.
fn segments(
    mem: &GuestMemoryMmap,
    descs: &[Descriptor],
    device_writes: bool,
    request: &'static str,
) -> Result<Vec<Segment>, RequestError> {
    let access = if device_writes {
        Permissions::Write
    } else {
        Permissions::Read
    };
    descs
        .iter()
        .enumerate()
        .map(|(index, d)| {
            if d.is_write_only() != device_writes {
                return Err(RequestError::DataDirection {
                    index,
                    request,
                    writable: d.is_write_only(),
                });
            }
            if !mem.check_range(d.addr(), d.len() as usize, access) {
                return Err(RequestError::DataOutOfMemory {
                    index,
                    addr: d.addr().0,
                    len: d.len(),
                });
            }
            Ok(Segment {
                addr: d.addr(),
                len: d.len(),
            })
        })
        .collect()
}

/// Whole sectors only, all of them inside the disk.
fn check_range(data: &[Segment], sector: u64, capacity: u64) -> Result<(), RequestError> {
    let len: u64 = data.iter().map(|s| u64::from(s.len)).sum();
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::PartialSector { len });
    }
    let sectors = len >> SECTOR_SHIFT;
    match sector.checked_add(sectors) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(RequestError::BeyondCapacity {
            sector,
            sectors,
            capacity,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;

    const MEM_SIZE: u64 = 0x10_0000;
    const HDR: u64 = 0x1000;
    const DATA: u64 = 0x2000;
    const STATUS: u64 = 0x3000;
    const CAPACITY: u64 = 8;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
    }

    fn r(addr: u64, len: u32) -> Descriptor {
        Descriptor::new(addr, len, 0, 0)
    }

    fn w(addr: u64, len: u32) -> Descriptor {
        Descriptor::new(addr, len, VRING_DESC_F_WRITE as u16, 0)
    }

    fn header(mem: &GuestMemoryMmap, request_type: u32, sector: u64) {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&request_type.to_le_bytes());
        bytes[4..8].copy_from_slice(&0xdead_beef_u32.to_le_bytes());
        bytes[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&bytes, GuestAddress(HDR)).unwrap();
    }

    fn parse(mem: &GuestMemoryMmap, descs: &[Descriptor]) -> Result<Request, Rejected> {
        Request::parse(mem, descs, CAPACITY)
    }

    /// A rejection that can still be reported through the status byte.
    fn rejected_with_status(result: Result<Request, Rejected>) -> RequestError {
        let rejected = result.unwrap_err();
        assert_eq!(rejected.status, Some(GuestAddress(STATUS)), "{rejected:?}");
        rejected.error
    }

    fn rejected_without_status(result: Result<Request, Rejected>) -> RequestError {
        let rejected = result.unwrap_err();
        assert_eq!(rejected.status, None, "{rejected:?}");
        rejected.error
    }

    #[test]
    fn well_formed_requests() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 3);
        let req = parse(
            &m,
            &[
                r(HDR, 16),
                w(DATA, 512),
                w(DATA + 0x1000, 1024),
                w(STATUS, 1),
            ],
        );
        assert_eq!(
            req.unwrap(),
            Request {
                kind: RequestKind::In {
                    sector: 3,
                    data: vec![
                        Segment {
                            addr: GuestAddress(DATA),
                            len: 512
                        },
                        Segment {
                            addr: GuestAddress(DATA + 0x1000),
                            len: 1024
                        },
                    ],
                },
                status: GuestAddress(STATUS),
            }
        );

        // The last sector of the disk is in range.
        header(&m, VIRTIO_BLK_T_OUT, CAPACITY - 1);
        let req = parse(&m, &[r(HDR, 16), r(DATA, 512), w(STATUS, 1)]).unwrap();
        assert!(matches!(req.kind, RequestKind::Out { sector: 7, .. }));

        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        let req = parse(&m, &[r(HDR, 16), w(STATUS, 1)]).unwrap();
        assert_eq!(req.kind, RequestKind::Flush);

        header(&m, VIRTIO_BLK_T_GET_ID, 0);
        let req = parse(&m, &[r(HDR, 16), w(DATA, 20), w(STATUS, 1)]).unwrap();
        assert!(matches!(req.kind, RequestKind::GetId { data } if data.len() == 1));

        // Unknown types parse; the device answers UNSUPP without looking at data.
        header(&m, 11, 0);
        let req = parse(&m, &[r(HDR, 16), w(DATA, 16), w(STATUS, 1)]).unwrap();
        assert_eq!(req.kind, RequestKind::Unsupported { request_type: 11 });
    }

    #[test]
    fn chain_without_usable_status_is_rejected_silently() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 0);
        assert!(matches!(
            rejected_without_status(parse(&m, &[])),
            RequestError::EmptyChain
        ));
        for status in [r(STATUS, 1), w(STATUS, 0), w(MEM_SIZE, 1), w(u64::MAX, 1)] {
            let err = rejected_without_status(parse(&m, &[r(HDR, 16), w(DATA, 512), status]));
            assert!(matches!(err, RequestError::Status { .. }), "{err}");
        }
    }

    #[test]
    fn malformed_framing_is_reported_as_error() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 0);
        // Status descriptor only.
        let err = rejected_with_status(parse(&m, &[w(STATUS, 1)]));
        assert!(matches!(err, RequestError::NoHeader));
        // Status of the wrong size.
        let err = rejected_with_status(parse(&m, &[r(HDR, 16), w(DATA, 512), w(STATUS, 2)]));
        assert!(matches!(err, RequestError::Status { len: 2, .. }));
        // Header writable, too short, too long.
        for hdr in [w(HDR, 16), r(HDR, 8), r(HDR, 528)] {
            let err = rejected_with_status(parse(&m, &[hdr, w(DATA, 512), w(STATUS, 1)]));
            assert!(matches!(err, RequestError::Header { .. }), "{err}");
        }
        // Header outside guest memory.
        let err = rejected_with_status(parse(&m, &[r(MEM_SIZE - 8, 16), w(STATUS, 1)]));
        assert!(matches!(err, RequestError::ReadHeader { .. }));
    }

    #[test]
    fn data_direction_and_bounds_are_checked() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_IN, 0);
        let err = rejected_with_status(parse(
            &m,
            &[r(HDR, 16), w(DATA, 512), r(DATA, 512), w(STATUS, 1)],
        ));
        assert!(matches!(
            err,
            RequestError::DataDirection {
                index: 1,
                writable: false,
                ..
            }
        ));
        header(&m, VIRTIO_BLK_T_GET_ID, 0);
        let err = rejected_with_status(parse(&m, &[r(HDR, 16), r(DATA, 20), w(STATUS, 1)]));
        assert!(matches!(err, RequestError::DataDirection { index: 0, .. }));
        header(&m, VIRTIO_BLK_T_OUT, 0);
        let err = rejected_with_status(parse(&m, &[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]));
        assert!(matches!(
            err,
            RequestError::DataDirection { writable: true, .. }
        ));
        // Straddling the end of guest memory, and wrapping around 2^64.
        for addr in [MEM_SIZE - 256, u64::MAX - 255] {
            let err = rejected_with_status(parse(&m, &[r(HDR, 16), r(addr, 512), w(STATUS, 1)]));
            assert!(
                matches!(err, RequestError::DataOutOfMemory { index: 0, .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn sector_ranges_are_checked() {
        let m = mem();
        let cases: [(u64, &[Descriptor]); 4] = [
            // One sector past the end.
            (CAPACITY - 1, &[w(DATA, 1024)]),
            (CAPACITY, &[w(DATA, 512)]),
            // sector + sectors overflows u64.
            (u64::MAX, &[w(DATA, 512)]),
            (u64::MAX >> SECTOR_SHIFT, &[w(DATA, 512), w(DATA, 512)]),
        ];
        for (sector, data) in cases {
            header(&m, VIRTIO_BLK_T_IN, sector);
            let descs: Vec<_> = [r(HDR, 16)]
                .into_iter()
                .chain(data.iter().copied())
                .chain([w(STATUS, 1)])
                .collect();
            let err = rejected_with_status(parse(&m, &descs));
            assert!(
                matches!(err, RequestError::BeyondCapacity { .. }),
                "{sector}: {err}"
            );
        }
        header(&m, VIRTIO_BLK_T_IN, 0);
        let err = rejected_with_status(parse(&m, &[r(HDR, 16), w(DATA, 100), w(STATUS, 1)]));
        assert!(matches!(err, RequestError::PartialSector { len: 100 }));
        // Zero-length reads are fine and touch nothing.
        let req = parse(&m, &[r(HDR, 16), w(STATUS, 1)]).unwrap();
        assert_eq!(
            req.kind,
            RequestKind::In {
                sector: 0,
                data: vec![]
            }
        );
    }
}
