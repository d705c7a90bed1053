//! The only part of the VMM that talks to KVM (kvm-ioctls).

pub mod kvm;
pub mod memory;
pub mod pvm;
pub mod vcpu;
pub mod vm;
pub mod xstate;
