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

/// The tap device behind the virtio-net device.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TapConfig {
    /// `{"name": "hulltap0"}`: the VMM opens `/dev/net/tun` and attaches to
    /// (or, with CAP_NET_ADMIN, creates) the tap of that name. For running
    /// `hull-vmm` by hand.
    Name(String),
    /// `{"fd": 3}`: a tap the VMM inherited open across exec (the jailer
    /// makes it in the sandbox's network namespace). It must have been
    /// made with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`.
    Fd(i32),
}

/// The network device: virtio-net on a tap.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub tap: TapConfig,
    /// The guest's MAC, `02:xx:xx:xx:xx:xx` (a unicast address). When not
    /// set the VMM makes up a random locally administered one. A restored VM
    /// keeps the MAC its snapshot was taken with.
    #[serde(default)]
    pub mac: Option<String>,
}

/// The shared-directory device: virtio-fs, its requests relayed to a
/// vhost-user backend (virtiofsd) through a region of the VMM's own (the
/// backend never maps guest memory, so a VM restored copy-on-write from a
/// template can share a directory too).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The tag the guest mounts it by (`mount -t virtiofs TAG DIR`): 1 to
    /// 36 bytes.
    pub tag: String,
    /// The backend's vhost-user socket, connected when the VMM starts.
    /// `None`: the device is there (a template's slot) but shares nothing;
    /// every request it gets fails with EIO.
    #[serde(default)]
    pub socket: Option<PathBuf>,
}

/// The tag of a sandbox's share of host bind mounts (volumes).
pub const SHARE_TAG: &str = "hull-share";
/// The tag of a sandbox's shared rootfs (the container's root directory on
/// the host, served with its own cache policy).
pub const ROOTFS_TAG: &str = "hull-rootfs";

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
    /// A virtio-net device on a tap, after the drives and vsock.
    #[serde(default)]
    pub net: Option<NetConfig>,
    /// virtio-fs devices, after the network device, in this order; tags
    /// are unique.
    #[serde(default)]
    pub fs: Vec<FsConfig>,
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
            net: None,
            fs: Vec::new(),
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
        config.net = Some(NetConfig {
            tap: TapConfig::Fd(3),
            mac: Some("02:00:00:00:00:01".into()),
        });
        config.fs = vec![
            FsConfig {
                tag: ROOTFS_TAG.into(),
                socket: Some("/run/rootfs.sock".into()),
            },
            FsConfig {
                tag: SHARE_TAG.into(),
                socket: Some("/run/vfs.sock".into()),
            },
        ];
        config.console = Console::File("/run/console.log".into());
        config.seccomp = SeccompMode::Log;
        let back: VmConfig = serde_json::from_str(&config.to_json()).unwrap();
        assert_eq!(back, config);
        assert_eq!("log".parse(), Ok(SeccompMode::Log));
        assert!("loud".parse::<SeccompMode>().is_err());
    }

    #[test]
    fn net_configs_have_one_shape_on_the_wire() {
        let by_name: NetConfig = serde_json::from_str(r#"{"tap": {"name": "hulltap0"}}"#).unwrap();
        assert_eq!(by_name.tap, TapConfig::Name("hulltap0".into()));
        assert_eq!(by_name.mac, None);
        let by_fd: NetConfig =
            serde_json::from_str(r#"{"tap": {"fd": 3}, "mac": "02:00:00:00:00:01"}"#).unwrap();
        assert_eq!(by_fd.tap, TapConfig::Fd(3));
        assert_eq!(
            serde_json::to_value(&by_fd).unwrap(),
            serde_json::json!({"tap": {"fd": 3}, "mac": "02:00:00:00:00:01"})
        );
        for bad in [
            r#"{"tap": {"fd": 3}, "mtu": 1500}"#,
            r#"{"tap": {"fd": 3, "name": "t"}}"#,
            r#"{"tap": {"path": "/dev/net/tun"}}"#,
            r#"{"mac": "02:00:00:00:00:01"}"#,
        ] {
            assert!(serde_json::from_str::<NetConfig>(bad).is_err(), "{bad}");
        }
        let err =
            serde_json::from_str::<VmConfig>(r#"{"kernel": "k", "network": {}}"#).unwrap_err();
        assert!(err.to_string().contains("network"), "{err}");
    }
}
