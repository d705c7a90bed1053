//! Guest memory: the one concrete type every part of the VMM uses.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// The unit guest memory is saved and compared in.
const PAGE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory of {mib} MiB could not be mapped")]
    Map {
        mib: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("mapping guest memory from the snapshot file (offset {offset}, {len} bytes)")]
    MapFile {
        offset: u64,
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("writing guest memory to the snapshot file")]
    Write(#[source] std::io::Error),
}

/// Map `regions` (guest address, size in bytes) as anonymous private memory.
pub fn create(regions: &[(GuestAddress, usize)]) -> Result<GuestMemoryMmap, MemoryError> {
    GuestMemoryMmap::from_ranges(regions).map_err(|source| MemoryError::Map {
        mib: regions.iter().map(|r| r.1 as u64).sum::<u64>() >> 20,
        source,
    })
}

/// Map `regions` copy-on-write from `file`, one after another from
/// `offset` (page-aligned): the guest reads the saved pages, its writes stay
/// private to this VM, and VMs restored from the same file share the page
/// cache's copy of every page none of them wrote.
pub fn from_file(
    regions: &[(GuestAddress, usize)],
    file: &File,
    offset: u64,
) -> Result<GuestMemoryMmap, MemoryError> {
    let file = Arc::new(file.try_clone().map_err(|source| MemoryError::MapFile {
        offset,
        len: 0,
        source,
    })?);
    let mut at = offset;
    let mut mapped = Vec::with_capacity(regions.len());
    for &(addr, len) in regions {
        let map_err = |source| MemoryError::MapFile {
            offset: at,
            len,
            source,
        };
        let region = MmapRegionBuilder::new_with_bitmap(len, ())
            .with_file_offset(FileOffset::from_arc(file.clone(), at))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| map_err(std::io::Error::other(e.to_string())))?;
        let region = GuestRegionMmap::new(region, addr)
            .ok_or_else(|| map_err(std::io::Error::other("the region overflows")))?;
        mapped.push(region);
        at += len as u64;
    }
    GuestMemoryMmap::from_regions(mapped).map_err(|e| MemoryError::MapFile {
        offset,
        len: 0,
        source: std::io::Error::other(e.to_string()),
    })
}

/// Writes every region of `mem` into `file` from `offset` on, one after
/// another, leaving holes where a page is all zeros (a booted guest's
/// memory is mostly untouched); returns the bytes covered.
pub fn dump(mem: &GuestMemoryMmap, file: &File, offset: u64) -> Result<u64, MemoryError> {
    let mut at = offset;
    let zero = [0u8; PAGE];
    for region in mem.iter() {
        let len = region.len() as usize;
        let host = region.as_ptr();
        for page in (0..len).step_by(PAGE) {
            let n = PAGE.min(len - page);
            // SAFETY: `host` maps `len` bytes of this region for as long as
            // `mem` lives; `page + n <= len`. The vCPUs are paused, so the
            // guest does not write these bytes while they are read.
            let bytes = unsafe { std::slice::from_raw_parts(host.add(page), n) };
            if bytes != &zero[..n] {
                file.write_all_at(bytes, at + page as u64)
                    .map_err(MemoryError::Write)?;
            }
        }
        at += len as u64;
    }
    Ok(at - offset)
}

/// The total size of guest memory.
pub fn size(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn a_dump_maps_back_copy_on_write() {
        let regions = [
            (GuestAddress(0), 4 * PAGE),
            (GuestAddress(0x10_0000), 2 * PAGE),
        ];
        let mem = create(&regions).unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(PAGE as u64 + 8))
            .unwrap();
        mem.write_obj(7u8, GuestAddress(0x10_0000 + PAGE as u64))
            .unwrap();
        let file = tempfile::tempfile().unwrap();
        let covered = dump(&mem, &file, PAGE as u64).unwrap();
        assert_eq!(covered, 6 * PAGE as u64);
        file.set_len(PAGE as u64 + covered).unwrap();
        let back = from_file(&regions, &file, PAGE as u64).unwrap();
        assert_eq!(
            back.read_obj::<u32>(GuestAddress(PAGE as u64 + 8)).unwrap(),
            0xdead_beef
        );
        assert_eq!(
            back.read_obj::<u8>(GuestAddress(0x10_0000 + PAGE as u64))
                .unwrap(),
            7
        );
        // A write stays in this mapping: the file keeps what was saved.
        back.write_obj(1u32, GuestAddress(PAGE as u64 + 8)).unwrap();
        let again = from_file(&regions, &file, PAGE as u64).unwrap();
        assert_eq!(
            again
                .read_obj::<u32>(GuestAddress(PAGE as u64 + 8))
                .unwrap(),
            0xdead_beef
        );
        assert_eq!(size(&again), 6 * PAGE as u64);
    }
}
