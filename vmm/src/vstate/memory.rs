//! Guest memory: the one concrete type every part of the VMM uses.

use vm_memory::GuestAddress;

pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory of {mib} MiB could not be mapped")]
    Map {
        mib: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Map `regions` (guest address, size in bytes) as anonymous private memory.
pub fn create(regions: &[(GuestAddress, usize)]) -> Result<GuestMemoryMmap, MemoryError> {
    GuestMemoryMmap::from_ranges(regions).map_err(|source| MemoryError::Map {
        mib: regions.iter().map(|r| r.1 as u64).sum::<u64>() >> 20,
        source,
    })
}
