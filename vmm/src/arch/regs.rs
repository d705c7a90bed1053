//! Long-mode boot state for the Linux 64-bit boot protocol: GDT, identity
//! page tables, the zero page (boot_params with the E820 map) and the
//! register values of the boot vCPU. Pure computation plus guest-memory
//! writes; `vstate` loads the registers into KVM.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::layout::*;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const E820_MAX_ENTRIES: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("writing the {what} to guest memory")]
    Write {
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("the initramfs ({size} bytes) does not fit in guest memory below {limit:#x} after the kernel (ends at {kernel_end:#x})")]
    InitrdTooLarge {
        size: u64,
        limit: u64,
        kernel_end: u64,
    },
}

/// Where the initramfs was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    pub addr: u64,
    pub size: u64,
}

/// Place an initramfs of `size` bytes as high as possible in low memory
/// (below the MMIO gap and the identity map), page-aligned, above `kernel_end`.
pub fn place_initrd(
    mem_size: u64,
    kernel_end: u64,
    size: u64,
) -> Result<InitrdPlacement, BootError> {
    let limit = mem_size.min(MMIO_GAP_START).min(IDENTITY_MAPPED_GIB << 30);
    let too_large = || BootError::InitrdTooLarge {
        size,
        limit,
        kernel_end,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < kernel_end {
        return Err(too_large());
    }
    Ok(InitrdPlacement { addr, size })
}

fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0xf0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let bit = |shift: u64, mask: u64| ((entry >> shift) & mask) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: (((entry >> 32) & 0xf_0000) | (entry & 0xffff)) as u32,
        selector: u16::from(index) * 8,
        type_: bit(40, 0xf),
        present: bit(47, 1),
        dpl: bit(45, 3),
        db: bit(54, 1),
        s: bit(44, 1),
        l: bit(53, 1),
        g: bit(55, 1),
        avl: bit(52, 1),
        padding: 0,
        unusable: u8::from(bit(47, 1) == 0),
    }
}

/// The boot GDT: null, 64-bit code, data, TSS.
const GDT: [u64; 4] = [
    0,
    0x00af_9b00_0000_ffff, // code: present, exec/read, long mode, 4 KiB granularity
    0x00cf_9300_0000_ffff, // data: present, read/write, 32-bit, 4 KiB granularity
    0x008f_8b00_0000_ffff, // TSS: present, busy 32-bit TSS
];

