//! The image file behind a virtio-blk device: sized once at open, then
//! accessed with `pread`/`pwrite` through a bounce buffer (no `unsafe`, and
//! the file offset is never shared state).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryError};

use super::request::{Segment, SECTOR_SHIFT, SECTOR_SIZE};
use super::BlockConfig;
use crate::vstate::memory::GuestMemoryMmap;

const ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Data moves between the file and guest memory through a buffer this big.
const BOUNCE_LEN: usize = 128 << 10;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("opening disk image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("finding the size of disk image {path}")]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("drive id {id:?} is longer than {ID_LEN} bytes")]
    IdTooLong { id: String },
    #[error("reading {len} bytes of the disk at byte {offset}")]
    Read {
        offset: u64,
        len: usize,
        #[source]
        source: io::Error,
    },
    #[error("writing {len} bytes of the disk at byte {offset}")]
    Write {
        offset: u64,
        len: usize,
        #[source]
        source: io::Error,
    },
    #[error("flushing the disk")]
    Flush(#[source] io::Error),
    #[error("guest memory at {addr:#x}")]
    GuestMemory {
        addr: u64,
        #[source]
        source: GuestMemoryError,
    },
    #[error("write request to a read-only disk")]
    ReadOnly,
}

/// The image file and what the device knows about it.
pub(super) struct Disk {
    file: File,
    /// Size in 512-byte sectors; a partial last sector is not exposed.
    sectors: u64,
    read_only: bool,
    /// GET_ID answer: the drive id, NUL-padded.
    id: [u8; ID_LEN],
    bounce: Vec<u8>,
}

impl Disk {
    /// Open the image (read-only when configured so) and size it.
    #[allow(clippy::disallowed_macros, reason = "once, when the VM is built")]
    pub(super) fn open(config: &BlockConfig) -> Result<Self, DiskError> {
        let path = &config.path;
        let mut file = OpenOptions::new()
            .read(true)
            .write(!config.read_only)
            .open(path)
            .map_err(|source| DiskError::Open {
                path: path.clone(),
                source,
            })?;
        // Seeking to the end also sizes block devices, unlike metadata().
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| DiskError::Size {
                path: path.clone(),
                source,
            })?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            log::warn!(
                "disk image {}: the last {} bytes are not a whole sector and are not exposed",
                path.display(),
                size % SECTOR_SIZE
            );
        }
        let id_str = config.id.as_deref().unwrap_or("");
        if id_str.len() > ID_LEN {
            return Err(DiskError::IdTooLong {
                id: id_str.to_owned(),
            });
        }
        let mut id = [0u8; ID_LEN];
        id[..id_str.len()].copy_from_slice(id_str.as_bytes());
        Ok(Self {
            file,
            sectors: size >> SECTOR_SHIFT,
            read_only: config.read_only,
            id,
            bounce: vec![0; BOUNCE_LEN],
        })
    }

    /// Size in 512-byte sectors, as the guest sees it.
    pub(super) fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Copy the disk from `sector` into `data`; returns the bytes written to the guest.
    pub(super) fn read(
        &mut self,
        mem: &GuestMemoryMmap,
        sector: u64,
        data: &[Segment],
    ) -> Result<u32, DiskError> {
        let mut offset = sector << SECTOR_SHIFT;
        let mut total = 0u32;
        for seg in data {
            for (addr, len) in chunks(seg, self.bounce.len()) {
                let buf = &mut self.bounce[..len];
                self.file
                    .read_exact_at(buf, offset)
                    .map_err(|source| DiskError::Read {
                        offset,
                        len,
                        source,
                    })?;
                mem.write_slice(buf, addr)
                    .map_err(|source| DiskError::GuestMemory {
                        addr: addr.0,
                        source,
                    })?;
                offset += len as u64;
            }
            total = total.saturating_add(seg.len);
        }
        Ok(total)
    }

    /// Copy `data` to the disk from `sector` on.
    pub(super) fn write(
        &mut self,
        mem: &GuestMemoryMmap,
        sector: u64,
        data: &[Segment],
    ) -> Result<(), DiskError> {
        if self.read_only {
            // virtio 1.2, 5.2.6.1: IOERR, and no data written.
            return Err(DiskError::ReadOnly);
        }
        let mut offset = sector << SECTOR_SHIFT;
        for seg in data {
            for (addr, len) in chunks(seg, self.bounce.len()) {
                let buf = &mut self.bounce[..len];
                mem.read_slice(buf, addr)
                    .map_err(|source| DiskError::GuestMemory {
                        addr: addr.0,
                        source,
                    })?;
                self.file
                    .write_all_at(buf, offset)
                    .map_err(|source| DiskError::Write {
                        offset,
                        len,
                        source,
                    })?;
                offset += len as u64;
            }
        }
        Ok(())
    }

    pub(super) fn flush(&self) -> Result<(), DiskError> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(DiskError::Flush)
    }

    /// Write as much of the id as `data` holds; returns the bytes written.
    pub(super) fn write_id(
        &self,
        mem: &GuestMemoryMmap,
        data: &[Segment],
    ) -> Result<u32, DiskError> {
        let mut rest: &[u8] = &self.id;
        for seg in data {
            let n = rest.len().min(seg.len as usize);
            let (now, later) = rest.split_at(n);
            mem.write_slice(now, seg.addr)
                .map_err(|source| DiskError::GuestMemory {
                    addr: seg.addr.0,
                    source,
                })?;
            rest = later;
        }
        Ok((ID_LEN - rest.len()) as u32)
    }
}

