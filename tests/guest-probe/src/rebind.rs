//! Reset and re-activate the virtio devices from the guest side: unbind
//! each block and vsock device from its driver and bind it again, through
//! sysfs. Unbinding resets the device (status 0); binding goes through the
//! status sequence to DRIVER_OK again. The vsock device stays unbound for
//! [`GAP`], reported as `rebind vsock unbound`, so the host can knock while
//! it is reset. Then the probe listens on a vsock port and answers one
//! host-initiated connection: the way the shim reaches the agent must
//! survive a guest resetting its devices (issue 9, finding 7). The checks
//! that follow (vsock, drives) also run on re-activated devices.
//!
//! Report lines: `rebind vsock unbound`, `rebind listening port=P`, then
//! `rebind ok blk=2 vsock=1 host="<the host's line>"` or `rebind error ...`.

use std::path::Path;
use std::time::Duration;

use rustix::io::Errno;
use rustix::mount::{mount, MountFlags};

use crate::report::{errno_name, Report};
use crate::vsock;

/// virtio device ids (virtio 1.2, section 5).
const BLOCK: &str = "0x0002";
const VSOCK: &str = "0x0013";
const DEVICES: &str = "/sys/bus/virtio/devices";
/// How long the vsock device stays reset.
const GAP: Duration = Duration::from_secs(4);

/// Rebind, then serve one host connection on vsock port `port`.
pub fn probe(port: u32, report: &mut Report) {
    let result = rebind_all(report).and_then(|counts| {
        report.line(&format!("rebind listening port={port}"));
        vsock::serve_one(port)
            .map(|line| (counts, line))
            .map_err(|e| format!("step=serve error={e}"))
    });
    match result {
        Ok(((blk, vsock), line)) => {
            report.line(&format!("rebind ok blk={blk} vsock={vsock} host={line:?}"))
        }
        Err(e) => report.line(&format!("rebind error {e}")),
    }
}

/// Rebind every block and vsock device; how many of each.
fn rebind_all(report: &mut Report) -> Result<(usize, usize), String> {
    let _ = std::fs::create_dir("/sys");
    match mount("sysfs", "/sys", "sysfs", MountFlags::NOSUID, None) {
        Ok(()) | Err(Errno::BUSY) => {}
        Err(errno) => {
            return Err(format!(
                "step=mount errno={}",
                errno_name(errno.raw_os_error())
            ))
        }
    }
    let entries = std::fs::read_dir(DEVICES).map_err(|e| format!("step=list error={e}"))?;
    let (mut blk, mut vsock) = (0, 0);
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    for name in names {
        let dev = Path::new(DEVICES).join(&name);
        let id = std::fs::read_to_string(dev.join("device")).unwrap_or_default();
        let counter = match id.trim() {
            BLOCK => &mut blk,
            VSOCK => &mut vsock,
            _ => continue,
        };
        let driver = std::fs::read_link(dev.join("driver"))
            .map_err(|e| format!("step=driver device={name} error={e}"))?;
        let driver = Path::new("/sys/bus/virtio/drivers").join(
            driver
                .file_name()
                .ok_or_else(|| format!("step=driver device={name}"))?,
        );
        for action in ["unbind", "bind"] {
            std::fs::write(driver.join(action), &name)
                .map_err(|e| format!("step={action} device={name} error={e}"))?;
            if action == "unbind" && id.trim() == VSOCK {
                report.line("rebind vsock unbound");
                std::thread::sleep(GAP);
            }
        }
        if !dev.join("driver").exists() {
            return Err(format!("step=bound device={name}"));
        }
        *counter += 1;
    }
    Ok((blk, vsock))
}