/// Write GDT, IDT and identity page tables, and compute the special registers.
pub fn setup_long_mode<M: GuestMemoryBackend>(
    mem: &M,
    sregs: &mut kvm_sregs,
) -> Result<(), BootError> {
    let write = |what, bytes: &[u8], at: u64| {
        mem.write_slice(bytes, GuestAddress(at))
            .map_err(|source| BootError::Write { what, source })
    };
    let gdt: Vec<u8> = GDT.iter().flat_map(|e| e.to_le_bytes()).collect();
    write("GDT", &gdt, BOOT_GDT_START)?;
    write("IDT", &0u64.to_le_bytes(), BOOT_IDT_START)?;
    debug_assert_eq!(GDT[1], gdt_entry(0xa09b, 0, 0xfffff));

    // PML4[0] -> PDPT; PDPT[i] -> PD i; each PD maps 1 GiB with 2 MiB pages.
    write("PML4", &(PDPTE_START | 0x03).to_le_bytes(), PML4_START)?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd = PDE_START + gib * 0x1000;
        write("PDPT", &(pd | 0x03).to_le_bytes(), PDPTE_START + gib * 8)?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|i| (((gib << 30) + (i << 21)) | 0x83).to_le_bytes())
            .collect();
        write("page directory", &entries, pd)?;
    }

    let code = segment_from_gdt(GDT[1], 1);
    let data = segment_from_gdt(GDT[2], 2);
    let tss = segment_from_gdt(GDT[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(())
}

/// General-purpose registers at the 64-bit kernel entry point.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// x87/SSE state at reset (as a PC's firmware would leave it).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Wrapper so `boot_params` can be written with vm-memory.
#[derive(Clone, Copy, Default)]
struct BootParams(boot_params);
// SAFETY: boot_params is a plain-old-data C struct (integers and arrays only,
// packed), so every byte pattern is a valid value and it has no padding that
// could leak uninitialised memory (it is zero-initialised by Default).
unsafe impl ByteValued for BootParams {}

/// Write the zero page: setup header, command line pointer, initramfs, E820.
pub fn setup_zero_page<M: GuestMemoryBackend>(
    mem: &M,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
) -> Result<(), BootError> {
    let mut params = BootParams::default();
    params.0.hdr = setup_header {
        type_of_loader: KERNEL_LOADER_OTHER,
        boot_flag: KERNEL_BOOT_FLAG_MAGIC,
        header: KERNEL_HDR_MAGIC,
        cmd_line_ptr: CMDLINE_START as u32,
        cmdline_size: cmdline_len as u32,
        kernel_alignment: KERNEL_MIN_ALIGNMENT,
        ramdisk_image: initrd.map_or(0, |i| i.addr as u32),
        ramdisk_size: initrd.map_or(0, |i| i.size as u32),
        ..Default::default()
    };
    let mut e820 = Vec::new();
    e820.push((0, EBDA_START));
    for region in mem.iter() {
        let start = region.start_addr().raw_value();
        let end = start + region.len();
        let start = start.max(HIMEM_START);
        if end > start {
            e820.push((start, end - start));
        }
    }
    for (i, (addr, size)) in e820.iter().take(E820_MAX_ENTRIES).enumerate() {
        params.0.e820_table[i].addr = *addr;
        params.0.e820_table[i].size = *size;
        params.0.e820_table[i].r#type = E820_RAM;
    }
    params.0.e820_entries = e820.len().min(E820_MAX_ENTRIES) as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|source| BootError::Write {
            what: "zero page",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem(size: usize) -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    #[test]
    fn gdt_entries_decode_to_long_mode_segments() {
        let code = segment_from_gdt(GDT[1], 1);
        assert_eq!(
            (code.l, code.db, code.present, code.selector, code.type_),
            (1, 0, 1, 8, 0xb)
        );
        let data = segment_from_gdt(GDT[2], 2);
        assert_eq!(
            (data.l, data.db, data.selector, data.limit),
            (0, 1, 16, 0xfffff)
        );
        assert_eq!(GDT[2], gdt_entry(0xc093, 0, 0xfffff));
    }

    #[test]
    fn page_tables_identity_map_4gib() {
        let m = mem(1 << 20);
        let mut sregs = kvm_sregs::default();
        setup_long_mode(&m, &mut sregs).unwrap();
        let pml4: u64 = m.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let pdpt3: u64 = m.read_obj(GuestAddress(PDPTE_START + 24)).unwrap();
        assert_eq!(pdpt3, (PDE_START + 0x3000) | 3);
        let last: u64 = m
            .read_obj(GuestAddress(PDE_START + 0x3000 + 511 * 8))
            .unwrap();
        assert_eq!(last, ((3u64 << 30) + (511 << 21)) | 0x83);
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.efer & EFER_LMA, 0);
    }

    #[test]
    fn initrd_goes_high_and_too_large_is_an_error() {
        let p = place_initrd(128 << 20, 16 << 20, 10_000).unwrap();
        assert_eq!(p.addr % 4096, 0);
        assert!(p.addr + p.size <= 128 << 20);
        assert!(matches!(
            place_initrd(128 << 20, 16 << 20, 120 << 20),
            Err(BootError::InitrdTooLarge { .. })
        ));
        assert!(place_initrd(1 << 20, 0, 2 << 20).is_err());
    }

    #[test]
    fn zero_page_has_e820_without_ebda_and_bios_area() {
        let m = mem(64 << 20);
        setup_zero_page(
            &m,
            10,
            Some(InitrdPlacement {
                addr: 0x200_0000,
                size: 5,
            }),
        )
        .unwrap();
        let p: BootParams = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let p = p.0;
        assert_eq!({ p.e820_entries }, 2);
        assert_eq!({ p.e820_table[0].size }, EBDA_START);
        assert_eq!({ p.e820_table[1].addr }, HIMEM_START);
        assert_eq!({ p.e820_table[1].size }, (64 << 20) - HIMEM_START);
        assert_eq!({ p.hdr.ramdisk_image }, 0x200_0000);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
    }
}
