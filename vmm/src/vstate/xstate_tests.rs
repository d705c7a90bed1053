use super::*;
use crate::vstate::memory::{self, GuestMemoryMmap};

const RDI: usize = 7;

fn regs_with(reg: usize, value: u64) -> [u64; 16] {
    let mut gpr = [0u64; 16];
    gpr[reg] = value;
    gpr
}

#[test]
fn the_kernels_encodings_decode() {
    // xsave64 (%rdi), xrstor64 (%rdi): what Linux's XSTATE_OP emits.
    let save = decode(&[0x48, 0x0f, 0xae, 0x27, 0x31, 0xc0]).unwrap();
    assert_eq!((save.op, save.len), (Op::Save, 4));
    assert_eq!(save.address(&regs_with(RDI, 0x1000), 0), 0x1000);
    let restore = decode(&[0x48, 0x0f, 0xae, 0x2f]).unwrap();
    assert_eq!((restore.op, restore.len), (Op::Restore, 4));
    // Without REX, with disp8, SIB, REX.B and RIP-relative forms.
    let d8 = decode(&[0x0f, 0xae, 0x67, 0xf0]).unwrap();
    assert_eq!(d8.len, 4);
    assert_eq!(d8.address(&regs_with(RDI, 0x1040), 0), 0x1030);
    let sib = decode(&[0x0f, 0xae, 0x24, 0x24]).unwrap();
    assert_eq!(
        (sib.len, sib.address(&regs_with(4, 0x2000), 0)),
        (4, 0x2000)
    );
    let r12 = decode(&[0x49, 0x0f, 0xae, 0x2c, 0x24]).unwrap();
    assert_eq!(r12.address(&regs_with(12, 0x3000), 0), 0x3000);
    let indexed = decode(&[0x4a, 0x0f, 0xae, 0x24, 0xc7]).unwrap(); // [rdi + r8*8]
    let mut gpr = regs_with(RDI, 0x1000);
    gpr[8] = 2;
    assert_eq!(indexed.address(&gpr, 0), 0x1010);
    let rip = decode(&[0x0f, 0xae, 0x25, 0x10, 0, 0, 0]).unwrap();
    assert_eq!((rip.len, rip.address(&gpr, 0x100)), (7, 0x117));
    let d32 = decode(&[0x0f, 0xae, 0xa7, 0x00, 0x01, 0, 0]).unwrap();
    assert_eq!((d32.len, d32.address(&gpr, 0)), (7, 0x1100));
}

#[test]
fn other_instructions_do_not_decode() {
    for insn in [
        &[0x0f, 0xae, 0xe8][..],   // lfence
        &[0x0f, 0xae, 0xf0],       // mfence
        &[0x48, 0x0f, 0xae, 0x37], // xsaveopt
        &[0x48, 0x0f, 0xc7, 0x2f], // xsaves
        &[0x48, 0x0f, 0xae, 0x07], // fxsave
        &[0x66, 0x0f, 0xae, 0x27], // an operand-size prefix
        &[0x0f, 0xae, 0x67],       // truncated displacement
        &[0x0f, 0xae],             // truncated
        &[],
    ] {
        assert_eq!(decode(insn), None, "{insn:02x?}");
    }
}

/// 2 MiB of guest memory with 4-level tables at 0x1000..0x4000 mapping
/// `VA` (a 4 KiB page, writable unless `read_only`) to `PAGE`, the next
/// page to `SECOND`, and `VA +
/// 2 MiB` through a 2 MiB page at 0x0 (never written by these tests).
const VA: u64 = 0x7fff_0000_0000;
const PAGE: u64 = 0x10000;
/// Where `VA + 4 KiB` lives: not next to `PAGE`.
const SECOND: u64 = 0x20000;

fn guest(read_only: bool) -> (GuestMemoryMmap, Paging) {
    let mem = memory::create(&[(GuestAddress(0), 2 << 20)]).unwrap();
    let (pml4, pdpt, pd, pt) = (0x1000u64, 0x2000u64, 0x3000u64, 0x4000u64);
    let rw = PTE_PRESENT | PTE_WRITE;
    let idx = |shift: u32| (VA >> shift) & 0x1ff;
    mem.write_obj(pdpt | rw, GuestAddress(pml4 + idx(39) * 8))
        .unwrap();
    mem.write_obj(pd | rw, GuestAddress(pdpt + idx(30) * 8))
        .unwrap();
    mem.write_obj(pt | rw, GuestAddress(pd + idx(21) * 8))
        .unwrap();
    mem.write_obj(PTE_PRESENT | PTE_HUGE, GuestAddress(pd + (idx(21) + 1) * 8))
        .unwrap();
    let leaf = if read_only { PTE_PRESENT } else { rw };
    mem.write_obj(PAGE | leaf, GuestAddress(pt + idx(12) * 8))
        .unwrap();
    mem.write_obj(SECOND | leaf, GuestAddress(pt + (idx(12) + 1) * 8))
        .unwrap();
    (
        mem,
        Paging {
            cr3: pml4,
            la57: false,
        },
    )
}

