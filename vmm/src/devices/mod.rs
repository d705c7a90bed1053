//! Emulated devices. They see guest memory through vm-memory traits and raise
//! interrupts through [`IrqLine`]; they never touch kvm-ioctls.
//!
//! A guest decides how often device code runs, so it logs only through the
//! per-call-site rate-limited `logger::guest_*!` macros; the raw `log`
//! macros are denied here (the list is in `vmm/clippy.toml`). The few lines
//! written once while the VM is built or torn down allow them by name.

#![deny(clippy::disallowed_macros)]

pub mod bus;
pub mod legacy;
pub mod virtio;

use std::io;
use vmm_sys_util::eventfd::EventFd;

/// An interrupt line a device can raise. The builder wires it to the VM
/// (an irqfd for KVM); tests wire it to a plain eventfd.
pub trait IrqLine: Send + Sync {
    fn trigger(&self) -> io::Result<()>;
}

/// An interrupt line backed by an eventfd (registered as a KVM irqfd by the builder).
#[derive(Debug)]
pub struct EventFdIrq(pub EventFd);

impl IrqLine for EventFdIrq {
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}
