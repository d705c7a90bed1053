//! Architecture-specific guest layout and boot structures. Computes what the
//! guest must see at the first instruction; `vstate` applies it through KVM.

pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
