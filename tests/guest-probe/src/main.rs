//! `hull-guest-probe`: a tiny `/init` used only by hull's integration tests
//! (`tests/tests/guest_probe.rs`). It does what its environment asks, reports
//! each result as one `HULL_PROBE ...` line on the console, and reboots the
//! guest, which makes `hull-vmm` exit 0 (`reboot=k`).
//!
//! The kernel hands `key=value` command-line arguments it does not know to
//! init as environment variables, so a test sets them with `--kernel-arg`:
//! - `HULL_PROBE_REBIND_PORT=P`, first: reset and re-activate every block
//!   and vsock device, then answer one host connection on vsock port `P`
//!   (see [`rebind`]); the checks below then run on re-activated devices;
//! - `HULL_PROBE_VSOCK_PORT=P`: connect to the host (CID 2) port `P`, send
//!   [`vsock::HELLO`], read the host's reply line;
//! - `HULL_PROBE_BLK=1`: check `/dev/vda`, a read-write ext4 drive: read
//!   `in.txt`, write `out.txt` (see [`drive::expected_output`]), fsync;
//! - `HULL_PROBE_BLK_RO=1`: the same on `/dev/vdb`, a drive the VMM exposes
//!   read-only: the write must fail;
//! - `HULL_PROBE_VECTORS=1`: two processes keep their own AVX registers
//!   across context switches (see [`vectors`]).
//!
//! Every guest syscall is expensive here (the guest kernel may be emulated),
//! so the probe makes few, runs no other process, and never panics: a failed
//! step is reported, then the probe goes on to the next check.
//!
//! Must not depend on any hull crate: it tests them from the outside.

mod drive;
mod rebind;
mod report;
mod share;
mod vectors;
mod vsock;

use report::Report;
use rustix::system::{reboot, RebootCommand};

fn main() {
    let mut report = Report::open();
    report.line("start");
    if let Some(value) = env("HULL_PROBE_REBIND_PORT") {
        match value.parse::<u32>() {
            Ok(port) => rebind::probe(port, &mut report),
            Err(_) => report.line(&format!("rebind error step=config port={value:?}")),
        }
    }
    if let Some(value) = env("HULL_PROBE_VSOCK_PORT") {
        match value.parse::<u32>() {
            Ok(port) => vsock::probe(port, &mut report),
            Err(_) => report.line(&format!("vsock error step=config port={value:?}")),
        }
    }
    if env("HULL_PROBE_BLK").as_deref() == Some("1") {
        drive::probe("vda", &mut report);
    }
    if env("HULL_PROBE_BLK_RO").as_deref() == Some("1") {
        drive::probe("vdb", &mut report);
    }
    if let Some(tag) = env("HULL_PROBE_FS") {
        share::probe(&tag, &mut report);
    }
    if env("HULL_PROBE_VECTORS").as_deref() == Some("1") {
        vectors::probe(&mut report);
    }
    report.line("done");
    power_off(&mut report);
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// Sync and reboot (the VMM takes the i8042 reset as a clean shutdown). If
/// the kernel refuses, exit: PID 1 exiting panics the kernel, so the VMM
/// exits with its guest-panic code and the test fails at once instead of
/// waiting for its timeout.
fn power_off(report: &mut Report) -> ! {
    rustix::fs::sync();
    if let Err(errno) = reboot(RebootCommand::Restart) {
        report.line(&format!(
            "reboot error errno={}",
            report::errno_name(errno.raw_os_error())
        ));
    }
    std::process::exit(1);
}
