//! XSAVE and XRSTOR for a guest kernel under nested PVM.
//!
//! Why: a guest's user code runs natively and sees the host's XCR0 (here
//! x87, SSE, AVX and AVX-512), so glibc uses AVX registers. The guest
//! kernel's mode runs through KVM's instruction emulator, which has no
//! XSAVE/XRSTOR. Hiding XSAVE from the guest kernel (`clearcpuid=xsave`)
//! made it context-switch with FXSAVE, which keeps only x87 and SSE: every
//! process then saw the upper halves of the last process's vector registers,
//! and fresh processes died with SIGSEGV at random. So the guest kernel
//! keeps XSAVE, and the VMM completes the two instructions it uses for them
//! when the emulator gives up (standard form only: XSAVEOPT, XSAVEC and
//! XSAVES stay hidden, so the kernel never uses the compacted form).
//!
//! The state itself is KVM's (`KVM_GET_XSAVE`, standard form, laid out by
//! CPUID leaf 0xd as on the host); the memory operand is guest-virtual,
//! translated here by walking the guest's page tables, so a write never
//! lands in a read-only (copy-on-write) page and a missing page becomes the
//! guest's own page fault.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// x87 (bit 0), SSE (bit 1), AVX (bit 2).
const X87: u64 = 1;
const SSE: u64 = 1 << 1;
const AVX: u64 = 1 << 2;
/// XCR0 when the guest never set it.
pub const X87_SSE: u64 = X87 | SSE;
/// Where the XSAVE header starts, and its size.
const HEADER: usize = 512;
const HEADER_LEN: usize = 64;
/// The legacy region's parts: x87 control/status words and pointers, MXCSR
/// (and its mask), the eight ST registers, the sixteen XMM registers.
const X87_CONTROL: std::ops::Range<usize> = 0..24;
const MXCSR: std::ops::Range<usize> = 24..28;
const MXCSR_MASK: std::ops::Range<usize> = 28..32;
const ST_REGS: std::ops::Range<usize> = 32..160;
const XMM_REGS: std::ops::Range<usize> = 160..416;
/// Bytes of KVM's `kvm_xsave` region.
pub const KVM_AREA: usize = 4096;

const GP_VECTOR: u8 = 13;
const PF_VECTOR: u8 = 14;

/// Which instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Save,
    Restore,
}

/// A decoded XSAVE/XRSTOR with its memory operand (64-bit addressing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insn {
    pub op: Op,
    /// Instruction length, to step over it.
    pub len: u64,
    base: Option<usize>,
    index: Option<(usize, u8)>,
    disp: i64,
    rip_relative: bool,
}

/// Decode `[REX] 0F AE /4` (XSAVE) or `/5` (XRSTOR) with a memory operand.
/// Anything else (other prefixes, register forms, other opcodes): `None`.
pub fn decode(insn: &[u8]) -> Option<Insn> {
    let (rex, rest) = match insn.first()? {
        rex @ 0x40..=0x4f => (*rex, &insn[1..]),
        _ => (0, insn),
    };
    let [0x0f, 0xae, modrm, tail @ ..] = rest else {
        return None;
    };
    let (md, reg, rm) = (modrm >> 6, (modrm >> 3) & 7, modrm & 7);
    let op = match reg {
        4 => Op::Save,
        5 => Op::Restore,
        _ => return None,
    };
    if md == 3 {
        return None;
    }
    let rex_b = usize::from(rex & 1) << 3;
    let rex_x = usize::from((rex >> 1) & 1) << 3;
    let mut at = 0; // bytes of `tail` used
    let (mut base, mut index, mut rip_relative) = (Some(usize::from(rm) | rex_b), None, false);
    let mut disp_len = match md {
        1 => 1,
        2 => 4,
        _ => 0,
    };
    if rm == 4 {
        let sib = *tail.first()?;
        at = 1;
        let (scale, idx, b) = (sib >> 6, (sib >> 3) & 7, sib & 7);
        let idx = usize::from(idx) | rex_x;
        if idx != 4 {
            index = Some((idx, 1u8 << scale));
        }
        base = Some(usize::from(b) | rex_b);
        if b == 5 && md == 0 {
            base = None;
            disp_len = 4;
        }
    } else if rm == 5 && md == 0 {
        base = None;
        rip_relative = true;
        disp_len = 4;
    }
    let disp_bytes = tail.get(at..at + disp_len)?;
    let disp = match disp_len {
        1 => i64::from(disp_bytes[0] as i8),
        4 => i64::from(i32::from_le_bytes(disp_bytes.try_into().ok()?)),
        _ => 0,
    };
    let len = (insn.len() - rest.len() + 3 + at + disp_len) as u64;
    Some(Insn {
        op,
        len,
        base,
        index,
        disp,
        rip_relative,
    })
}

