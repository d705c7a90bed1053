//! Host checks (H*): KVM, the jail's prerequisites, cgroups, containerd,
//! the shim, and the installed guest kernel and initramfs.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{CheckResult, Verdict};
use crate::paths;

/// Where the checks look; `Default` is the installed layout.
#[derive(Debug, Clone)]
pub struct HostPaths {
    pub kvm: PathBuf,
    pub config: PathBuf,
    pub containerd_socket: PathBuf,
    pub cgroup_root: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        Self {
            kvm: "/dev/kvm".into(),
            config: "/etc/hull/config.toml".into(),
            containerd_socket: "/run/containerd/containerd.sock".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
        }
    }
}

pub fn run(paths: &HostPaths) -> Vec<CheckResult> {
    vec![
        kvm_usable(&paths.kvm),
        kvm_permissions(&paths.kvm),
        kvm_kind(),
        jailer_installed(),
        seccomp_available(),
        namespaces_available(),
        jail_enabled(&paths.config),
        cgroups(&paths.cgroup_root),
        containerd_socket(&paths.containerd_socket),
        shim_installed(),
        guest_artefacts(),
        guest_hashes(),
    ]
}

fn kvm_usable(kvm: &Path) -> CheckResult {
    let title = "KVM device usable";
    match std::fs::OpenOptions::new().read(true).write(true).open(kvm) {
        Ok(_) => CheckResult::new("H1.1", title, Verdict::Pass, format!("{} opens read-write", kvm.display()), ""),
        Err(e) => CheckResult::new(
            "H1.1",
            title,
            Verdict::Fail,
            format!("cannot open {}: {e}", kvm.display()),
            "enable virtualization (kvm_intel/kvm_amd) and run hull as root or a member of the kvm group",
        ),
    }
}

fn kvm_permissions(kvm: &Path) -> CheckResult {
    let title = "KVM device permissions";
    match std::fs::metadata(kvm) {
        Ok(m) if m.permissions().mode() & 0o006 != 0 => CheckResult::new(
            "H1.2",
            title,
            Verdict::Warn,
            format!(
                "{} is mode {:o}: every user can create VMs",
                kvm.display(),
                m.permissions().mode() & 0o777
            ),
            "chmod o-rw /dev/kvm; grant access through the kvm group",
        ),
        Ok(m) => CheckResult::new(
            "H1.2",
            title,
            Verdict::Pass,
            format!(
                "mode {:o}, owner {}:{}",
                m.permissions().mode() & 0o777,
                m.uid(),
                m.gid()
            ),
            "",
        ),
        Err(e) => CheckResult::new(
            "H1.2",
            title,
            Verdict::Fail,
            format!("{}: {e}", kvm.display()),
            "load the KVM module",
        ),
    }
}

fn kvm_kind() -> CheckResult {
    let title = "KVM kind";
    if Path::new("/sys/module/kvm_pvm").exists() {
        CheckResult::new(
            "H1.3",
            title,
            Verdict::Info,
            "nested PVM (kvm_pvm): the guest kernel is emulated, boots take seconds instead of milliseconds; hull applies its PVM workarounds",
            "use hardware KVM (bare metal or a nested-virtualization-enabled VM) for production speed",
        )
    } else {
        CheckResult::new("H1.3", title, Verdict::Pass, "hardware-assisted KVM", "")
    }
}

/// `name` next to the running `hull`, or on PATH.
fn find_binary(name: &str) -> Option<PathBuf> {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(name)))
        .filter(|p| p.is_file());
    sibling.or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    })
}

fn jailer_installed() -> CheckResult {
    let title = "VMM jailer installed";
    match find_binary("hull-jailer") {
        Some(path) => {
            CheckResult::new("H2.1", title, Verdict::Pass, path.display().to_string(), "")
        }
        None => CheckResult::new(
            "H2.1",
            title,
            Verdict::Fail,
            "hull-jailer not found next to hull or on PATH",
            "run ./setup.sh",
        ),
    }
}

