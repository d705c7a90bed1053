//! The VM's configuration: what the shim (or an operator) hands `hull-vmm`
//! as one JSON file (`hull-vmm --config FILE`), with one set of defaults.
//! The VMM validates it (`hull_vmm::config::validate`) before anything
//! starts and names the field that is wrong. New devices and start options
//! become fields here, not flags.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the guest console goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Console {
    /// Dropped (the VMM still keeps the last lines for error reports).
    #[default]
    Off,
    Stdout,
    File(PathBuf),
}

/// One drive: a virtio-blk device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    /// A raw disk image (a regular file or a block device).
    pub path: PathBuf,
    /// Open the image read-only and offer VIRTIO_BLK_F_RO.
    #[serde(default)]
    pub read_only: bool,
    /// The serial the guest reads with VIRTIO_BLK_T_GET_ID (at most 20
    /// bytes): how the agent finds a disk. Empty when not set.
    #[serde(default)]
    pub id: Option<String>,
}

/// The vsock device (hybrid vsock over Unix sockets).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context ID: 3 or more (0-2 are reserved, `u32::MAX` is
    /// `VMADDR_CID_ANY`).
    #[serde(default = "default_guest_cid")]
    pub guest_cid: u32,
    /// Where the VMM listens for host connections; `<uds_path>_<port>` is
    /// where guest connections to host port `<port>` go.
    pub uds_path: PathBuf,
}

/// The guest CID hull gives every VM (each VM has its own vsock device).
pub const DEFAULT_GUEST_CID: u32 = 3;

fn default_guest_cid() -> u32 {
    DEFAULT_GUEST_CID
}

/// What happens on a syscall outside a VMM thread's seccomp list.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// The process is killed (SIGSYS).
    #[default]
    Enforce,
    /// The syscall runs and the kernel logs it.
    Log,
}

impl std::str::FromStr for SeccompMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "enforce" => Ok(Self::Enforce),
            "log" => Ok(Self::Log),
            other => Err(format!("{other:?} is not a seccomp mode (enforce, log)")),
        }
    }
}

/// vCPUs a VM gets unless the config says otherwise.
pub const DEFAULT_VCPUS: u8 = 1;
/// Guest memory unless the config says otherwise.
pub const DEFAULT_MEMORY_MIB: u32 = 128;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Uncompressed ELF `vmlinux`.
    pub kernel: PathBuf,
    /// Uncompressed (newc cpio) initramfs.
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// Appended to the kernel command line hull builds.
    #[serde(default)]
    pub kernel_args: Vec<String>,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    #[serde(default)]
    pub console: Console,
    /// Print the kernel's boot messages (drops `quiet`; slower under emulation).
    #[serde(default)]
    pub verbose_boot: bool,
    #[serde(default)]
    pub drives: Vec<BlockConfig>,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// The control socket (status, pause, resume, shutdown).
    #[serde(default)]
    pub api_socket: Option<PathBuf>,
    /// `enforce` (default): a syscall outside a thread's seccomp list kills
    /// the VMM; `log`: the kernel logs it instead, to find a missing entry.
    #[serde(default)]
    pub seccomp: SeccompMode,
    /// Where the control socket's `snapshot` saves this VM. Opened (made)
    /// when the VMM starts, so the running VMM needs no file system access.
    #[serde(default)]
    pub snapshot_file: Option<PathBuf>,
    /// Start from this snapshot instead of booting: `kernel`, `initramfs`,
    /// `vcpus` and `memory_mib` must be what the snapshot was taken with, the
    /// devices the same kinds in the same order (their backing files and
    /// sockets may differ).
    #[serde(default)]
    pub restore_from: Option<PathBuf>,
}

fn default_vcpus() -> u8 {
    DEFAULT_VCPUS
}

fn default_memory_mib() -> u32 {
    DEFAULT_MEMORY_MIB
}

impl VmConfig {
    /// A VM booting `kernel` with every other field at its default.
    pub fn new(kernel: PathBuf) -> Self {
        Self {
            kernel,
            initramfs: None,
            kernel_args: Vec::new(),
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            console: Console::Off,
            verbose_boot: false,
            drives: Vec::new(),
            vsock: None,
            api_socket: None,
            seccomp: SeccompMode::Enforce,
            snapshot_file: None,
            restore_from: None,
        }
    }

    /// The JSON `hull-vmm --config` reads.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a VmConfig always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_and_an_empty_file_agree_on_the_defaults() {
        let parsed: VmConfig = serde_json::from_str(r#"{"kernel": "/k"}"#).unwrap();
        assert_eq!(parsed, VmConfig::new("/k".into()));
        let vsock: VsockConfig = serde_json::from_str(r#"{"uds_path": "/v"}"#).unwrap();
        assert_eq!(vsock.guest_cid, DEFAULT_GUEST_CID);
    }

    #[test]
    fn a_config_survives_its_json() {
        let mut config = VmConfig::new("/boot/vmlinux".into());
        config.drives.push(BlockConfig {
            path: "/disk.img".into(),
            read_only: true,
            id: Some("rootfs".into()),
        });
        config.vsock = Some(VsockConfig {
            guest_cid: 3,
            uds_path: "/run/v.sock".into(),
        });
        config.console = Console::File("/run/console.log".into());
        config.seccomp = SeccompMode::Log;
        let back: VmConfig = serde_json::from_str(&config.to_json()).unwrap();
        assert_eq!(back, config);
        assert_eq!("log".parse(), Ok(SeccompMode::Log));
        assert!("loud".parse::<SeccompMode>().is_err());
    }
}
