//! What a guest needs to run on nested PVM (`kvm_pvm`), applied only when
//! [`HostKvm::NestedPvm`](super::kvm::HostKvm) is detected.
//!
//! Under PVM the guest's kernel mode runs through KVM's instruction emulator.
//! Three things follow, each measured on a kvm_pvm host (no VMX or SVM in
//! its CPU flags) with a Linux 6.1 guest:
//! 1. CPUID cannot hide features: `KVM_SET_CPUID2` leaves XSAVE, POPCNT,
//!    RDRAND and leaf 7 (SMAP, FSGSBASE, RTM, ...) as the host has them,
//!    whatever the VMM sets. So the kernel command line hides them
//!    (`clearcpuid=`): instructions the emulator lacks are never used.
//! 2. A few instructions still reach the emulator and fail with
//!    `KVM_INTERNAL_ERROR_EMULATION`; [`fixup_for`] says how to complete
//!    them, and XSAVE/XRSTOR are emulated whole ([`super::xstate`]).
//! 3. A user-mode `syscall` jumps to LSTAR without leaving CPL3, so the
//!    fetch at `entry_SYSCALL_64` raises a user-mode #PF at RIP == LSTAR.
//!    hull fixes that in the guest kernel (guest-kernel/patches/0001-*):
//!    the #PF handler recognises the fault and runs the system call. It is
//!    enabled by the `hull_pvm_syscall` argument added here. We chose the
//!    kernel patch over a VMM-side hook that rewrites the #PF entry stub in
//!    guest kernel text: the patch is 30 reviewed lines in C, costs nothing
//!    per fault beyond the fault itself, does not depend on the byte layout
//!    of a particular kernel build, and is inert on hardware KVM.

use kvm_bindings::{
    KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
};

/// Kernel arguments a guest needs under PVM. `clearcpuid=` holds at most 127
/// characters. 114 is X86_FEATURE_LFENCE_RDTSC, which has no name. XSAVE
/// stays: the VMM completes XSAVE/XRSTOR (see [`super::xstate`]); the other
/// forms (XSAVEOPT, XSAVEC, XSAVES) and XGETBV with ECX=1 are hidden, so the
/// kernel uses only those two.
pub const PVM_KERNEL_ARGS: &[&str] = &[
    "clearcpuid=smap,xsaveopt,xsavec,xsaves,xgetbv1,popcnt,cx16,erms,fsrm,fsgsbase,pku,rtm,hle,rdrand,rdseed,rdtscp,rdpid,serialize,114",
    "hull_pvm_syscall",
];

/// What the vCPU loop must do after an emulation failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fixup {
    /// Advance RIP by `len` bytes and resume.
    Skip { len: u64 },
    /// Advance RIP by `len` and inject exception `vector` (a trap).
    SkipAndInject { len: u64, vector: u8 },
    /// Inject exception `vector` without moving RIP (a fault).
    Inject { vector: u8 },
}

const BP_VECTOR: u8 = 3;
const UD_VECTOR: u8 = 6;

/// Decide how to complete an instruction the emulator could not run.
/// `None`: nobody can run it; the VM must stop with an error.
pub fn fixup_for(insn: &[u8]) -> Option<Fixup> {
    match insn {
        // int3: software interrupts are not emulated in long mode; deliver #BP
        // with RIP after the int3, as the CPU would (text_poke, static keys).
        [0xcc, ..] => Some(Fixup::SkipAndInject {
            len: 1,
            vector: BP_VECTOR,
        }),
        // fwait, at every task exit (fpu__drop): no x87 exceptions are pending.
        [0x9b, ..] => Some(Fixup::Skip { len: 1 }),
        // lfence / mfence / sfence, serialize: ordering is already total here.
        [0x0f, 0xae, 0xe8 | 0xf0 | 0xf8, ..] | [0x0f, 0x01, 0xe8, ..] => {
            Some(Fixup::Skip { len: 3 })
        }
        // ud2: the guest wants #UD (BUG()/WARN()).
        [0x0f, 0x0b, ..] => Some(Fixup::Inject { vector: UD_VECTOR }),
        _ => None,
    }
}

/// The instruction bytes KVM reports with an emulation failure, if it did.
/// `data` is `kvm_run.internal.data`: flags, then size + bytes.
pub fn reported_insn(suberror: u32, ndata: u32, data: &[u64; 16]) -> Option<Vec<u8>> {
    if suberror != KVM_INTERNAL_ERROR_EMULATION
        || ndata < 2
        || data[0] & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) == 0
    {
        return None;
    }
    let bytes: Vec<u8> = data[1..3].iter().flat_map(|w| w.to_le_bytes()).collect();
    let size = usize::from(bytes[0]).min(15);
    Some(bytes[1..1 + size].to_vec())
}

/// Counts of fix-ups, reported at debug level when the VM stops.
#[derive(Debug, Default, Clone, Copy)]
pub struct PvmStats {
    pub int3: u64,
    pub skipped: u64,
    pub ud: u64,
    pub xsave: u64,
    pub xrstor: u64,
    /// XSAVE/XRSTOR that raised #PF or #GP in the guest instead.
    pub xstate_faults: u64,
}

impl PvmStats {
    pub fn record(&mut self, fixup: &Fixup) {
        match fixup {
            Fixup::SkipAndInject { .. } => self.int3 += 1,
            Fixup::Skip { .. } => self.skipped += 1,
            Fixup::Inject { .. } => self.ud += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instructions_get_fixups() {
        assert_eq!(
            fixup_for(&[0xcc, 0x90]),
            Some(Fixup::SkipAndInject { len: 1, vector: 3 })
        );
        assert_eq!(fixup_for(&[0x9b]), Some(Fixup::Skip { len: 1 }));
        assert_eq!(fixup_for(&[0x0f, 0xae, 0xe8]), Some(Fixup::Skip { len: 3 }));
        assert_eq!(fixup_for(&[0x0f, 0x01, 0xe8]), Some(Fixup::Skip { len: 3 }));
        assert_eq!(fixup_for(&[0x0f, 0x0b]), Some(Fixup::Inject { vector: 6 }));
        // xrstor, rdrand, empty: nobody can run these.
        assert_eq!(fixup_for(&[0x0f, 0xae, 0x2f]), None);
        assert_eq!(fixup_for(&[0x0f, 0xc7, 0xf0]), None);
        assert_eq!(fixup_for(&[]), None);
    }

    #[test]
    fn reported_bytes_are_decoded() {
        let mut data = [0u64; 16];
        data[0] = 1;
        data[1] = u64::from_le_bytes([2, 0x0f, 0x0b, 0, 0, 0, 0, 0]);
        assert_eq!(
            reported_insn(KVM_INTERNAL_ERROR_EMULATION, 3, &data),
            Some(vec![0x0f, 0x0b])
        );
        assert_eq!(reported_insn(KVM_INTERNAL_ERROR_EMULATION, 1, &data), None);
        data[0] = 0;
        assert_eq!(reported_insn(KVM_INTERNAL_ERROR_EMULATION, 3, &data), None);
        // A bogus size never reads past the 15 instruction bytes.
        data[0] = 1;
        data[1] = 0xff;
        assert_eq!(
            reported_insn(KVM_INTERNAL_ERROR_EMULATION, 3, &data)
                .unwrap()
                .len(),
            15
        );
    }

    #[test]
    fn clearcpuid_fits_the_kernel_limit() {
        assert!(PVM_KERNEL_ARGS[0].len() - "clearcpuid=".len() <= 127);
    }
}