impl Insn {
    /// The operand's linear address. `gpr` is indexed as the ModRM
    /// encoding numbers registers (rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi,
    /// r8..r15); `rip` is the instruction's own address.
    pub fn address(&self, gpr: &[u64; 16], rip: u64) -> u64 {
        let mut addr = self.disp as u64;
        if self.rip_relative {
            addr = addr.wrapping_add(rip).wrapping_add(self.len);
        }
        if let Some(base) = self.base {
            addr = addr.wrapping_add(gpr[base]);
        }
        if let Some((index, scale)) = self.index {
            addr = addr.wrapping_add(gpr[index].wrapping_mul(u64::from(scale)));
        }
        addr
    }
}

/// Where each state component sits in the standard-form area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// (component bit, offset, size) for components 2..63 the CPU has.
    components: Vec<(u32, usize, usize)>,
    /// Bytes of the area with every supported component.
    pub max_size: usize,
}

impl Layout {
    /// The host's layout (CPUID leaf 0xd); the guest's is the same under PVM,
    /// whose CPUID comes from the host.
    pub fn host() -> Self {
        use std::arch::x86_64::__cpuid_count;
        // CPUID leaf 0xd reads as zeros on a CPU without XSAVE.
        let leaf0 = __cpuid_count(0xd, 0);
        let supported = u64::from(leaf0.eax) | (u64::from(leaf0.edx) << 32);
        let components = (2..63)
            .filter(|bit| supported & (1 << bit) != 0)
            .map(|bit| {
                // Sub-leaf `bit` describes component `bit`.
                let sub = __cpuid_count(0xd, bit);
                (bit, sub.ebx as usize, sub.eax as usize)
            })
            .collect();
        Self {
            components,
            max_size: leaf0.ecx as usize,
        }
    }

    /// Bytes of the area that XSAVE/XRSTOR touch for `rfbm`.
    pub fn size(&self, rfbm: u64) -> usize {
        self.components
            .iter()
            .filter(|(bit, _, _)| rfbm & (1 << bit) != 0)
            .map(|(_, offset, size)| offset + size)
            .fold(HEADER + HEADER_LEN, usize::max)
    }

    fn extended(&self, rfbm: u64) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        self.components
            .iter()
            .filter(move |(bit, _, _)| rfbm & (1 << bit) != 0)
            .map(|(_, offset, size)| *offset..offset + size)
    }
}

/// An exception the instruction raises in the guest instead of completing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exception {
    pub vector: u8,
    pub error_code: u32,
    /// The faulting address, for a page fault.
    pub cr2: Option<u64>,
}

impl Exception {
    fn gp() -> Self {
        Self {
            vector: GP_VECTOR,
            error_code: 0,
            cr2: None,
        }
    }
}

/// What went wrong emulating.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XstateError {
    #[error("the guest raises {0:?}")]
    Guest(Exception),
    #[error("guest page tables point outside guest memory (physical {0:#x})")]
    OutsideMemory(u64),
}

/// The guest's paging, as the vCPU's control registers set it up.
#[derive(Debug, Clone, Copy)]
pub struct Paging {
    pub cr3: u64,
    /// CR4.LA57: five levels.
    pub la57: bool,
}

const PTE_PRESENT: u64 = 1;
const PTE_WRITE: u64 = 1 << 1;
const PTE_ACCESSED: u64 = 1 << 5;
const PTE_DIRTY: u64 = 1 << 6;
const PTE_HUGE: u64 = 1 << 7;
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;
const PF_PRESENT: u32 = 1;
const PF_WRITE: u32 = 1 << 1;

