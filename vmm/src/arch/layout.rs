//! The x86_64 guest physical address map of a hull microVM.

/// Global descriptor table, interrupt descriptor table (empty) and the boot stack.
pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, PDPT, then four page directories (4 GiB).
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
pub const IDENTITY_MAPPED_GIB: u64 = 4;
/// PVH boot: hvm_start_info, its module list (the initramfs) and memory map.
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MODLIST_START: u64 = 0x6100;
pub const PVH_MEMMAP_START: u64 = 0x6200;
/// Linux boot parameters ("zero page") and the kernel command line.
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const CMDLINE_START: u64 = 0x20000;
/// x86 Linux's COMMAND_LINE_SIZE.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// The Intel MP table lives in the EBDA, where the kernel looks first.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the kernel is loaded (for images without their own physical address).
pub const HIMEM_START: u64 = 0x10_0000;
/// The 32-bit MMIO gap: virtio-mmio windows, then the IOAPIC and LAPIC.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// virtio-mmio device `i` occupies one 4 KiB window from here and IRQ `VIRTIO_IRQ_BASE + i`.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// The IOAPIC has 24 pins.
pub const IRQ_MAX: u32 = 23;
/// COM1.
pub const SERIAL_PORT: u16 = 0x3f8;
pub const SERIAL_IRQ: u32 = 4;
/// The i8042 keyboard controller: data and command ports.
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_CMD_PORT: u16 = 0x64;
/// KVM needs three pages for the TSS below 4 GiB, outside RAM.
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

// The boot stack sits between the zero page and the page tables; the EBDA
// ends below the kernel.
const _: () =
    assert!(BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000);
const _: () = assert!(EBDA_START + 0x400 <= HIMEM_START);

/// The RAM regions (start, size) for `mem_size` bytes of guest memory: below
/// the MMIO gap, and the rest above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_gap() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(
            ram_regions(4 << 30),
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)
            ]
        );
    }

    #[test]
    fn fixed_structures_do_not_overlap() {
        let mut spans = [
            (BOOT_GDT_START, 0x20),
            (PVH_INFO_START, 0x100),
            (PVH_MODLIST_START, 0x100),
            (PVH_MEMMAP_START, 0xe00),
            (BOOT_IDT_START, 8),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, 0x1000 * IDENTITY_MAPPED_GIB),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (EBDA_START, 0x400),
        ];
        spans.sort();
        for w in spans.windows(2) {
            assert!(
                w[0].0 + w[0].1 <= w[1].0,
                "{:x?} overlaps {:x?}",
                w[0],
                w[1]
            );
        }
    }
}
