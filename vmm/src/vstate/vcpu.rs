//! vCPUs: boot state, and the run loop that hands port-I/O and MMIO exits
//! to an [`IoHandler`] (the device buses implement it; this module does not
//! know them).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, CpuId, Msrs, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

use super::memory::GuestMemoryMmap;
use super::pvm::{self, Fixup, PvmStats};
use super::state::VcpuState;
use super::xstate::{self, XstateError};

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("KVM_CREATE_VCPU failed")]
    Create(#[source] kvm_ioctls::Error),
    #[error("vCPU {id}: {what} failed")]
    Ioctl {
        id: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}: KVM_RUN failed")]
    Run {
        id: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}: the guest executed an instruction nobody can emulate at RIP {rip:#x}: bytes {bytes:02x?}")]
    Emulation { id: u8, rip: u64, bytes: Vec<u8> },
    #[error("vCPU {id}: emulating XSAVE/XRSTOR at RIP {rip:#x}")]
    Xstate {
        id: u8,
        rip: u64,
        #[source]
        source: XstateError,
    },
    #[error("vCPU {id}: emulating XSAVE/XRSTOR at RIP {rip:#x}: the host's XSAVE area ({size} bytes) exceeds KVM_GET_XSAVE's 4096")]
    XstateTooLarge { id: u8, rip: u64, size: usize },
    #[error("vCPU {id}: KVM internal error, suberror {suberror}, data {data:x?}")]
    Internal {
        id: u8,
        suberror: u32,
        data: Vec<u64>,
    },
    #[error("vCPU {id}: VM entry failed, hardware reason {reason:#x}")]
    FailEntry { id: u8, reason: u64 },
    #[error("vCPU {id}: unexpected exit: {exit}")]
    UnexpectedExit { id: u8, exit: String },
}

/// Why a vCPU stopped running without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuStop {
    /// The VMM asked it to stop.
    Requested,
    /// The guest asked for a reset or power-off (i8042, PSCI, HLT with no way to wake).
    GuestShutdown,
    /// The guest triple-faulted.
    TripleFault,
}

/// What the VMM wants the vCPUs to do; they check it between exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Run,
    Pause,
    Stop,
}

/// What the VMM asks of the vCPUs, under one lock.
struct Wanted {
    run: RunState,
    /// vCPUs asked to save their state at their next pause.
    save: BTreeSet<u8>,
}

/// A vCPU's saved state, or why it could not be saved.
pub type SavedVcpu = Result<VcpuState, String>;

/// Shared between the VMM thread and the vCPU threads.
pub struct VcpuControl {
    wanted: Mutex<Wanted>,
    changed: Condvar,
    /// vCPUs currently parked by a pause.
    pub parked: AtomicUsize,
    saved: Mutex<BTreeMap<u8, SavedVcpu>>,
}

impl Default for VcpuControl {
    fn default() -> Self {
        Self {
            wanted: Mutex::new(Wanted {
                run: RunState::Run,
                save: BTreeSet::new(),
            }),
            changed: Condvar::new(),
            parked: AtomicUsize::new(0),
            saved: Mutex::new(BTreeMap::new()),
        }
    }
}

impl VcpuControl {
    fn wanted(&self) -> std::sync::MutexGuard<'_, Wanted> {
        self.wanted.lock().expect("vcpu control poisoned")
    }

    pub fn set(&self, state: RunState) {
        self.wanted().run = state;
        self.changed.notify_all();
    }

    pub fn get(&self) -> RunState {
        self.wanted().run
    }

    /// Asks the (paused) vCPUs `ids` to save their state; collect it with
    /// [`Self::take_saved`].
    pub fn request_save(&self, ids: impl IntoIterator<Item = u8>) {
        self.saved.lock().expect("vcpu control poisoned").clear();
        self.wanted().save.extend(ids);
        self.changed.notify_all();
    }

    /// The states saved so far, by vCPU id (taken out).
    pub fn take_saved(&self) -> BTreeMap<u8, SavedVcpu> {
        std::mem::take(&mut *self.saved.lock().expect("vcpu control poisoned"))
    }

    /// How many vCPUs have answered the last [`Self::request_save`].
    pub fn saved_count(&self) -> usize {
        self.saved.lock().expect("vcpu control poisoned").len()
    }

    fn save_requested(&self, id: u8) -> bool {
        self.wanted().save.remove(&id)
    }

    fn deliver(&self, id: u8, state: SavedVcpu) {
        self.saved
            .lock()
            .expect("vcpu control poisoned")
            .insert(id, state);
    }

    /// Block while paused and vCPU `id` has nothing to save; returns the
    /// state that ended the wait.
    fn wait_while_paused(&self, id: u8) -> RunState {
        let mut wanted = self.wanted();
        self.parked.fetch_add(1, Ordering::SeqCst);
        while wanted.run == RunState::Pause && !wanted.save.contains(&id) {
            wanted = self.changed.wait(wanted).expect("vcpu control poisoned");
        }
        self.parked.fetch_sub(1, Ordering::SeqCst);
        wanted.run
    }
}

