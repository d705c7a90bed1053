//! hull-vmm: the virtual machine monitor behind every hull sandbox.
//!
//! A KVM microVM with a Linux kernel loaded directly (no firmware), a 16550
//! console, an i8042 reset line and virtio-mmio devices (block, vsock, net).
//! Dependencies point one way: `main` -> `builder` (with `config` and
//! `seccomp`) / `api` / `machine` -> `devices` -> `vstate` / `arch`; every
//! module may use `logger` (error chains, per-call-site rate limits for
//! guest-triggered messages), which uses none of them. Only `vstate` talks
//! to KVM, and it imports nothing from `devices`: it defines what devices
//! use (guest memory, the interrupt line) and what a vCPU needs from them
//! (an I/O handler, which the device buses implement). Must not depend on
//! the shim or the agent; shares wire types with them through
//! `hull-protocol` only.

// `clippy.toml` forbids the raw `log` macros so that device code, which a
// guest drives, logs only through the rate-limited `logger::guest_*!`
// macros. Clippy has no per-module configuration, so the list is scoped
// with lint levels: allowed for the crate here, denied again at the top of
// `devices`. Code outside `devices` logs what the VMM itself does.
#![allow(
    clippy::disallowed_macros,
    reason = "only device code is limited to the guest_* macros; devices/mod.rs denies it"
)]

pub mod api;
pub mod arch;
pub mod builder;
pub mod config;
pub mod devices;
pub mod logger;
pub mod machine;
pub mod seccomp;
pub mod snapshot;
pub mod vstate;
