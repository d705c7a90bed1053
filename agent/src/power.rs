//! How the agent stops: the guest's init reboots the kernel, a process exits.
//!
//! The guest kernel runs with `reboot=k`, so `reboot(RB_AUTOBOOT)` makes it
//! write 0xFE to the i8042 command port; the VMM takes that as an orderly
//! guest shutdown and exits. PID 1 must never return from `main`: the kernel
//! would panic ("Attempted to kill init"), so every way out of the init role
//! ends here.

use std::time::Duration;

use rustix::system::{reboot, RebootCommand};

use crate::config::Role;

/// Why the agent is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Asked to (Shutdown RPC, or SIGTERM outside the guest).
    Orderly,
    /// The agent cannot go on serving; the reason has been logged.
    Failed,
}

/// Stops the agent for good: reboots the guest as PID 1, exits otherwise
/// (status 0 when orderly, 1 when failed).
pub fn stop(role: Role, outcome: Outcome) -> ! {
    match role {
        Role::Process => std::process::exit(match outcome {
            Outcome::Orderly => 0,
            Outcome::Failed => 1,
        }),
        Role::Init => reboot_guest(outcome),
    }
}

/// Syncs and reboots the guest kernel. Only for PID 1 of the guest: run on
/// a host as root it would reboot the host.
fn reboot_guest(outcome: Outcome) -> ! {
    if outcome == Outcome::Failed {
        log::error!("agent failed: rebooting the guest");
    }
    rustix::fs::sync();
    if let Err(err) = reboot(RebootCommand::Restart) {
        log::error!("reboot(RB_AUTOBOOT) failed: {err}; trying power-off");
    }
    if let Err(err) = reboot(RebootCommand::PowerOff) {
        log::error!("reboot(RB_POWER_OFF) failed: {err}; halting in user space");
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