impl Paging {
    /// The guest-physical address of `addr` for a supervisor access, as the
    /// CPU would find it (CR0.WP set: a write needs every level writable);
    /// sets the accessed bits, and the dirty bit of a written page.
    pub fn translate<M: GuestMemory>(
        &self,
        mem: &M,
        addr: u64,
        write: bool,
    ) -> Result<u64, XstateError> {
        let levels: u32 = if self.la57 { 5 } else { 4 };
        let bits = 12 + 9 * levels;
        let canonical = ((addr << (64 - bits)) as i64 >> (64 - bits)) as u64;
        if canonical != addr {
            return Err(XstateError::Guest(Exception::gp()));
        }
        let fault = |present: bool| {
            XstateError::Guest(Exception {
                vector: PF_VECTOR,
                error_code: (u32::from(present) * PF_PRESENT) | (u32::from(write) * PF_WRITE),
                cr2: Some(addr),
            })
        };
        let mut table = self.cr3 & PTE_ADDR;
        let mut writable = true;
        for level in (0..levels).rev() {
            let shift = 12 + 9 * level;
            let slot = GuestAddress(table + ((addr >> shift) & 0x1ff) * 8);
            let entry: u64 = mem
                .read_obj(slot)
                .map_err(|_| XstateError::OutsideMemory(slot.0))?;
            if entry & PTE_PRESENT == 0 {
                return Err(fault(false));
            }
            writable &= entry & PTE_WRITE != 0;
            if write && !writable {
                return Err(fault(true));
            }
            let leaf = level == 0 || (entry & PTE_HUGE != 0 && (level == 1 || level == 2));
            let mut updated = entry | PTE_ACCESSED;
            if leaf && write {
                updated |= PTE_DIRTY;
            }
            if updated != entry {
                mem.write_obj(updated, slot)
                    .map_err(|_| XstateError::OutsideMemory(slot.0))?;
            }
            if leaf {
                let page = (entry & PTE_ADDR) & !((1u64 << shift) - 1);
                return Ok(page | (addr & ((1u64 << shift) - 1)));
            }
            table = entry & PTE_ADDR;
        }
        unreachable!("the last level is always a leaf")
    }

    /// Translate `len` bytes at `addr`, page by page: (guest-physical
    /// address, offset in the area, length) for each piece. Nothing is
    /// touched before every page is known to be accessible.
    fn pieces<M: GuestMemory>(
        &self,
        mem: &M,
        addr: u64,
        len: usize,
        write: bool,
    ) -> Result<Vec<(u64, usize, usize)>, XstateError> {
        let mut pieces = Vec::new();
        let mut done = 0;
        while done < len {
            let at = addr.wrapping_add(done as u64);
            let n = ((0x1000 - (at & 0xfff)) as usize).min(len - done);
            pieces.push((self.translate(mem, at, write)?, done, n));
            done += n;
        }
        Ok(pieces)
    }
}

/// One execution of the instruction.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub op: Op,
    /// The memory operand's linear address.
    pub addr: u64,
    /// The requested-feature bitmap: XCR0 & EDX:EAX.
    pub rfbm: u64,
    /// The guest's XCR0.
    pub xcr0: u64,
}

/// Emulate `req` against guest memory: `kvm` is the vCPU's state as
/// `KVM_GET_XSAVE` gives it and is updated for XRSTOR (then to be set with
/// `KVM_SET_XSAVE`).
pub fn emulate<M: GuestMemory>(
    req: &Request,
    mem: &M,
    paging: &Paging,
    layout: &Layout,
    kvm: &mut [u8; KVM_AREA],
) -> Result<(), XstateError> {
    let &Request {
        op,
        addr,
        rfbm,
        xcr0,
    } = req;
    if addr % 64 != 0 {
        return Err(XstateError::Guest(Exception::gp()));
    }
    let size = layout.size(rfbm);
    let pieces = paging.pieces(mem, addr, size, op == Op::Save)?;
    let mut area = vec![0u8; size];
    for &(gpa, at, n) in &pieces {
        mem.read_slice(&mut area[at..at + n], GuestAddress(gpa))
            .map_err(|_| XstateError::OutsideMemory(gpa))?;
    }
    match op {
        Op::Save => {
            save(kvm, rfbm, layout, &mut area);
            for &(gpa, at, n) in &pieces {
                mem.write_slice(&area[at..at + n], GuestAddress(gpa))
                    .map_err(|_| XstateError::OutsideMemory(gpa))?;
            }
            Ok(())
        }
        Op::Restore => restore(kvm, rfbm, xcr0, layout, &area).map_err(XstateError::Guest),
    }
}

