//! A VM's KVM state, read from a paused VM and written into a new one: the
//! VM-wide part (PIT, kvmclock, PIC and IOAPIC) and each vCPU's registers,
//! FPU/XSAVE, LAPIC, MSRs and pending events.
//!
//! The order of a restore is the one Firecracker uses, and the one verified
//! under nested PVM: the vCPUs are created first, then the VM state is set,
//! then each vCPU's in the order of [`Vcpu::restore_state`]. Each part is
//! needed there: without the LAPIC or the clock a restored guest hangs,
//! without the MSRs (LSTAR, FS/GS bases) its first process faults, without
//! the IOAPIC no interrupt arrives.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use serde::{Deserialize, Serialize};

use super::kvm::Kvm;
use super::vcpu::{Vcpu, VcpuError};
use super::vm::{Vm, VmError};

/// MSR_IA32_TSC.
const MSR_TSC: u32 = 0x10;
/// MSR_IA32_TSC_DEADLINE: the LAPIC timer's deadline, in guest TSC ticks.
const MSR_TSC_DEADLINE: u32 = 0x6e0;

/// One vCPU's state.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub vcpu_events: kvm_vcpu_events,
}

/// The VM-wide interrupt controllers and timers.
#[derive(Serialize, Deserialize)]
pub struct VmKvmState {
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
}

impl Kvm {
    /// The MSRs KVM can save and restore (KVM_GET_MSR_INDEX_LIST).
    pub fn msrs_to_save(&self) -> Result<Vec<u32>, VmError> {
        let list = self
            .fd
            .get_msr_index_list()
            .map_err(|source| VmError::Setup {
                what: "the MSR index list",
                source,
            })?;
        Ok(list.as_slice().to_vec())
    }
}

impl Vm {
    pub fn save_state(&self) -> Result<VmKvmState, VmError> {
        let get = |what| move |source| VmError::Setup { what, source };
        let chip = |id| -> Result<kvm_irqchip, VmError> {
            let mut chip = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut chip)
                .map_err(get("KVM_GET_IRQCHIP"))?;
            Ok(chip)
        };
        Ok(VmKvmState {
            pit: self.fd.get_pit2().map_err(get("KVM_GET_PIT2"))?,
            clock: self.fd.get_clock().map_err(get("KVM_GET_CLOCK"))?,
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
        })
    }

    /// After the vCPUs are created, before their state is set.
    pub fn restore_state(&self, state: &VmKvmState) -> Result<(), VmError> {
        let set = |what| move |source| VmError::Setup { what, source };
        self.fd.set_pit2(&state.pit).map_err(set("KVM_SET_PIT2"))?;
        // Flags 0: kvmclock (CLOCK_MONOTONIC in the guest) continues from
        // the snapshot; the guest's wall clock is set by its agent.
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            ..Default::default()
        };
        self.fd.set_clock(&clock).map_err(set("KVM_SET_CLOCK"))?;
        for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
            self.fd.set_irqchip(chip).map_err(set("KVM_SET_IRQCHIP"))?;
        }
        Ok(())
    }
}

impl Vcpu {
    /// Reads the vCPU's state. Call on its own thread, out of KVM_RUN, after
    /// [`Vcpu::complete_pending_io`].
    pub fn save_state(&self, msr_indices: &[u32]) -> Result<VcpuState, VcpuError> {
        let fd = &self.fd;
        Ok(VcpuState {
            mp_state: self.ioctl("KVM_GET_MP_STATE", fd.get_mp_state())?,
            regs: self.ioctl("KVM_GET_REGS", fd.get_regs())?,
            sregs: self.ioctl("KVM_GET_SREGS", fd.get_sregs())?,
            xsave: self.ioctl("KVM_GET_XSAVE", fd.get_xsave())?,
            xcrs: self.ioctl("KVM_GET_XCRS", fd.get_xcrs())?,
            debugregs: self.ioctl("KVM_GET_DEBUGREGS", fd.get_debug_regs())?,
            lapic: self.ioctl("KVM_GET_LAPIC", fd.get_lapic())?,
            msrs: self.readable_msrs(msr_indices)?,
            vcpu_events: self.ioctl("KVM_GET_VCPU_EVENTS", fd.get_vcpu_events())?,
        })
    }