/// Split a segment into (address, length) pieces of at most `max` bytes.
/// The segment was checked to lie inside guest memory, so the additions
/// cannot overflow.
fn chunks(seg: &Segment, max: usize) -> impl Iterator<Item = (GuestAddress, usize)> + '_ {
    let len = seg.len as usize;
    (0..len)
        .step_by(max)
        .map(move |start| (seg.addr.unchecked_add(start as u64), max.min(len - start)))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use tempfile::NamedTempFile;

    use super::*;

    fn image(len: usize) -> NamedTempFile {
        let mut file = NamedTempFile::new().unwrap();
        file.write_all(&vec![0x5a; len]).unwrap();
        file
    }

    fn config(file: &NamedTempFile, read_only: bool) -> BlockConfig {
        BlockConfig {
            path: file.path().into(),
            read_only,
            id: None,
        }
    }

    #[test]
    fn open_errors_and_partial_sectors() {
        let file = image(1000);
        let mut config = config(&file, true);
        // A partial last sector is not exposed.
        assert_eq!(Disk::open(&config).unwrap().sectors(), 1);
        config.id = Some("x".repeat(21));
        assert!(matches!(
            Disk::open(&config),
            Err(DiskError::IdTooLong { .. })
        ));
        config.id = Some("x".repeat(20));
        assert!(Disk::open(&config).is_ok());
        config.path = "/nonexistent/hull/disk.img".into();
        assert!(matches!(Disk::open(&config), Err(DiskError::Open { .. })));
    }

    #[test]
    fn read_only_refusal_does_not_rely_on_the_open_mode() {
        let file = image(1024);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        mem.write_slice(&[0xab; 512], GuestAddress(0)).unwrap();
        let data = [Segment {
            addr: GuestAddress(0),
            len: 512,
        }];
        let mut disk = Disk::open(&config(&file, true)).unwrap();
        assert!(matches!(
            disk.write(&mem, 0, &data),
            Err(DiskError::ReadOnly)
        ));
        // Even with a writable handle, a read-only disk writes nothing.
        disk.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(file.path())
            .unwrap();
        assert!(matches!(
            disk.write(&mem, 0, &data),
            Err(DiskError::ReadOnly)
        ));
        assert_eq!(std::fs::read(file.path()).unwrap(), [0x5a; 1024]);
        // A writable disk does write.
        let mut disk = Disk::open(&config(&file, false)).unwrap();
        disk.write(&mem, 1, &data).unwrap();
        let bytes = std::fs::read(file.path()).unwrap();
        assert_eq!(bytes[..512], [0x5a; 512]);
        assert_eq!(bytes[512..], [0xab; 512]);
    }

    #[test]
    fn large_transfers_cross_bounce_buffer_chunks() {
        let len = BOUNCE_LEN * 2 + 1024;
        let mut file = NamedTempFile::new().unwrap();
        let pattern: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        file.write_all(&pattern).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut disk = Disk::open(&config(&file, false)).unwrap();
        let seg = Segment {
            addr: GuestAddress(0x1000),
            len: len as u32,
        };
        assert_eq!(disk.read(&mem, 0, &[seg]).unwrap(), len as u32);
        let mut back = vec![0u8; len];
        mem.read_slice(&mut back, GuestAddress(0x1000)).unwrap();
        assert_eq!(back, pattern);
        // Write it back shifted by one sector.
        disk.write(
            &mem,
            1,
            &[Segment {
                len: (len - 512) as u32,
                ..seg
            }],
        )
        .unwrap();
        let bytes = std::fs::read(file.path()).unwrap();
        assert_eq!(bytes[512..], pattern[..len - 512]);
    }
}