fn seccomp_available() -> CheckResult {
    let title = "seccomp filters available";
    let actions =
        std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    if actions.split_whitespace().any(|a| a == "kill_process") {
        CheckResult::new(
            "H2.2",
            title,
            Verdict::Pass,
            format!("actions: {}", actions.trim()),
            "",
        )
    } else {
        CheckResult::new(
            "H2.2",
            title,
            Verdict::Fail,
            "the kernel lacks seccomp filters with kill_process",
            "use a kernel with CONFIG_SECCOMP_FILTER=y",
        )
    }
}

fn namespaces_available() -> CheckResult {
    let title = "namespaces for the jail";
    let missing: Vec<&str> = ["mnt", "pid", "ipc", "uts", "net"]
        .into_iter()
        .filter(|ns| !Path::new("/proc/self/ns").join(ns).exists())
        .collect();
    if missing.is_empty() {
        CheckResult::new("H2.3", title, Verdict::Pass, "mnt, pid, ipc, uts, net", "")
    } else {
        CheckResult::new(
            "H2.3",
            title,
            Verdict::Fail,
            format!("missing: {}", missing.join(", ")),
            "use a kernel with these namespaces",
        )
    }
}

fn jail_enabled(config: &Path) -> CheckResult {
    let title = "VMM jail enabled";
    let Ok(text) = std::fs::read_to_string(config) else {
        return CheckResult::new(
            "H2.4",
            title,
            Verdict::Info,
            format!(
                "no {}: defaults apply (jail on, seccomp enforced)",
                config.display()
            ),
            "nothing to do",
        );
    };
    let disabled = text.lines().any(|l| {
        let l = l.split('#').next().unwrap_or("").replace(' ', "");
        l == "jail=false" || l == "seccomp=\"log\""
    });
    if disabled {
        CheckResult::new(
            "H2.4",
            title,
            Verdict::Warn,
            format!("{} turns the jail off or seccomp to log-only: a guest escape reaches a privileged VMM", config.display()),
            "remove `jail = false` / `seccomp = \"log\"`; they exist for debugging",
        )
    } else {
        CheckResult::new(
            "H2.4",
            title,
            Verdict::Pass,
            format!("{}: jail and seccomp on", config.display()),
            "",
        )
    }
}

fn cgroups(root: &Path) -> CheckResult {
    let title = "cgroups for sandbox limits";
    let unified = root.join("cgroup.controllers");
    let (layout, missing): (&str, Vec<&str>) = if unified.exists() {
        let controllers = std::fs::read_to_string(&unified).unwrap_or_default();
        let missing = ["memory", "pids", "cpu"]
            .into_iter()
            .filter(|c| !controllers.split_whitespace().any(|x| x == *c))
            .collect();
        ("cgroup v2 (unified)", missing)
    } else {
        let missing = ["memory", "pids", "cpu"]
            .into_iter()
            .filter(|c| !root.join(c).is_dir())
            .collect();
        let hybrid = root.join("unified").is_dir();
        (
            if hybrid {
                "cgroup v1 (hybrid)"
            } else {
                "cgroup v1"
            },
            missing,
        )
    };
    if missing.is_empty() {
        CheckResult::new(
            "H3.1",
            title,
            Verdict::Pass,
            format!("{layout}: memory, pids, cpu"),
            "",
        )
    } else {
        CheckResult::new(
            "H3.1",
            title,
            Verdict::Fail,
            format!("{layout}: missing {}", missing.join(", ")),
            "enable the memory, pids and cpu controllers",
        )
    }
}