    /// Every MSR of `indices` KVM will read for this vCPU: KVM_GET_MSRS
    /// stops at the first it refuses, which is then left out.
    fn readable_msrs(&self, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuError> {
        let mut wanted: Vec<u32> = indices.to_vec();
        loop {
            let entries: Vec<kvm_msr_entry> = wanted
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = msr_list(self.id(), &entries)?;
            let read = self.ioctl("KVM_GET_MSRS", self.fd.get_msrs(&mut msrs))?;
            if read == wanted.len() {
                return Ok(msrs.as_slice().to_vec());
            }
            log::debug!(
                "vCPU {}: MSR {:#x} cannot be saved",
                self.id(),
                wanted[read]
            );
            wanted.remove(read);
        }
    }

    /// Completes an I/O exit the vCPU thread has answered but KVM has not
    /// yet finished (the guest's instruction ends inside KVM_RUN): runs once
    /// with `immediate_exit` set, so nothing of the guest runs after it.
    pub fn complete_pending_io(&mut self) -> Result<(), VcpuError> {
        self.fd.set_kvm_immediate_exit(1);
        let errno = self.fd.run().err().map(|e| e.errno());
        self.fd.set_kvm_immediate_exit(0);
        match errno {
            None | Some(libc::EINTR | libc::EAGAIN) => Ok(()),
            Some(errno) => Err(VcpuError::Run {
                id: self.id(),
                source: kvm_ioctls::Error::new(errno),
            }),
        }
    }

    /// Writes a saved state into this (new, configured) vCPU. Where the
    /// guest TSC cannot be set (nested PVM ignores writes to MSR_IA32_TSC),
    /// an armed TSC deadline is moved by as much as the TSC moved, so the
    /// guest's next timer tick is as far away as when it was saved.
    pub fn restore_state(&self, state: &VcpuState) -> Result<(), VcpuError> {
        let fd = &self.fd;
        self.ioctl("KVM_SET_MP_STATE", fd.set_mp_state(state.mp_state))?;
        self.ioctl("KVM_SET_REGS", fd.set_regs(&state.regs))?;
        self.ioctl("KVM_SET_SREGS", fd.set_sregs(&state.sregs))?;
        // SAFETY: `state.xsave` is a whole kvm_xsave (4096 bytes) as
        // KVM_GET_XSAVE wrote it; KVM reads no more than that.
        let set = unsafe { fd.set_xsave(&state.xsave) };
        self.ioctl("KVM_SET_XSAVE", set)?;
        self.ioctl("KVM_SET_XCRS", fd.set_xcrs(&state.xcrs))?;
        self.ioctl("KVM_SET_DEBUGREGS", fd.set_debug_regs(&state.debugregs))?;
        self.ioctl("KVM_SET_LAPIC", fd.set_lapic(&state.lapic))?;
        let msrs = &state.msrs;
        let set = self.ioctl("KVM_SET_MSRS", fd.set_msrs(&msr_list(self.id(), msrs)?))?;
        if set != msrs.len() {
            log::warn!(
                "vCPU {}: KVM took {set} of {} saved MSRs",
                self.id(),
                msrs.len()
            );
        }
        if let (Some(saved_tsc), Some(deadline)) = (msr(msrs, MSR_TSC), msr(msrs, MSR_TSC_DEADLINE))
        {
            let now = self.read_msr(MSR_TSC)?;
            if deadline != 0 && now.abs_diff(saved_tsc) > 1 << 20 {
                let rebased = deadline.wrapping_sub(saved_tsc).wrapping_add(now);
                let one = [kvm_msr_entry {
                    index: MSR_TSC_DEADLINE,
                    data: rebased,
                    ..Default::default()
                }];
                let one = Msrs::from_entries(&one).expect("one MSR fits");
                self.ioctl("KVM_SET_MSRS", fd.set_msrs(&one))?;
            }
        }
        self.ioctl(
            "KVM_SET_VCPU_EVENTS",
            fd.set_vcpu_events(&state.vcpu_events),
        )
    }

    fn read_msr(&self, index: u32) -> Result<u64, VcpuError> {
        let mut one = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .expect("one MSR fits");
        self.ioctl("KVM_GET_MSRS", self.fd.get_msrs(&mut one))?;
        Ok(one.as_slice()[0].data)
    }
}

/// `entries` as the list KVM_GET/SET_MSRS take.
fn msr_list(id: u8, entries: &[kvm_msr_entry]) -> Result<Msrs, VcpuError> {
    Msrs::from_entries(entries).map_err(|_| VcpuError::Ioctl {
        id,
        what: "building the MSR list",
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })
}

fn msr(msrs: &[kvm_msr_entry], index: u32) -> Option<u64> {
    msrs.iter().find(|e| e.index == index).map(|e| e.data)
}