/// The signal that kicks a vCPU thread out of KVM_RUN (its handler does nothing;
/// the interrupted ioctl returns EINTR and the loop rereads [`VcpuControl`]).
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Install the no-op handler for [`kick_signal`]; call once per process.
pub fn register_kick_signal() -> Result<(), vmm_sys_util::errno::Error> {
    extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    vmm_sys_util::signal::register_signal_handler(kick_signal(), noop)
}

/// What answers the guest's accesses to one address space (port I/O or
/// MMIO) when they exit to the VMM.
pub trait IoHandler: Send + Sync {
    /// Fill `data` from `addr`; false when nothing answers there.
    fn read(&self, addr: u64, data: &mut [u8]) -> bool;
    /// Write `data` at `addr`; false when nothing answers there.
    fn write(&self, addr: u64, data: &[u8]) -> bool;
}

/// Everything a vCPU thread needs to run.
pub struct VcpuRunContext {
    pub pio: Arc<dyn IoHandler>,
    pub mmio: Arc<dyn IoHandler>,
    pub mem: GuestMemoryMmap,
    pub control: Arc<VcpuControl>,
    /// Present only on nested-PVM hosts: complete failed emulations.
    pub pvm: bool,
    /// The MSRs a saved state includes (KVM's list).
    pub msrs_to_save: Arc<Vec<u32>>,
}

