//! hull's configuration: `/etc/hull/config.toml` by default, or the file
//! containerd names in the runtime options (`ConfigPath`, from `ctr run
//! --runtime-config-path`, a CRI runtime handler's options, or Docker's
//! `runtimes.<name>.options`), which the shim and `hull template` read the
//! same way. Every field has a default, so an empty or missing default
//! file still works.

use std::path::{Path, PathBuf};

use hull_protocol::vmm_config::SeccompMode;
use serde::Deserialize;

use crate::policy::PolicyConfig;
use crate::spec::VmDefaults;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/hull/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {field}: {message}")]
    Parse {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShimConfig {
    /// `hull-vmm`.
    pub vmm: PathBuf,
    /// `hull-jailer`.
    pub jailer: PathBuf,
    /// The guest kernel for 1-vCPU VMs (the uniprocessor build).
    pub kernel: PathBuf,
    /// The guest kernel for VMs with more vCPUs (the SMP build).
    pub kernel_smp: PathBuf,
    /// The agent initramfs.
    pub initramfs: PathBuf,
    /// virtiofsd, which serves a sandbox's rootfs and host bind mounts to
    /// its guest.
    pub virtiofsd: PathBuf,
    /// How the container's rootfs reaches the guest: `virtio-fs` (shared
    /// live from the host, no copy) or `block` (copied into an ext4 disk
    /// at each start). A snapshot that already is a disk (blockfile,
    /// devmapper) is attached as it is either way.
    pub rootfs: RootfsMode,
    /// virtiofsd's thread pool per share; 0 handles each request on the
    /// queue's thread, which measured fastest here (README, "Shared file
    /// systems").
    pub virtiofsd_threads: u16,
    /// vCPUs when the spec sets no CPU limit.
    pub vcpus: u8,
    /// Guest RAM when the spec sets no memory limit.
    pub memory_mib: u32,
    /// Guest RAM added to a spec's memory limit: the guest kernel, the
    /// agent and the page cache of the rootfs.
    pub memory_overhead_mib: u32,
    /// Keep the guest console in the sandbox state (`console.log`): the
    /// agent's messages and the kernel's warnings, panics and oopses.
    pub debug_console: bool,
    /// Also put every kernel boot message on the console. Costs several
    /// seconds of boot where the guest kernel is emulated (nested PVM:
    /// about 6 s at 1 vCPU), so it is off even when `debug_console` is on.
    pub verbose_boot: bool,
    /// The shim's log level (error, warn, info, debug, trace).
    pub log_level: String,
    /// Start the VMM through hull-jailer (namespaces, unprivileged uid,
    /// no capabilities, host cgroup). `false` is for debugging only.
    pub jail: bool,
    /// The VMM's seccomp mode: `enforce` or `log` (debugging).
    pub seccomp: SeccompMode,
    /// How long the guest may take to boot to a ready agent, in seconds.
    pub boot_timeout_secs: u64,
    /// Start sandboxes from a template: a snapshot of a booted VM whose
    /// agent was ready, built by the first sandbox of its kind (or `hull
    /// template build`). `false` boots every sandbox.
    pub templates: bool,
    /// Where templates are kept (root's; they survive restarts).
    pub template_dir: PathBuf,
    /// Append each container's start phases (wall-clock marks of Create
    /// and Start) to this file as JSON lines; for `hull bench start`.
    pub phase_log: Option<PathBuf>,
    pub policy: PolicySection,
}

/// See [`ShimConfig::rootfs`].
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum RootfsMode {
    #[serde(rename = "virtio-fs")]
    VirtioFs,
    #[serde(rename = "block")]
    Block,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    /// Sensitive host paths that may be bind-mounted anyway.
    pub allowed_host_paths: Vec<PathBuf>,
}

impl Default for ShimConfig {
    fn default() -> Self {
        Self {
            vmm: "/usr/local/bin/hull-vmm".into(),
            jailer: "/usr/local/bin/hull-jailer".into(),
            kernel: "/usr/local/share/hull/vmlinux-up".into(),
            kernel_smp: "/usr/local/share/hull/vmlinux".into(),
            initramfs: "/usr/local/share/hull/initramfs.cpio".into(),
            virtiofsd: "/usr/local/bin/virtiofsd".into(),
            rootfs: RootfsMode::VirtioFs,
            virtiofsd_threads: 0,
            vcpus: 1,
            memory_mib: 256,
            memory_overhead_mib: 96,
            debug_console: false,
            verbose_boot: false,
            log_level: "info".into(),
            jail: true,
            seccomp: SeccompMode::Enforce,
            boot_timeout_secs: 180,
            templates: true,
            template_dir: crate::template::DEFAULT_TEMPLATE_DIR.into(),
            phase_log: None,
            policy: PolicySection::default(),
        }
    }
}

impl ShimConfig {
    /// Reads `path`; the default path may be missing (defaults apply), an
    /// explicitly named one may not.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default())
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Self::parse(&text, &path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        let config: Self =
            serde_path_to_error::deserialize(deserializer).map_err(|e| ConfigError::Parse {
                path: path.into(),
                field: e.path().to_string(),
                message: e.inner().message().to_owned(),
            })?;
        let invalid = |field, reason: &str| ConfigError::Invalid {
            path: path.into(),
            field,
            reason: reason.into(),
        };
        if config.vcpus == 0 {
            return Err(invalid("vcpus", "must be at least 1"));
        }
        if config.memory_mib < 64 {
            return Err(invalid("memory_mib", "must be at least 64"));
        }
        Ok(config)
    }

    pub fn policy(&self) -> PolicyConfig {
        PolicyConfig {
            allowed_host_paths: self.policy.allowed_host_paths.clone(),
        }
    }

    /// The VM a container without limits gets, and what a limit adds.
    pub fn vm_defaults(&self) -> VmDefaults {
        VmDefaults {
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            memory_overhead_mib: self.memory_overhead_mib,
            host_memory_mib: crate::spec::host_memory_mib(),
        }
    }

    /// The kernel for a VM with `vcpus` vCPUs.
    pub fn kernel_for(&self, vcpus: u8) -> &Path {
        if vcpus == 1 {
            &self.kernel
        } else {
            &self.kernel_smp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_what_the_file_leaves_out() {
        let config = ShimConfig::parse(
            "vcpus = 2\n[policy]\nallowed_host_paths = [\"/srv\"]\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(config.vcpus, 2);
        assert_eq!(config.memory_mib, 256);
        assert_eq!(config.rootfs, RootfsMode::VirtioFs);
        let block = ShimConfig::parse("rootfs = \"block\"\n", Path::new("c.toml")).unwrap();
        assert_eq!(block.rootfs, RootfsMode::Block);
        assert!(config.jail);
        assert_eq!(
            config.policy().allowed_host_paths,
            vec![PathBuf::from("/srv")]
        );
        assert_eq!(
            config.kernel_for(2),
            Path::new("/usr/local/share/hull/vmlinux")
        );
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let err = ShimConfig::parse("memroy_mib = 5\n", Path::new("/etc/x.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/etc/x.toml") && err.contains("memroy_mib"),
            "{err}"
        );
        let err = ShimConfig::parse("vcpus = \"two\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("vcpus"), "{err}");
        let err = ShimConfig::parse("seccomp = \"off\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("seccomp"), "{err}");
        let err = ShimConfig::parse("rootfs = \"nfs\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("rootfs") && err.contains("virtio-fs"), "{err}");
        let err = ShimConfig::load(Some(Path::new("/nonexistent/hull.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/hull.toml"), "{err}");
    }
}
