//! hull: the library behind the `hull` command line.
//!
//! - [`initramfs`]: builds the guest's initramfs around the agent binary.
//!
//! It handles the agent and the VMM as files and processes: it must not
//! depend on `hull-agent` or `hull-vmm` (nor link KVM code).

pub mod initramfs;