#[test]
fn the_walk_finds_pages_and_marks_them() {
    let (mem, paging) = guest(false);
    assert_eq!(paging.translate(&mem, VA + 0x123, false), Ok(PAGE + 0x123));
    let pte_at = GuestAddress(0x4000 + ((VA >> 12) & 0x1ff) * 8);
    let pte: u64 = mem.read_obj(pte_at).unwrap();
    assert_eq!(pte & (PTE_ACCESSED | PTE_DIRTY), PTE_ACCESSED);
    assert_eq!(paging.translate(&mem, VA + 8, true), Ok(PAGE + 8));
    let pte: u64 = mem.read_obj(pte_at).unwrap();
    assert_eq!(pte & PTE_DIRTY, PTE_DIRTY);
    // The 2 MiB page: offset kept within it; read-only there.
    assert_eq!(
        paging.translate(&mem, VA + (2 << 20) + 0x1234, false),
        Ok(0x1234)
    );
}

#[test]
fn missing_read_only_and_non_canonical_pages_fault_as_the_cpu_would() {
    let (mem, paging) = guest(true);
    let pf = |addr: u64, error_code: u32| {
        Err(XstateError::Guest(Exception {
            vector: 14,
            error_code,
            cr2: Some(addr),
        }))
    };
    assert_eq!(paging.translate(&mem, VA, false), Ok(PAGE));
    assert_eq!(paging.translate(&mem, VA, true), pf(VA, 3));
    assert_eq!(
        paging.translate(&mem, VA + (2 << 20), true),
        pf(VA + (2 << 20), 3)
    );
    assert_eq!(paging.translate(&mem, 0x1000, false), pf(0x1000, 0));
    assert_eq!(paging.translate(&mem, 0x1000, true), pf(0x1000, 2));
    let non_canonical = 0x8000_0000_0000;
    assert_eq!(
        paging.translate(&mem, non_canonical, false),
        Err(XstateError::Guest(Exception::gp()))
    );
}

/// AVX at 576 (256 bytes) and one more component at 1024 (64 bytes).
fn layout() -> Layout {
    Layout {
        components: vec![(2, 576, 256), (5, 1024, 64)],
        max_size: 1088,
    }
}

fn kvm_state(seed: u8, xstate_bv: u64) -> [u8; KVM_AREA] {
    let mut kvm = [0u8; KVM_AREA];
    for (i, b) in kvm.iter_mut().enumerate() {
        *b = seed.wrapping_add(i as u8);
    }
    kvm[MXCSR].copy_from_slice(&0x1f80u32.to_le_bytes());
    kvm[MXCSR_MASK].copy_from_slice(&0xffffu32.to_le_bytes());
    kvm[HEADER..HEADER + HEADER_LEN].fill(0);
    set_xstate_bv(&mut kvm, xstate_bv);
    kvm
}

fn request(op: Op, rfbm: u64) -> Request {
    Request {
        op,
        addr: VA,
        rfbm,
        xcr0: 0x27,
    }
}

#[test]
fn save_then_restore_gives_the_state_back() {
    let (mem, paging) = guest(false);
    let mut kvm = kvm_state(7, 0x27);
    // At 0xc00 the 1088-byte area spans two guest pages.
    let at = |op| Request {
        addr: VA + 0xc00,
        ..request(op, 0x27)
    };
    emulate(&at(Op::Save), &mem, &paging, &layout(), &mut kvm).unwrap();
    let mut area = vec![0u8; 1088];
    mem.read_slice(&mut area[..0x400], GuestAddress(PAGE + 0xc00))
        .unwrap();
    mem.read_slice(&mut area[0x400..], GuestAddress(SECOND))
        .unwrap();
    assert_eq!(xstate_bv(&area), 0x27);
    assert_eq!(area[XMM_REGS], kvm[XMM_REGS]);
    assert_eq!(area[1024..1088], kvm[1024..1088]);
    let saved = kvm;
    let mut other = kvm_state(99, 0x3);
    emulate(&at(Op::Restore), &mem, &paging, &layout(), &mut other).unwrap();
    for range in [X87_CONTROL, MXCSR, ST_REGS, XMM_REGS, 576..832, 1024..1088] {
        assert_eq!(other[range.clone()], saved[range.clone()], "{range:?}");
    }
    assert_eq!(xstate_bv(&other), 0x27);
}

