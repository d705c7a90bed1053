//! The Intel MultiProcessor Specification 1.4 table: how a kernel without ACPI
//! learns about the vCPUs, the IOAPIC and the ISA interrupt routing. Written
//! into the EBDA, where Linux finds it at once; without it the kernel scans
//! the BIOS area 16 bytes at a time (about a second under emulation).

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{APIC_ADDR, EBDA_START, IOAPIC_ADDR, IRQ_MAX};

/// The EBDA window the table must fit in.
const EBDA_SIZE: usize = 0x400;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const IRQ_TYPE_INT: u8 = 0;
const IRQ_TYPE_NMI: u8 = 1;
const IRQ_TYPE_EXTINT: u8 = 3;
const ISA_BUS: u8 = 0;

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("{vcpus} vCPUs do not fit in an MP table (at most {max})")]
    TooManyCpus { vcpus: u8, max: u8 },
    #[error("writing the MP table to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// The largest vCPU count whose table fits in the EBDA.
pub fn max_cpus() -> u8 {
    ((EBDA_SIZE - table_size(0)) / 20) as u8
}

fn table_size(vcpus: usize) -> usize {
    16 + 44 + 20 * vcpus + 8 + 8 + 8 * (IRQ_MAX as usize + 1) + 2 * 8
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_sub(*b))
}

/// Build the floating pointer and configuration table for `vcpus` CPUs.
pub fn build(vcpus: u8) -> Result<Vec<u8>, MptableError> {
    if vcpus == 0 || vcpus > max_cpus() {
        return Err(MptableError::TooManyCpus {
            vcpus,
            max: max_cpus(),
        });
    }
    let ioapic_id = vcpus + 1;
    let table_addr = EBDA_START as u32 + 16;

    let mut entries = Vec::new();
    for cpu in 0..vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // family 6
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // FPU | APIC
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    for irq in 0..=IRQ_MAX as u8 {
        entries.extend_from_slice(&[
            ENTRY_INTSRC,
            IRQ_TYPE_INT,
            0,
            0,
            ISA_BUS,
            irq,
            ioapic_id,
            irq,
        ]);
    }
    entries.extend_from_slice(&[ENTRY_LINTSRC, IRQ_TYPE_EXTINT, 0, 0, ISA_BUS, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, IRQ_TYPE_NMI, 0, 0, ISA_BUS, 0, 0xff, 1]);

    let entry_count = vcpus as u16 + 2 + IRQ_MAX as u16 + 1 + 2;
    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, below
    header.extend_from_slice(b"HULL    ");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&entry_count.to_le_bytes());
    header.extend_from_slice(&APIC_ADDR.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes()); // extended table length, checksum, reserved
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(16);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&table_addr.to_le_bytes());
    floating.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // length 16 bytes, rev 1.4
    floating[10] = checksum(&floating);

    floating.extend_from_slice(&table);
    debug_assert_eq!(floating.len(), table_size(vcpus as usize));
    Ok(floating)
}

/// Write the MP table for `vcpus` CPUs into the EBDA.
pub fn setup<M: GuestMemoryBackend>(mem: &M, vcpus: u8) -> Result<(), MptableError> {
    let bytes = build(vcpus)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_layout() {
        for vcpus in [1u8, 2, 8, max_cpus()] {
            let t = build(vcpus).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[0..16]), 0);
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, EBDA_START + 16);
            assert_eq!(&t[16..20], b"PCMP");
            let len = u16::from_le_bytes(t[20..22].try_into().unwrap()) as usize;
            assert_eq!(len, t.len() - 16);
            assert_eq!(sum(&t[16..]), 0);
            assert!(t.len() <= EBDA_SIZE);
            // The first processor entry is the bootstrap processor.
            assert_eq!(t[60], ENTRY_PROCESSOR);
            assert_eq!(t[63], CPU_ENABLED | CPU_BOOTPROCESSOR);
        }
    }

    #[test]
    fn rejects_impossible_cpu_counts() {
        assert!(build(0).is_err());
        assert!(build(max_cpus() + 1).is_err());
    }
}
