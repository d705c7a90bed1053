//! Interrupt lines: what a device raises, without knowing how the VM
//! delivers it. [`Vm::irq_line`](super::vm::Vm::irq_line) wires a line to
//! the in-kernel IOAPIC; tests wire it to a plain eventfd.

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// An interrupt line a device can raise.
pub trait IrqLine: Send + Sync {
    fn trigger(&self) -> io::Result<()>;
}

/// An interrupt line backed by an eventfd: a KVM irqfd once the VM
/// registered it, or any eventfd a test or the event loop reads.
#[derive(Debug)]
pub struct EventFdIrq(pub EventFd);

impl IrqLine for EventFdIrq {
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}
