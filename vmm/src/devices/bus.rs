//! Address-range dispatch for MMIO and port-I/O exits: a [`Bus`] is the
//! [`IoHandler`] a vCPU hands its exits to.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::vstate::vcpu::IoHandler;

/// A device that answers reads and writes in an address range. `offset` is
/// relative to the start of the range the device was inserted at.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or overlaps another device")]
    Overlap { base: u64, len: u64 },
}

type Shared = Arc<Mutex<dyn BusDevice>>;

/// A set of non-overlapping address ranges, each served by one device.
#[derive(Default, Clone)]
pub struct Bus {
    ranges: BTreeMap<u64, (u64, Shared)>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, device: Shared, base: u64, len: u64) -> Result<(), BusError> {
        let overlap = || BusError::Overlap { base, len };
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or_else(overlap)?;
        if let Some((&prev_base, &(prev_len, _))) = self.ranges.range(..end).next_back() {
            if prev_base + prev_len > base {
                return Err(overlap());
            }
        }
        self.ranges.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Shared)> {
        let (&base, (len, dev)) = self.ranges.range(..=addr).next_back()?;
        (addr - base < *len).then_some((addr - base, dev))
    }
}

impl IoHandler for Bus {
    /// Dispatch a read; returns false when no device covers `addr`.
    fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                dev.lock()
                    .expect("bus device lock poisoned")
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatch a write; returns false when no device covers `addr`.
    fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                dev.lock()
                    .expect("bus device lock poisoned")
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn dispatches_by_range_and_rejects_overlap() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Echo(10))), 0x100, 0x10)
            .unwrap();
        bus.insert(Arc::new(Mutex::new(Echo(20))), 0x110, 0x10)
            .unwrap();
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Echo(0))), 0x10f, 2),
            Err(BusError::Overlap {
                base: 0x10f,
                len: 2
            })
        );
        assert!(bus.insert(Arc::new(Mutex::new(Echo(0))), 0x50, 0).is_err());
        let mut b = [0u8; 1];
        assert!(bus.read(0x102, &mut b));
        assert_eq!(b[0], 12);
        assert!(bus.read(0x110, &mut b));
        assert_eq!(b[0], 20);
        assert!(!bus.read(0x120, &mut b));
        assert!(!bus.read(0xff, &mut b));
        assert!(bus.write(0x111, &[7]));
        bus.read(0x110, &mut b);
        assert_eq!(b[0], 7);
    }
}