pub struct Vcpu {
    id: u8,
    pub(super) fd: VcpuFd,
    pvm_stats: PvmStats,
    /// The XSAVE layout, read from CPUID at the first XSAVE/XRSTOR.
    xstate_layout: Option<xstate::Layout>,
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const CR4_LA57: u64 = 1 << 12;
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

impl Vcpu {
    pub(super) fn new(id: u8, fd: VcpuFd) -> Self {
        Self {
            id,
            fd,
            pvm_stats: PvmStats::default(),
            xstate_layout: None,
        }
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    pub(super) fn ioctl<T>(
        &self,
        what: &'static str,
        r: Result<T, kvm_ioctls::Error>,
    ) -> Result<T, VcpuError> {
        r.map_err(|source| VcpuError::Ioctl {
            id: self.id,
            what,
            source,
        })
    }

    /// CPUID, boot MSRs, FPU and LAPIC LINT pins: the same for every vCPU.
    pub fn configure(&self, cpuid: &CpuId) -> Result<(), VcpuError> {
        self.ioctl("KVM_SET_CPUID2", self.fd.set_cpuid2(cpuid))?;
        let entries: Vec<kvm_msr_entry> = [
            (MSR_IA32_SYSENTER_CS, 0),
            (MSR_IA32_SYSENTER_ESP, 0),
            (MSR_IA32_SYSENTER_EIP, 0),
            (MSR_STAR, 0),
            (MSR_CSTAR, 0),
            (MSR_KERNEL_GS_BASE, 0),
            (MSR_SYSCALL_MASK, 0),
            (MSR_LSTAR, 0),
            (MSR_IA32_TSC, 0),
            (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
            (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
        ]
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
        let msrs = Msrs::from_entries(&entries).expect("a fixed, small MSR list fits");
        let set = self.ioctl("KVM_SET_MSRS", self.fd.set_msrs(&msrs))?;
        if set != entries.len() {
            log::debug!(
                "vCPU {}: KVM accepted {set} of {} boot MSRs",
                self.id,
                entries.len()
            );
        }
        self.ioctl(
            "KVM_SET_FPU",
            self.fd.set_fpu(&kvm_fpu {
                fcw: 0x37f,
                mxcsr: 0x1f80,
                ..Default::default()
            }),
        )?;
        let mut lapic = self.ioctl("KVM_GET_LAPIC", self.fd.get_lapic())?;
        for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
            let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
            let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
            for (i, b) in value.to_le_bytes().iter().enumerate() {
                lapic.regs[reg + i] = *b as libc::c_char;
            }
        }
        self.ioctl("KVM_SET_LAPIC", self.fd.set_lapic(&lapic))
    }

    pub fn sregs(&self) -> Result<kvm_sregs, VcpuError> {
        self.ioctl("KVM_GET_SREGS", self.fd.get_sregs())
    }

    /// Registers of the boot vCPU at the kernel entry point.
    pub fn set_boot_state(&self, regs: &kvm_regs, sregs: &kvm_sregs) -> Result<(), VcpuError> {
        self.ioctl("KVM_SET_SREGS", self.fd.set_sregs(sregs))?;
        self.ioctl("KVM_SET_REGS", self.fd.set_regs(regs))
    }

    /// The thread body: run until the guest stops, the VMM asks, or an error.
    pub fn run(mut self, ctx: VcpuRunContext) -> Result<VcpuStop, VcpuError> {
        let result = self.run_loop(&ctx);
        if ctx.pvm {
            log::debug!("vCPU {}: PVM fix-ups: {:?}", self.id, self.pvm_stats);
        }
        result
    }

    fn run_loop(&mut self, ctx: &VcpuRunContext) -> Result<VcpuStop, VcpuError> {
        let id = self.id;
        loop {
            match ctx.control.get() {
                RunState::Run => {}
                RunState::Stop => return Ok(VcpuStop::Requested),
                RunState::Pause => {
                    if ctx.control.save_requested(id) {
                        let saved = self
                            .complete_pending_io()
                            .and_then(|()| self.save_state(&ctx.msrs_to_save))
                            .map_err(|e| hull_protocol::error_chain(&e));
                        ctx.control.deliver(id, saved);
                    }
                    if ctx.control.wait_while_paused(id) == RunState::Stop {
                        return Ok(VcpuStop::Requested);
                    }
                    continue;
                }
            }
            match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !ctx.pio.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    ctx.pio.write(u64::from(port), data);
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !ctx.mmio.read(addr, data) {
                        data.fill(0);
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    ctx.mmio.write(addr, data);
                }
                Ok(VcpuExit::Hlt) => return Ok(VcpuStop::GuestShutdown),
                Ok(VcpuExit::Shutdown) => return Ok(VcpuStop::TripleFault),
                Ok(VcpuExit::SystemEvent(kind, _))
                    if kind == KVM_SYSTEM_EVENT_SHUTDOWN || kind == KVM_SYSTEM_EVENT_RESET =>
                {
                    return Ok(VcpuStop::GuestShutdown)
                }
                Ok(VcpuExit::InternalError) => self.handle_internal_error(ctx)?,
                Ok(VcpuExit::FailEntry(reason, _)) => {
                    return Err(VcpuError::FailEntry { id, reason })
                }
                Ok(VcpuExit::Intr) => {}
                Ok(other) => {
                    return Err(VcpuError::UnexpectedExit {
                        id,
                        exit: format!("{other:?}"),
                    })
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(source) => return Err(VcpuError::Run { id, source }),
            }
        }
    }

    /// Complete an instruction the (PVM) emulator could not; anything else stops the VM.
    fn handle_internal_error(&mut self, ctx: &VcpuRunContext) -> Result<(), VcpuError> {
        let id = self.id;
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM_RUN returned KVM_EXIT_INTERNAL_ERROR, so the exit union
        // holds `internal` (suberror, ndata, data[16]); every bit pattern of
        // those integer fields is valid.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let (suberror, ndata, data) = (internal.suberror, internal.ndata, internal.data);
        let regs = self.ioctl("KVM_GET_REGS", self.fd.get_regs())?;
        let internal_error = || VcpuError::Internal {
            id,
            suberror,
            data: data[..(ndata as usize).min(16)].to_vec(),
        };
        if !ctx.pvm {
            return Err(internal_error());
        }
        let insn = match pvm::reported_insn(suberror, ndata, &data) {
            Some(bytes) => bytes,
            None if suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => {
                self.read_insn(&ctx.mem, regs.rip)
            }
            None => return Err(internal_error()),
        };
        if let Some(x) = xstate::decode(&insn) {
            return self.emulate_xstate(ctx, &x, &regs);
        }
        let fixup = pvm::fixup_for(&insn).ok_or_else(|| VcpuError::Emulation {
            id,
            rip: regs.rip,
            bytes: insn.clone(),
        })?;
        self.pvm_stats.record(&fixup);
        let (len, vector) = match fixup {
            Fixup::Skip { len } => (len, None),
            Fixup::SkipAndInject { len, vector } => (len, Some(vector)),
            Fixup::Inject { vector } => (0, Some(vector)),
        };
        if len > 0 {
            self.skip(&regs, len)?;
        }
        if let Some(vector) = vector {
            self.inject(vector, None)?;
        }
        Ok(())
    }

    fn skip(&self, regs: &kvm_regs, len: u64) -> Result<(), VcpuError> {
        let regs = kvm_regs {
            rip: regs.rip + len,
            ..*regs
        };
        self.ioctl("KVM_SET_REGS", self.fd.set_regs(&regs))
    }

    /// Raise exception `vector` in the guest, before the next instruction.
    fn inject(&self, vector: u8, error_code: Option<u32>) -> Result<(), VcpuError> {
        let mut events = self.ioctl("KVM_GET_VCPU_EVENTS", self.fd.get_vcpu_events())?;
        events.exception.injected = 1;
        events.exception.nr = vector;
        events.exception.has_error_code = u8::from(error_code.is_some());
        events.exception.error_code = error_code.unwrap_or(0);
        self.ioctl("KVM_SET_VCPU_EVENTS", self.fd.set_vcpu_events(&events))
    }

    /// XSAVE/XRSTOR (the guest kernel's context switches and signal frames):
    /// see [`xstate`] for why the VMM completes them under PVM.
    fn emulate_xstate(
        &mut self,
        ctx: &VcpuRunContext,
        insn: &xstate::Insn,
        regs: &kvm_regs,
    ) -> Result<(), VcpuError> {
        let (id, rip) = (self.id, regs.rip);
        let layout = self
            .xstate_layout
            .get_or_insert_with(xstate::Layout::host)
            .clone();
        if layout.max_size > xstate::KVM_AREA {
            let size = layout.max_size;
            return Err(VcpuError::XstateTooLarge { id, rip, size });
        }
        let sregs = self.ioctl("KVM_GET_SREGS", self.fd.get_sregs())?;
        let xcrs = self.ioctl("KVM_GET_XCRS", self.fd.get_xcrs())?;
        let xcr0 = xcrs.xcrs[..(xcrs.nr_xcrs as usize).min(xcrs.xcrs.len())]
            .iter()
            .find(|x| x.xcr == 0)
            .map_or(xstate::X87_SSE, |x| x.value);
        let gpr = [
            regs.rax, regs.rcx, regs.rdx, regs.rbx, regs.rsp, regs.rbp, regs.rsi, regs.rdi,
            regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
        ];
        let req = xstate::Request {
            op: insn.op,
            addr: insn.address(&gpr, rip),
            rfbm: xcr0 & ((regs.rdx << 32) | (regs.rax & 0xffff_ffff)),
            xcr0,
        };
        let paging = xstate::Paging {
            cr3: sregs.cr3,
            la57: sregs.cr4 & CR4_LA57 != 0,
        };
        let mut state = self.ioctl("KVM_GET_XSAVE", self.fd.get_xsave())?;
        let mut area = [0u8; xstate::KVM_AREA];
        for (bytes, word) in area.chunks_exact_mut(4).zip(state.region.iter()) {
            bytes.copy_from_slice(&word.to_le_bytes());
        }
        match xstate::emulate(&req, &ctx.mem, &paging, &layout, &mut area) {
            Ok(()) => {}
            Err(XstateError::Guest(e)) => {
                self.pvm_stats.xstate_faults += 1;
                if let Some(cr2) = e.cr2 {
                    let sregs = kvm_sregs { cr2, ..sregs };
                    self.ioctl("KVM_SET_SREGS", self.fd.set_sregs(&sregs))?;
                }
                return self.inject(e.vector, Some(e.error_code));
            }
            Err(source) => return Err(VcpuError::Xstate { id, rip, source }),
        }
        if insn.op == xstate::Op::Restore {
            for (word, bytes) in state.region.iter_mut().zip(area.chunks_exact(4)) {
                *word = u32::from_le_bytes(bytes.try_into().expect("4 bytes"));
            }
            // SAFETY: the host's whole XSAVE area fits the 4096-byte region
            // (checked above), so KVM reads nothing past `state`.
            let set = unsafe { self.fd.set_xsave(&state) };
            self.ioctl("KVM_SET_XSAVE", set)?;
            self.pvm_stats.xrstor += 1;
        } else {
            self.pvm_stats.xsave += 1;
        }
        self.skip(regs, insn.len)
    }

    /// The bytes at guest-virtual `rip`, when KVM did not report them.
    fn read_insn(&self, mem: &GuestMemoryMmap, rip: u64) -> Vec<u8> {
        let Ok(tr) = self.fd.translate_gva(rip) else {
            return Vec::new();
        };
        if tr.valid == 0 {
            return Vec::new();
        }
        let mut bytes = [0u8; 15];
        // Stop at the page end: the next page may not be contiguous.
        let n = (0x1000 - (tr.physical_address & 0xfff)).min(15) as usize;
        match mem.read_slice(&mut bytes[..n], GuestAddress(tr.physical_address)) {
            Ok(()) => bytes[..n].to_vec(),
            Err(_) => Vec::new(),
        }
    }
}
