//! hull: the library behind the `hull` operator command line.
//!
//! - [`check`]: the host and container audit (`hull check`);
//! - [`boot`]: boot a microVM to a ready agent and shut it down (`hull boot`);
//! - [`bench`]: boot time and VMM memory, against QEMU (`hull bench boot`);
//! - [`initramfs`]: builds the guest's initramfs around the agent binary;
//! - [`paths`]: where the VMM, kernel and initramfs are found;
//! - [`template`]: the VM templates sandboxes start from (`hull template`).
//!
//! It drives the VMM as a process through `hull-shim`'s sandbox library: it
//! must not depend on `hull-agent` or `hull-vmm` (nor link KVM code).

pub mod bench;
pub mod boot;
pub mod check;
pub mod initramfs;
pub mod paths;
pub mod template;