fn xstate_bv(area: &[u8]) -> u64 {
    u64::from_le_bytes(area[HEADER..HEADER + 8].try_into().expect("8 bytes"))
}

fn set_xstate_bv(area: &mut [u8], value: u64) {
    area[HEADER..HEADER + 8].copy_from_slice(&value.to_le_bytes());
}

/// XSAVE, standard form: the components in `rfbm` from `kvm` into `area`,
/// and their in-use bits into XSTATE_BV; the rest of `area` is unchanged.
fn save(kvm: &[u8; KVM_AREA], rfbm: u64, layout: &Layout, area: &mut [u8]) {
    let mut copy = |range: std::ops::Range<usize>| area[range.clone()].copy_from_slice(&kvm[range]);
    if rfbm & X87 != 0 {
        copy(X87_CONTROL);
        copy(ST_REGS);
    }
    if rfbm & (SSE | AVX) != 0 {
        copy(MXCSR);
        copy(MXCSR_MASK);
    }
    if rfbm & SSE != 0 {
        copy(XMM_REGS);
    }
    for range in layout.extended(rfbm) {
        copy(range);
    }
    let in_use = xstate_bv(kvm);
    set_xstate_bv(area, (xstate_bv(area) & !rfbm) | (in_use & rfbm));
}

/// XRSTOR, standard form: for each component in `rfbm`, load it from
/// `area` if XSTATE_BV marks it, else put it in its initial state. Raises
/// #GP where the CPU would: a compacted or malformed header, XSTATE_BV
/// beyond XCR0, reserved MXCSR bits.
fn restore(
    kvm: &mut [u8; KVM_AREA],
    rfbm: u64,
    xcr0: u64,
    layout: &Layout,
    area: &[u8],
) -> Result<(), Exception> {
    let bv = xstate_bv(area);
    if area[HEADER + 8..HEADER + 24].iter().any(|&b| b != 0) || bv & !xcr0 != 0 {
        return Err(Exception::gp());
    }
    if rfbm & (SSE | AVX) != 0 {
        let mxcsr = u32::from_le_bytes(area[MXCSR].try_into().expect("4 bytes"));
        let mask = match u32::from_le_bytes(kvm[MXCSR_MASK].try_into().expect("4 bytes")) {
            0 => 0xffbf,
            mask => mask,
        };
        if mxcsr & !mask != 0 {
            return Err(Exception::gp());
        }
        kvm[MXCSR].copy_from_slice(&area[MXCSR]);
    }
    let load = |kvm: &mut [u8; KVM_AREA], range: std::ops::Range<usize>, bit: u64| {
        if bv & bit != 0 {
            kvm[range.clone()].copy_from_slice(&area[range]);
        } else {
            kvm[range].fill(0);
        }
    };
    if rfbm & X87 != 0 {
        load(kvm, X87_CONTROL, X87);
        load(kvm, ST_REGS, X87);
        if bv & X87 == 0 {
            // The x87 initial state: FCW 0x37f, everything else zero.
            kvm[0..2].copy_from_slice(&0x37fu16.to_le_bytes());
        }
    }
    if rfbm & SSE != 0 {
        load(kvm, XMM_REGS, SSE);
    }
    for range_bit in layout.components.iter() {
        let &(bit, offset, size) = range_bit;
        if rfbm & (1 << bit) != 0 {
            load(kvm, offset..offset + size, 1 << bit);
        }
    }
    let kvm_bv = xstate_bv(kvm);
    set_xstate_bv(kvm, (kvm_bv & !rfbm) | (bv & rfbm));
    Ok(())
}

#[cfg(test)]
#[path = "xstate_tests.rs"]
mod tests;
