//! The same guest under QEMU's microvm machine, for comparison: same kernel,
//! initramfs, command line and console, timed from QEMU's start to the
//! marker on its serial console. QEMU has no hybrid vsock, so the agent
//! cannot be reached; the console marker is what both VMMs are timed to.
//!
//! QEMU stops the VM at the first instruction KVM cannot emulate (under
//! nested PVM, whose emulator gives up on some of the guest kernel's
//! instructions, and QEMU does not complete them) and then waits, paused:
//! the run ends as soon as its `KVM internal error` shows on stderr.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::console::{ConsoleFile, POLL};

/// What QEMU prints when KVM_RUN fails with KVM_EXIT_INTERNAL_ERROR.
const KVM_INTERNAL_ERROR: &str = "KVM internal error";

/// What QEMU says when a `vmlinux` has no PVH entry point (QEMU boots an
/// uncompressed ELF kernel only through PVH; hull-vmm enters at the 64-bit
/// ELF entry and needs no note).
const NO_PVH_NOTE: &str = "without PVH ELF Note";
const PVH_HINT: &str = " (QEMU boots an uncompressed vmlinux only through its PVH entry point: \
                        build the guest kernel with CONFIG_PVH=y, which hull-vmm ignores)";

/// What to run.
#[derive(Debug, Clone)]
pub struct QemuSpec {
    pub binary: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// The guest command line, exactly as hull-vmm builds it.
    pub cmdline: String,
    /// `/dev/kvm` is kvm_pvm: see [`cpu_model`].
    pub nested_pvm: bool,
}

/// `-cpu host`, except on nested PVM: there kvm_pvm refuses the
/// IA32_ARCH_CAPABILITIES MSR (0x10a) that QEMU sets for `host`, and QEMU
/// aborts before the guest runs ("failed to set MSR 0x10a"). Without that
/// one feature QEMU gets as far as the guest kernel can go under it.
fn cpu_model(nested_pvm: bool) -> &'static str {
    if nested_pvm {
        "host,-arch-capabilities"
    } else {
        "host"
    }
}

/// How one QEMU run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QemuRun {
    Marker {
        ms: u64,
    },
    Failed {
        error: String,
        /// QEMU start to the failure being seen.
        after_ms: u64,
        console_tail: Vec<String>,
    },
}

/// QEMU's arguments, the serial console going to `serial`.
pub fn args(spec: &QemuSpec, serial: &Path) -> Vec<OsString> {
    let mut serial_arg = OsString::from("file:");
    serial_arg.push(serial);
    let plain = [
        "-M",
        "microvm,x-option-roms=off,isa-serial=on,rtc=off",
        "-enable-kvm",
        "-cpu",
        cpu_model(spec.nested_pvm),
        "-m",
    ];
    let mut args: Vec<OsString> = plain.iter().map(OsString::from).collect();
    args.push(format!("{}M", spec.memory_mib).into());
    args.push("-smp".into());
    args.push(spec.vcpus.to_string().into());
    for arg in ["-nodefaults", "-no-user-config", "-nographic", "-serial"] {
        args.push(arg.into());
    }
    args.push(serial_arg);
    args.push("-kernel".into());
    args.push(spec.kernel.clone().into());
    args.push("-initrd".into());
    args.push(spec.initramfs.clone().into());
    args.push("-append".into());
    args.push(spec.cmdline.clone().into());
    args
}

/// Boot once in `scratch` (an existing directory) until `marker` shows on
/// the console, QEMU fails, or `timeout` passes; QEMU is killed in any case.
pub fn run_to_marker(spec: &QemuSpec, scratch: &Path, marker: &str, timeout: Duration) -> QemuRun {
    let serial = scratch.join("qemu-serial.log");
    let stderr_path = scratch.join("qemu-stderr.log");
    let failed = |error: String| QemuRun::Failed {
        error,
        after_ms: 0,
        console_tail: Vec::new(),
    };
    let stderr = match File::create(&stderr_path) {
        Ok(file) => file,
        Err(e) => return failed(format!("creating {}: {e}", stderr_path.display())),
    };
    let started = Instant::now();
    let child = Command::new(&spec.binary)
        .args(args(spec, &serial))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn();
    let mut child = match child {
        Ok(child) => KilledOnDrop(child),
        Err(e) => return failed(format!("starting {}: {e}", spec.binary.display())),
    };
    let mut console = ConsoleFile::new(serial);
    let mut errors = ConsoleFile::new(stderr_path);
    let (outcome, elapsed) = loop {
        let elapsed = started.elapsed();
        let outcome = |result| (result, elapsed);
        if console.poll_for(marker) {
            break outcome(Ok(()));
        }
        if errors.poll_for(KVM_INTERNAL_ERROR) {
            // Let QEMU finish writing its register dump.
            std::thread::sleep(Duration::from_millis(100));
            errors.poll_for(KVM_INTERNAL_ERROR);
            break outcome(Err(summarize_stderr(&errors.last_lines(200))));
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            errors.poll_for(KVM_INTERNAL_ERROR);
            let said = errors.last_lines(5).join("; ");
            let hint = if said.contains(NO_PVH_NOTE) {
                PVH_HINT
            } else {
                ""
            };
            break outcome(Err(format!(
                "QEMU exited ({status}) before the marker: {said}{hint}"
            )));
        }
        if elapsed >= timeout {
            break outcome(Err(format!("no marker on the console within {timeout:?}")));
        }
        std::thread::sleep(POLL);
    };
    drop(child);
    let ms = elapsed.as_millis() as u64;
    match outcome {
        Ok(()) => QemuRun::Marker { ms },
        Err(error) => {
            console.poll_for(marker);
            QemuRun::Failed {
                error,
                after_ms: ms,
                console_tail: console.last_lines(5),
            }
        }
    }
}

