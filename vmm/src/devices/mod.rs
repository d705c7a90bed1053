//! Emulated devices. They see guest memory through vm-memory traits and raise
//! interrupts through [`IrqLine`](crate::vstate::interrupt::IrqLine); they
//! never touch kvm-ioctls. The buses implement the vCPU's
//! [`IoHandler`](crate::vstate::vcpu::IoHandler): `vstate` defines what it
//! needs from devices and imports nothing from here.
//!
//! A guest decides how often device code runs, so it logs only through the
//! per-call-site rate-limited `logger::guest_*!` macros; the raw `log`
//! macros are denied here (the list is in `vmm/clippy.toml`). The few lines
//! written once while the VM is built or torn down allow them by name.

#![deny(clippy::disallowed_macros)]

pub mod bus;
pub mod legacy;
pub mod virtio;
