//! The only part of the VMM that talks to KVM (kvm-ioctls): the VM, its
//! memory and vCPUs, and the interrupt lines it raises.
//!
//! Nothing here imports `devices`: devices use what this module defines
//! (guest memory, [`interrupt::IrqLine`]), and a vCPU hands its I/O exits
//! to an [`vcpu::IoHandler`], which the device buses implement.

pub mod interrupt;
pub mod kvm;
pub mod memory;
pub mod pvm;
pub mod state;
pub mod vcpu;
pub mod vm;
pub mod xstate;