fn containerd_socket(socket: &Path) -> CheckResult {
    let title = "containerd socket permissions";
    match std::fs::metadata(socket) {
        Err(_) => CheckResult::new(
            "H4.1",
            title,
            Verdict::Info,
            format!(
                "{} not found: containerd is not running here",
                socket.display()
            ),
            "start containerd (./setup.sh does)",
        ),
        Ok(m) if m.uid() == 0 && m.permissions().mode() & 0o007 == 0 => CheckResult::new(
            "H4.1",
            title,
            Verdict::Pass,
            format!(
                "{} owned by root, mode {:o}",
                socket.display(),
                m.permissions().mode() & 0o777
            ),
            "",
        ),
        Ok(m) => CheckResult::new(
            "H4.1",
            title,
            Verdict::Warn,
            format!(
                "{} is owned by uid {} with mode {:o}: whoever can use it can run containers",
                socket.display(),
                m.uid(),
                m.permissions().mode() & 0o777
            ),
            "make the socket root-owned and not accessible to others",
        ),
    }
}

fn shim_installed() -> CheckResult {
    let title = "containerd shim installed";
    let Some(shim) = find_binary("containerd-shim-hull-v2") else {
        return CheckResult::new(
            "H5.1",
            title,
            Verdict::Fail,
            "containerd-shim-hull-v2 not on PATH: containerd cannot start io.containerd.hull.v2",
            "run ./setup.sh (installs it to /usr/local/bin)",
        );
    };
    let version = Command::new(&shim).arg("-v").output();
    let text = version
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        })
        .unwrap_or_default();
    let ours = env!("CARGO_PKG_VERSION");
    if text.contains(ours) {
        CheckResult::new(
            "H5.1",
            title,
            Verdict::Pass,
            format!("{} (version {ours})", shim.display()),
            "",
        )
    } else {
        CheckResult::new(
            "H5.1",
            title,
            Verdict::Warn,
            format!(
                "{} does not report version {ours}: {}",
                shim.display(),
                text.trim()
            ),
            "reinstall hull (./setup.sh) so the shim and hull match",
        )
    }
}

fn guest_artefacts() -> CheckResult {
    let title = "guest kernel and initramfs";
    match (paths::kernel(None, 1), paths::initramfs(None)) {
        (Ok(kernel), Ok(initramfs)) => CheckResult::new(
            "H5.2",
            title,
            Verdict::Pass,
            format!("{}, {}", kernel.display(), initramfs.display()),
            "",
        ),
        (Err(e), _) | (_, Err(e)) => CheckResult::new(
            "H5.2",
            title,
            Verdict::Fail,
            e.to_string(),
            "run ./setup.sh",
        ),
    }
}

fn guest_hashes() -> CheckResult {
    let title = "guest artefacts match their checksums";
    let dir = std::env::var_os("HULL_SHARE_DIR")
        .map_or_else(|| PathBuf::from(paths::DEFAULT_SHARE_DIR), PathBuf::from);
    let sums = dir.join("SHA256SUMS");
    if !sums.is_file() {
        return CheckResult::new(
            "H5.3",
            title,
            Verdict::Warn,
            format!(
                "no {}: the installed kernel and initramfs cannot be verified",
                sums.display()
            ),
            "run ./setup.sh, which writes it",
        );
    }
    let out = Command::new("sha256sum")
        .arg("--check")
        .arg("--quiet")
        .arg("SHA256SUMS")
        .current_dir(&dir)
        .output();
    match out {
        Ok(o) if o.status.success() => CheckResult::new(
            "H5.3",
            title,
            Verdict::Pass,
            format!("{} verified", sums.display()),
            "",
        ),
        Ok(o) => CheckResult::new(
            "H5.3",
            title,
            Verdict::Fail,
            format!(
                "checksum mismatch: {}",
                String::from_utf8_lossy(&o.stdout).trim()
            ),
            "reinstall the guest artefacts (./setup.sh); investigate who changed them",
        ),
        Err(e) => CheckResult::new(
            "H5.3",
            title,
            Verdict::Warn,
            format!("sha256sum: {e}"),
            "install coreutils",
        ),
    }
}
