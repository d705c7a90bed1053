//! The only part of the VMM that talks to KVM (kvm-ioctls).

pub mod memory;
