//! The KVM VM: guest memory slots, the in-kernel interrupt controllers and
//! the interrupt lines devices raise.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use std::sync::Arc;

use super::interrupt::{EventFdIrq, IrqLine};
use super::kvm::{HostKvm, Kvm};
use super::memory::GuestMemoryMmap;
use super::vcpu::{Vcpu, VcpuError};
use crate::arch::layout::KVM_TSS_ADDRESS;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("KVM_CREATE_VM failed")]
    Create(#[source] kvm_ioctls::Error),
    #[error("registering guest memory slot {slot} with KVM")]
    MemorySlot {
        slot: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("setting up {what}")]
    Setup {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("creating the eventfd for IRQ {gsi}")]
    IrqEventFd {
        gsi: u32,
        #[source]
        source: std::io::Error,
    },
}

pub struct Vm {
    pub(super) fd: Arc<VmFd>,
    host: HostKvm,
}

/// An edge-triggered interrupt raised with KVM_IRQ_LINE (high, then low).
/// Used on nested PVM, where irqfd signals never reach the in-kernel IOAPIC
/// (verified here: /proc/interrupts in the guest stays at 0 with irqfd and
/// counts with KVM_IRQ_LINE).
struct IrqLineIoctl {
    pub(super) fd: Arc<VmFd>,
    gsi: u32,
}

impl IrqLine for IrqLineIoctl {
    fn trigger(&self) -> std::io::Result<()> {
        let errno = |e: kvm_ioctls::Error| std::io::Error::from_raw_os_error(e.errno());
        self.fd.set_irq_line(self.gsi, true).map_err(errno)?;
        self.fd.set_irq_line(self.gsi, false).map_err(errno)
    }
}

impl Vm {
    /// Create the VM with its memory, IOAPIC/PIC/LAPICs and PIT.
    pub fn new(kvm: &Kvm, mem: &GuestMemoryMmap) -> Result<Self, VmError> {
        let fd = kvm.fd.create_vm().map_err(VmError::Create)?;
        for (slot, region) in mem.iter().enumerate() {
            let slot = slot as u32;
            let memory_region = kvm_userspace_memory_region {
                slot,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mmap owned by `mem`, which the
            // builder keeps alive for as long as the VM (and its vCPUs) run;
            // guest_phys_addr/memory_size describe exactly that mapping.
            unsafe { fd.set_user_memory_region(memory_region) }
                .map_err(|source| VmError::MemorySlot { slot, source })?;
        }
        let setup = |what| move |source| VmError::Setup { what, source };
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(setup("the TSS address"))?;
        fd.create_irq_chip()
            .map_err(setup("the in-kernel IRQ chip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(setup("the in-kernel PIT"))?;
        Ok(Self {
            fd: Arc::new(fd),
            host: kvm.host,
        })
    }

    /// An interrupt line wired to `gsi` of the in-kernel IOAPIC: an irqfd on
    /// hardware KVM, KVM_IRQ_LINE on nested PVM (see [`IrqLineIoctl`]).
    pub fn irq_line(&self, gsi: u32) -> Result<Arc<dyn IrqLine>, VmError> {
        if self.host == HostKvm::NestedPvm {
            return Ok(Arc::new(IrqLineIoctl {
                fd: self.fd.clone(),
                gsi,
            }));
        }
        let evt =
            EventFd::new(EFD_NONBLOCK).map_err(|source| VmError::IrqEventFd { gsi, source })?;
        self.fd
            .register_irqfd(&evt, gsi)
            .map_err(|source| VmError::Setup {
                what: "an irqfd",
                source,
            })?;
        Ok(Arc::new(EventFdIrq(evt)))
    }

    pub fn create_vcpu(&self, id: u8) -> Result<Vcpu, VcpuError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(VcpuError::Create)?;
        Ok(Vcpu::new(id, fd))
    }
}
