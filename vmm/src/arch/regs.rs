//! Long-mode boot state for the Linux 64-bit boot protocol: GDT, identity
//! page tables, the zero page (boot_params with the E820 map) and the
//! register values of the boot vCPU. Pure computation plus guest-memory
//! writes; `vstate` loads the registers into KVM.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
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
    let raw_limit = (((entry >> 32) & 0xf_0000) | (entry & 0xffff)) as u32;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        // KVM wants the limit in bytes: with 4 KiB granularity, scale it.
        // (Long mode ignores limits; 32-bit protected mode, PVH, does not.)
        limit: if bit(55, 1) == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
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

/// The guest's RAM as the firmware would report it: below the EBDA, and from
/// 1 MiB up (the MP table lives in the EBDA, the BIOS area is not RAM).
fn e820_ram<M: GuestMemoryBackend>(mem: &M) -> Vec<(u64, u64)> {
    let mut e820 = vec![(0, EBDA_START)];
    for region in mem.iter() {
        let start = region.start_addr().raw_value();
        let end = start + region.len();
        let start = start.max(HIMEM_START);
        if end > start {
            e820.push((start, end - start));
        }
    }
    e820
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
    let e820 = e820_ram(mem);
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

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// Write the PVH `hvm_start_info` (version 1), the initramfs as module 0 and
/// the memory map. The PVH entry finds it through RBX.
pub fn setup_pvh_info<M: GuestMemoryBackend>(
    mem: &M,
    initrd: Option<InitrdPlacement>,
) -> Result<(), BootError> {
    let write = |what, bytes: &[u8], at: u64| {
        mem.write_slice(bytes, GuestAddress(at))
            .map_err(|source| BootError::Write { what, source })
    };
    let e820 = e820_ram(mem);
    let memmap: Vec<u8> = e820
        .iter()
        .flat_map(|&(addr, size)| {
            [
                addr.to_le_bytes(),
                size.to_le_bytes(),
                u64::from(E820_RAM).to_le_bytes(),
            ]
            .concat()
        })
        .collect();
    write("PVH memory map", &memmap, PVH_MEMMAP_START)?;
    if let Some(i) = initrd {
        let module = [i.addr.to_le_bytes(), i.size.to_le_bytes(), [0; 8], [0; 8]].concat();
        write("PVH module list", &module, PVH_MODLIST_START)?;
    }
    let mut info = Vec::with_capacity(56);
    info.extend_from_slice(&XEN_HVM_START_MAGIC.to_le_bytes());
    info.extend_from_slice(&1u32.to_le_bytes()); // version
    info.extend_from_slice(&0u32.to_le_bytes()); // flags
    info.extend_from_slice(&u32::from(initrd.is_some()).to_le_bytes());
    info.extend_from_slice(&PVH_MODLIST_START.to_le_bytes());
    info.extend_from_slice(&CMDLINE_START.to_le_bytes());
    info.extend_from_slice(&0u64.to_le_bytes()); // no ACPI RSDP
    info.extend_from_slice(&PVH_MEMMAP_START.to_le_bytes());
    info.extend_from_slice(&(e820.len() as u32).to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes());
    write("PVH start info", &info, PVH_INFO_START)
}

/// The boot GDT for PVH: flat 32-bit code and data, TSS.
const PVH_GDT: [u64; 4] = [
    0,
    0x00cf_9b00_0000_ffff, // code: present, exec/read, 32-bit, 4 GiB
    0x00cf_9300_0000_ffff, // data: present, read/write, 32-bit, 4 GiB
    0x0000_8b00_0000_0067, // TSS
];

/// Write the PVH GDT and compute the special registers: 32-bit protected
/// mode, paging off, as the PVH ABI requires.
pub fn setup_pvh_mode<M: GuestMemoryBackend>(
    mem: &M,
    sregs: &mut kvm_sregs,
) -> Result<(), BootError> {
    let gdt: Vec<u8> = PVH_GDT.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&gdt, GuestAddress(BOOT_GDT_START))
        .map_err(|source| BootError::Write {
            what: "GDT",
            source,
        })?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (PVH_GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    let data = segment_from_gdt(PVH_GDT[2], 2);
    sregs.cs = segment_from_gdt(PVH_GDT[1], 1);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(PVH_GDT[3], 3);
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    Ok(())
}

/// General-purpose registers at the PVH entry point.
pub fn pvh_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rbx: PVH_INFO_START,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem(size: usize) -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    #[test]
    fn pvh_start_info_points_at_cmdline_modules_and_memmap() {
        let m = mem(64 << 20);
        setup_pvh_info(
            &m,
            Some(InitrdPlacement {
                addr: 0x300_0000,
                size: 77,
            }),
        )
        .unwrap();
        let magic: u32 = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(magic, XEN_HVM_START_MAGIC);
        let nr_modules: u32 = m.read_obj(GuestAddress(PVH_INFO_START + 12)).unwrap();
        assert_eq!(nr_modules, 1);
        let cmdline: u64 = m.read_obj(GuestAddress(PVH_INFO_START + 24)).unwrap();
        assert_eq!(cmdline, CMDLINE_START);
        let entries: u32 = m.read_obj(GuestAddress(PVH_INFO_START + 48)).unwrap();
        assert_eq!(entries, 2);
        let module_size: u64 = m.read_obj(GuestAddress(PVH_MODLIST_START + 8)).unwrap();
        assert_eq!(module_size, 77);
        let second_ram: u64 = m.read_obj(GuestAddress(PVH_MEMMAP_START + 24)).unwrap();
        assert_eq!(second_ram, HIMEM_START);
        let mut sregs = kvm_sregs::default();
        setup_pvh_mode(&m, &mut sregs).unwrap();
        assert_eq!((sregs.cs.db, sregs.cs.l, sregs.cr0 & X86_CR0_PG), (1, 0, 0));
        // A flat 4 GiB code segment: the PVH entry lies far above 1 MiB.
        assert_eq!(sregs.cs.limit, 0xffff_ffff);
        assert_eq!(sregs.tr.limit, 0x67);
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
            (0, 1, 16, 0xffff_ffff)
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