/// The lines that say what failed, from QEMU's report of a KVM internal
/// error: its header lines, the instruction pointer and the code bytes,
/// without the rest of the register dump.
fn summarize_stderr(lines: &[String]) -> String {
    let start = lines
        .iter()
        .position(|l| l.contains(KVM_INTERNAL_ERROR))
        .unwrap_or(0);
    let lines = &lines[start..];
    let dump = lines
        .iter()
        .position(|l| l.starts_with("RAX="))
        .unwrap_or(lines.len());
    let mut kept: Vec<&str> = lines[..dump]
        .iter()
        .filter(|l| !(l.starts_with("extra data") && l.ends_with(": 0x0000000000000000")))
        .map(String::as_str)
        .collect();
    kept.extend(
        lines[dump..]
            .iter()
            .filter(|l| l.starts_with("RIP=") || l.starts_with("Code="))
            .map(String::as_str),
    );
    kept.join("; ")
}

/// A QEMU process that is killed and reaped when dropped.
struct KilledOnDrop(Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_microvm_with_the_given_guest() {
        let spec = QemuSpec {
            binary: "qemu-system-x86_64".into(),
            kernel: "/k/vmlinux".into(),
            initramfs: "/k/initramfs.cpio".into(),
            vcpus: 2,
            memory_mib: 128,
            cmdline: "console=ttyS0 reboot=k".into(),
            nested_pvm: false,
        };
        let joined = shell_free(args(&spec, Path::new("/tmp/s.log")));
        assert!(
            joined.starts_with("-M microvm,x-option-roms=off,isa-serial=on,rtc=off -enable-kvm")
        );
        assert!(joined.contains("-m 128M -smp 2 -nodefaults"));
        assert!(
            joined.contains("-serial file:/tmp/s.log -kernel /k/vmlinux -initrd /k/initramfs.cpio")
        );
        assert!(joined.ends_with("-append console=ttyS0 reboot=k"));
        let pvm = QemuSpec {
            nested_pvm: true,
            ..spec
        };
        let joined = shell_free(args(&pvm, Path::new("/tmp/s.log")));
        assert!(joined.contains("-cpu host,-arch-capabilities -m"));
    }

    fn shell_free(args: Vec<OsString>) -> String {
        let args: Vec<String> = args.into_iter().map(|a| a.into_string().unwrap()).collect();
        args.join(" ")
    }

    #[test]
    fn a_kvm_internal_error_is_summarized_without_the_register_dump() {
        let stderr: Vec<String> = [
            "KVM internal error. Suberror: 1",
            "extra data[0]: 0x0000000000000001",
            "extra data[1]: 0x7c8390909090cc0f",
            "extra data[2]: 0x0000000000000000",
            "emulation failure",
            "RAX=0000000000000000 RBX=ffff888007ea7b80 RCX=ffffffff81c9b1f8 RDX=0000000000000000",
            "RIP=ffffffff81cf552c RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=0",
            "ES =0000 0000000000000000 00000000 00000000",
            "Code=74 02 0f 0b 48 8d 7c 24 04 <cc> 90 90 90 90 83 7c 24 04 01",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            summarize_stderr(&stderr),
            "KVM internal error. Suberror: 1; extra data[0]: 0x0000000000000001; \
             extra data[1]: 0x7c8390909090cc0f; emulation failure; RIP=ffffffff81cf552c \
             RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=0; \
             Code=74 02 0f 0b 48 8d 7c 24 04 <cc> 90 90 90 90 83 7c 24 04 01"
        );
    }
}
