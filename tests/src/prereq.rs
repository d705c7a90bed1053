//! What the tests need from the machine, taken from the environment that
//! `./test.sh` sets up. A missing prerequisite fails the test with a message
//! saying how to provide it: a test never passes because it could not run.

use std::path::PathBuf;

/// A file named by environment variable `var`, which must exist.
pub fn file_from_env(var: &str, what: &str, how: &str) -> PathBuf {
    let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) else {
        panic!("{var} is not set: run ./test.sh, or set {var} to {what} ({how})");
    };
    let path = PathBuf::from(value);
    assert!(
        path.is_file(),
        "{var}={} does not name a file: {what} is expected there ({how})",
        path.display()
    );
    path
}

/// `hull-vmm` (`$HULL_VMM`).
pub fn vmm() -> PathBuf {
    file_from_env(
        "HULL_VMM",
        "the hull-vmm binary",
        "cargo build -p hull-vmm -p hull; HULL_VMM=target/debug/hull-vmm",
    )
}

/// The `hull` command line: next to `hull-vmm`, as `cargo build` puts it.
pub fn hull_cli() -> PathBuf {
    let vmm = vmm();
    let hull = vmm.with_file_name("hull");
    assert!(
        hull.is_file(),
        "no hull binary next to HULL_VMM ({}): cargo build -p hull-vmm -p hull",
        vmm.display()
    );
    hull
}

/// `hull-jailer`: next to `hull-vmm`, as `cargo build` puts it.
pub fn jailer() -> PathBuf {
    let vmm = vmm();
    let jailer = vmm.with_file_name("hull-jailer");
    assert!(
        jailer.is_file(),
        "no hull-jailer next to HULL_VMM ({}): cargo build -p hull-jailer",
        vmm.display()
    );
    jailer
}

/// The guest kernel (`$HULL_KERNEL`, an uncompressed vmlinux).
pub fn kernel() -> PathBuf {
    file_from_env(
        "HULL_KERNEL",
        "the guest kernel (vmlinux)",
        "guest-kernel/build.sh prints its path",
    )
}

/// The SMP guest kernel (`$HULL_KERNEL_SMP`), for VMs with several vCPUs.
pub fn kernel_smp() -> PathBuf {
    file_from_env(
        "HULL_KERNEL_SMP",
        "the SMP guest kernel (vmlinux)",
        "guest-kernel/build.sh prints its path (without --up)",
    )
}

/// The product initramfs, with hull-agent as /init (`$HULL_INITRAMFS`).
pub fn agent_initramfs() -> PathBuf {
    file_from_env(
        "HULL_INITRAMFS",
        "the agent initramfs",
        "hull initramfs --agent $(agent/build.sh | tail -1) --out FILE",
    )
}

/// A hostile agent's initramfs (`$HULL_HOSTILE_INITRAMFS`): hull-agent
/// built with the `hostile-test` feature, which lies to the host.
pub fn hostile_initramfs() -> PathBuf {
    file_from_env(
        "HULL_HOSTILE_INITRAMFS",
        "the hostile agent's initramfs",
        "hull initramfs --agent $(agent/build.sh --hostile | tail -1) --out FILE",
    )
}

/// The test initramfs, with hull-guest-probe as /init (`$HULL_PROBE_INITRAMFS`).
pub fn probe_initramfs() -> PathBuf {
    file_from_env(
        "HULL_PROBE_INITRAMFS",
        "the probe initramfs",
        "see tests/README.md: build hull-guest-probe statically, then hull initramfs --agent it",
    )
}

/// `/dev/kvm`, readable and writable by this process.
/// virtiofsd, the backend of the shared directory (`install_virtiofsd`
/// in scripts/common.sh).
pub fn virtiofsd() -> PathBuf {
    file_from_env(
        "HULL_VIRTIOFSD",
        "virtiofsd",
        "./test.sh installs it (install_virtiofsd in scripts/common.sh)",
    )
}

pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("cannot open /dev/kvm ({e}): the *_kvm tests need KVM");
    }
}

/// A tool from the host (`mkfs.ext4`, `debugfs`): the path it was found at.
pub fn host_tool(name: &str, package: &str) -> PathBuf {
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&dirs)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: install {package} (./setup.sh does)"))
}
