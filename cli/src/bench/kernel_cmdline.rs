//! The kernel command line hull-vmm gives its guest, asked of hull-vmm
//! itself rather than copied from its source: hull-vmm is started with
//! `--log-level debug` and the same kernel, initramfs and sizes, its
//! `kernel command line: ...` line is read from its log, and it is killed
//! before the guest gets far. So the QEMU comparison gets exactly the
//! arguments this hull-vmm build adds (base arguments, `quiet` or not, and
//! the nested-PVM ones only when hull-vmm detects nested PVM).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What hull-vmm logs (at debug level) once the command line is built.
const LOG_PREFIX: &str = "kernel command line: ";
/// Arguments that declare hull-vmm's own virtio-mmio devices; they describe
/// hull's device layout, not the guest, and are dropped for another VMM.
const DEVICE_ARG_PREFIX: &str = "virtio_mmio.device=";

#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    #[error("starting {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hull-vmm did not log its kernel command line within {timeout:?}{}", log_lines(.log))]
    NotLogged { timeout: Duration, log: Vec<String> },
}

fn log_lines(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("; its log:\n  {}", lines.join("\n  "))
    }
}

/// The guest's kernel command line as `vmm` builds it for this guest.
pub fn probe(
    vmm: &Path,
    kernel: &Path,
    initramfs: &Path,
    vcpus: u8,
    memory_mib: u32,
    verbose_boot: bool,
) -> Result<String, CmdlineError> {
    const TIMEOUT: Duration = Duration::from_secs(30);
    let mut cmd = Command::new(vmm);
    cmd.arg("--kernel")
        .arg(kernel)
        .arg("--initramfs")
        .arg(initramfs)
        .arg("--vcpus")
        .arg(vcpus.to_string())
        .arg("--memory-mib")
        .arg(memory_mib.to_string())
        .arg("--console")
        .arg("off")
        .arg("--log-level")
        .arg("debug");
    if verbose_boot {
        cmd.arg("--verbose-boot");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| CmdlineError::Spawn {
        binary: vmm.into(),
        source,
    })?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let (lines_tx, lines) = mpsc::channel();
    // Ends at EOF, i.e. once the VMM is killed below (or exits).
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + TIMEOUT;
    let mut log = Vec::new();
    let mut found = None;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => match from_log_line(&line) {
                Some(cmdline) => {
                    found = Some(cmdline);
                    break;
                }
                None => log.push(line),
            },
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(lines);
    let _ = reader.join();
    found.ok_or_else(|| CmdlineError::NotLogged {
        timeout: TIMEOUT,
        log: log.split_off(log.len().saturating_sub(10)),
    })
}

/// The command line from one hull-vmm log line, without hull's device
/// declarations.
fn from_log_line(line: &str) -> Option<String> {
    let (_, cmdline) = line.split_once(LOG_PREFIX)?;
    let args: Vec<&str> = cmdline
        .split_whitespace()
        .filter(|arg| !arg.starts_with(DEVICE_ARG_PREFIX))
        .collect();
    Some(args.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_comes_from_the_debug_line_without_devices() {
        let line = "[hull-vmm     0.031s DEBUG] kernel command line: console=ttyS0 reboot=k \
                    quiet hull_pvm_syscall virtio_mmio.device=4K@0xd0000000:5";
        assert_eq!(
            from_log_line(line).as_deref(),
            Some("console=ttyS0 reboot=k quiet hull_pvm_syscall")
        );
        assert_eq!(from_log_line("[hull-vmm 0.0s INFO ] guest started"), None);
    }
}