#[test]
fn save_leaves_what_rfbm_excludes() {
    let (mem, paging) = guest(false);
    mem.write_slice(&[0xee; 1088], GuestAddress(PAGE)).unwrap();
    mem.write_obj(0x20u64, GuestAddress(PAGE + HEADER as u64))
        .unwrap();
    let mut kvm = kvm_state(1, 0x7);
    emulate(&request(Op::Save, 0x3), &mem, &paging, &layout(), &mut kvm).unwrap();
    let mut area = vec![0u8; 1088];
    mem.read_slice(&mut area, GuestAddress(PAGE)).unwrap();
    assert_eq!(xstate_bv(&area), 0x23, "bit 5 kept, x87 and SSE from KVM");
    assert!(area[576..832].iter().all(|&b| b == 0xee), "AVX untouched");
    assert!(
        area[416..512].iter().all(|&b| b == 0xee),
        "reserved bytes untouched"
    );
}

#[test]
fn restore_puts_unmarked_components_in_their_initial_state() {
    let (mem, paging) = guest(false);
    let mut area = vec![0x55u8; 1088];
    area[MXCSR].copy_from_slice(&0x1f80u32.to_le_bytes());
    area[HEADER..HEADER + HEADER_LEN].fill(0);
    set_xstate_bv(&mut area, 0x2); // only SSE in use
    mem.write_slice(&area, GuestAddress(PAGE)).unwrap();
    let mut kvm = kvm_state(3, 0x27);
    let before = kvm;
    emulate(
        &request(Op::Restore, 0x7),
        &mem,
        &paging,
        &layout(),
        &mut kvm,
    )
    .unwrap();
    assert_eq!(kvm[0..2], 0x37fu16.to_le_bytes(), "x87 initial FCW");
    assert!(kvm[ST_REGS].iter().all(|&b| b == 0));
    assert_eq!(kvm[XMM_REGS], area[XMM_REGS]);
    assert!(kvm[576..832].iter().all(|&b| b == 0), "AVX initial");
    assert_eq!(kvm[1024..1088], before[1024..1088], "bit 5 not requested");
    assert_eq!(xstate_bv(&kvm), 0x22);
}

#[test]
fn malformed_areas_raise_general_protection() {
    let (mem, paging) = guest(false);
    let write_header = |bv: u64, xcomp: u64, mxcsr: u32| {
        mem.write_obj(mxcsr, GuestAddress(PAGE + 24)).unwrap();
        mem.write_obj(bv, GuestAddress(PAGE + 512)).unwrap();
        mem.write_obj(xcomp, GuestAddress(PAGE + 520)).unwrap();
    };
    let gp = Err(XstateError::Guest(Exception::gp()));
    let mut kvm = kvm_state(0, 0x3);
    for (bv, xcomp, mxcsr) in [
        (0x3, 1 << 63, 0x1f80), // compacted form
        (0x3, 1, 0x1f80),       // XCOMP_BV not zero
        (0x100, 0, 0x1f80),     // beyond XCR0
        (0x3, 0, 0x1_0000),     // reserved MXCSR bit
    ] {
        write_header(bv, xcomp, mxcsr);
        let before = kvm;
        let result = emulate(
            &request(Op::Restore, 0x27),
            &mem,
            &paging,
            &layout(),
            &mut kvm,
        );
        assert_eq!(result, gp, "bv {bv:#x} xcomp {xcomp:#x} mxcsr {mxcsr:#x}");
        assert_eq!(kvm, before, "a refused XRSTOR changes nothing");
    }
    let misaligned = Request {
        addr: VA + 8,
        ..request(Op::Save, 0x3)
    };
    assert_eq!(emulate(&misaligned, &mem, &paging, &layout(), &mut kvm), gp);
}

#[test]
fn save_to_a_read_only_page_faults_and_writes_nothing() {
    let (mem, paging) = guest(true);
    let mut kvm = kvm_state(1, 0x3);
    let result = emulate(&request(Op::Save, 0x3), &mem, &paging, &layout(), &mut kvm);
    assert_eq!(
        result,
        Err(XstateError::Guest(Exception {
            vector: 14,
            error_code: 3,
            cr2: Some(VA)
        }))
    );
    let mut area = vec![0u8; 64];
    mem.read_slice(&mut area, GuestAddress(PAGE)).unwrap();
    assert!(area.iter().all(|&b| b == 0));
}

#[test]
fn the_host_layout_is_consistent() {
    let layout = Layout::host();
    let all = layout
        .components
        .iter()
        .fold(0u64, |acc, (bit, _, _)| acc | (1 << bit));
    assert!(layout.size(all | 3) <= layout.max_size.max(HEADER + HEADER_LEN));
}
