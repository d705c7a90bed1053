//! The VM configuration: the typed [`VmConfig`] (in `hull-protocol`, shared
//! with the shim, which writes it as JSON), read from a JSON or TOML file or
//! built from command-line flags, and validated here, in one place, before
//! anything is started.

use std::path::{Path, PathBuf};

pub use hull_protocol::vmm_config::{Console, FsConfig, NetConfig, TapConfig, VmConfig};

use crate::arch::mptable;
use crate::devices::virtio::net::parse_mac;

/// Longest path a Unix socket address can hold (sun_path less the NUL).
pub const UNIX_PATH_MAX: usize = 107;
/// The vsock device also binds `<uds_path>_<port>` for guest-initiated
/// connections: keep room for `_` and a 10-digit port.
const VSOCK_PORT_SUFFIX: usize = 11;
pub const MIN_MEMORY_MIB: u32 = 32;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Read a config file: TOML when it ends in `.toml`, JSON otherwise.
pub fn from_file(path: &Path) -> Result<VmConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    let parsed = if path.extension().is_some_and(|e| e == "toml") {
        from_toml(&text)
    } else {
        from_json(&text)
    };
    parsed.map_err(|message| ConfigError::Parse {
        path: path.into(),
        message,
    })
}

/// Parse JSON; a type error names its field (`vcpus: invalid type ...`).
fn from_json(text: &str) -> Result<VmConfig, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let config = serde_path_to_error::deserialize(&mut de).map_err(|e| e.to_string())?;
    // What `serde_json::from_str` also checks: nothing but whitespace after.
    de.end().map_err(|e| e.to_string())?;
    Ok(config)
}

/// Parse TOML; a type error names its field (`vcpus: invalid type ...`).
fn from_toml(text: &str) -> Result<VmConfig, String> {
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| e.to_string())
}

/// Check every value that can be checked before starting anything.
pub fn validate(config: &VmConfig) -> Result<(), ConfigError> {
    if config.vcpus == 0 || config.vcpus > mptable::max_cpus() {
        return Err(invalid(
            "vcpus",
            format!(
                "{} is not between 1 and {}",
                config.vcpus,
                mptable::max_cpus()
            ),
        ));
    }
    if config.memory_mib < MIN_MEMORY_MIB {
        return Err(invalid(
            "memory_mib",
            format!(
                "{} MiB is less than the minimum {MIN_MEMORY_MIB} MiB",
                config.memory_mib
            ),
        ));
    }
    if u64::from(config.memory_mib) > host_memory_mib() {
        return Err(invalid(
            "memory_mib",
            format!("{} MiB is more than this host has", config.memory_mib),
        ));
    }
    require_file("kernel", &config.kernel)?;
    if let Some(initramfs) = &config.initramfs {
        require_file("initramfs", initramfs)?;
    }
    for drive in &config.drives {
        require_disk("drives.path", &drive.path)?;
    }
    if let Some(vsock) = &config.vsock {
        if vsock.guest_cid < 3 {
            return Err(invalid(
                "vsock.guest_cid",
                format!("{} is reserved (guest CIDs start at 3)", vsock.guest_cid),
            ));
        }
        socket_path("vsock.uds_path", &vsock.uds_path, VSOCK_PORT_SUFFIX)?;
    }
    if let Some(net) = &config.net {
        validate_net(net)?;
    }
    for (index, fs) in config.fs.iter().enumerate() {
        validate_fs(fs)?;
        if config.fs[..index].iter().any(|other| other.tag == fs.tag) {
            return Err(invalid(
                "fs.tag",
                format!("{:?} names two devices (tags are unique)", fs.tag),
            ));
        }
    }
    if let Some(api) = &config.api_socket {
        socket_path("api_socket", api, 0)?;
    }
    if let Some(snapshot) = &config.restore_from {
        require_file("restore_from", snapshot)?;
    }
    if let Some(file) = &config.snapshot_file {
        if config.restore_from.as_ref() == Some(file) {
            return Err(invalid(
                "snapshot_file",
                "is the snapshot this VM restores from; save into another file",
            ));
        }
        if !file
            .parent()
            .is_some_and(|dir| dir.as_os_str().is_empty() || dir.is_dir())
        {
            return Err(invalid(
                "snapshot_file",
                format!("{}: its directory does not exist", file.display()),
            ));
        }
    }
    if let Console::File(path) = &config.console {
        if path.as_os_str().is_empty() {
            return Err(invalid("console", "file path is empty"));
        }
    }
    for arg in &config.kernel_args {
        if arg.is_empty() || arg.contains(['\0', '\n']) {
            return Err(invalid(
                "kernel_args",
                format!("{arg:?} is not a kernel argument"),
            ));
        }
    }
    Ok(())
}

/// The tap's name as the kernel takes it (`dev_valid_name`), or an
/// inherited fd that is not stdin, stdout or stderr; and the MAC's syntax.
/// Whether the fd is a tap is checked when the device is built.
fn validate_net(net: &NetConfig) -> Result<(), ConfigError> {
    match &net.tap {
        TapConfig::Name(name) => {
            if name.is_empty()
                || name.len() >= libc::IFNAMSIZ
                || name == "."
                || name == ".."
                || name.contains(['/', ':', '\0'])
                || name.contains(char::is_whitespace)
            {
                return Err(invalid(
                    "net.tap.name",
                    format!(
                        "{name:?} is not an interface name (1 to {} bytes, no '/', ':' or spaces)",
                        libc::IFNAMSIZ - 1
                    ),
                ));
            }
        }
        TapConfig::Fd(fd) if *fd < 3 => {
            return Err(invalid(
                "net.tap.fd",
                format!("{fd} is not an inherited tap (fds 0-2 are stdio)"),
            ));
        }
        TapConfig::Fd(_) => {}
    }
    if let Some(mac) = &net.mac {
        parse_mac(mac).map_err(|reason| invalid("net.mac", reason))?;
    }
    Ok(())
}

/// The tag fits the config space (36 bytes, virtio 1.2, 5.11.4) and is
/// text a `mount` command can name; the socket is a socket path.
fn validate_fs(fs: &FsConfig) -> Result<(), ConfigError> {
    if fs.tag.is_empty()
        || fs.tag.len() > crate::devices::virtio::fs::TAG_LEN
        || !fs
            .tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(invalid(
            "fs.tag",
            format!(
                "{:?} is not a tag (1 to {} letters, digits, '-', '_' or '.')",
                fs.tag,
                crate::devices::virtio::fs::TAG_LEN
            ),
        ));
    }
    if let Some(socket) = &fs.socket {
        socket_path("fs.socket", socket, 0)?;
    }
    Ok(())
}

fn require_file(field: &'static str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(invalid(
            field,
            format!("{} is not a regular file", path.display()),
        )),
        Err(e) => Err(invalid(field, format!("{}: {e}", path.display()))),
    }
}

/// A disk image: a regular file or a block device (a snapshotter's volume).
fn require_disk(field: &'static str, path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() || m.file_type().is_block_device() => Ok(()),
        Ok(_) => Err(invalid(
            field,
            format!(
                "{} is neither a regular file nor a block device",
                path.display()
            ),
        )),
        Err(e) => Err(invalid(field, format!("{}: {e}", path.display()))),
    }
}

fn socket_path(field: &'static str, path: &Path, suffix: usize) -> Result<(), ConfigError> {
    let len = path.as_os_str().len();
    if len == 0 || len + suffix > UNIX_PATH_MAX {
        return Err(invalid(
            field,
            format!(
                "{} is {len} bytes; a Unix socket path holds at most {} here",
                path.display(),
                UNIX_PATH_MAX - suffix
            ),
        ));
    }
    match path.parent() {
        Some(dir) if dir.as_os_str().is_empty() || dir.is_dir() => Ok(()),
        _ => Err(invalid(
            field,
            format!("the directory of {} does not exist", path.display()),
        )),
    }
}

fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map_or(u64::MAX, |kib| kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(dir: &Path) -> VmConfig {
        let kernel = dir.join("vmlinux");
        std::fs::write(&kernel, b"x").unwrap();
        serde_json::from_str(&format!(r#"{{"kernel": {:?}}}"#, kernel)).unwrap()
    }

    #[test]
    fn defaults_and_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let c = base(dir.path());
        assert_eq!(
            (c.vcpus, c.memory_mib, c.console.clone()),
            (1, 128, Console::Off)
        );
        validate(&c).unwrap();
        let err =
            serde_json::from_str::<VmConfig>(r#"{"kernel": "k", "memroy_mib": 5}"#).unwrap_err();
        assert!(err.to_string().contains("memroy_mib"), "{err}");
        let t: VmConfig =
            toml::from_str("kernel = \"k\"\nconsole = { file = \"/tmp/c\" }\n").unwrap();
        assert_eq!(t.console, Console::File("/tmp/c".into()));
    }

    #[test]
    fn snapshot_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("snap");
        let field = |c: VmConfig| validate(&c).map_err(|e| e.to_string());
        let restore = VmConfig {
            restore_from: Some(snap.clone()),
            ..base(dir.path())
        };
        assert!(field(restore.clone())
            .unwrap_err()
            .contains("`restore_from`"));
        std::fs::write(&snap, b"x").unwrap();
        field(restore.clone()).unwrap();
        let same = VmConfig {
            snapshot_file: Some(snap.clone()),
            ..restore
        };
        let err = field(same).unwrap_err();
        assert!(
            err.contains("is the snapshot this VM restores from"),
            "{err}"
        );
        let nowhere = VmConfig {
            snapshot_file: Some(dir.path().join("no/such/dir/snap")),
            ..base(dir.path())
        };
        let err = field(nowhere).unwrap_err();
        assert!(err.contains("its directory does not exist"), "{err}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let dir = tempfile::tempdir().unwrap();
        let field_of = |c: VmConfig| match validate(&c) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        };
        assert_eq!(
            field_of(VmConfig {
                memory_mib: 0,
                ..base(dir.path())
            }),
            "memory_mib"
        );
        assert_eq!(
            field_of(VmConfig {
                vcpus: 0,
                ..base(dir.path())
            }),
            "vcpus"
        );
        assert_eq!(
            field_of(VmConfig {
                kernel: dir.path().join("nope"),
                ..base(dir.path())
            }),
            "kernel"
        );
        assert_eq!(
            field_of(VmConfig {
                kernel: dir.path().into(),
                ..base(dir.path())
            }),
            "kernel"
        );
        let long = dir.path().join("s".repeat(120));
        assert_eq!(
            field_of(VmConfig {
                api_socket: Some(long),
                ..base(dir.path())
            }),
            "api_socket"
        );
        assert_eq!(
            field_of(VmConfig {
                kernel_args: vec!["a\nb".into()],
                ..base(dir.path())
            }),
            "kernel_args"
        );
    }

    #[test]
    fn fs_tags_and_sockets_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let with_fs = |tag: &str, socket: Option<PathBuf>| VmConfig {
            fs: vec![FsConfig {
                tag: tag.into(),
                socket,
            }],
            ..base(dir.path())
        };
        let field_of = |c: VmConfig| match validate(&c) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        };
        validate(&with_fs("hull-share", Some(dir.path().join("vfs.sock")))).unwrap();
        validate(&with_fs("x", None)).unwrap();
        for tag in ["", "a b", "a/b", &"t".repeat(37)] {
            assert_eq!(field_of(with_fs(tag, None)), "fs.tag", "{tag:?}");
        }
        assert_eq!(
            field_of(with_fs("t", Some(dir.path().join("no/such/dir/s")))),
            "fs.socket"
        );
        let mut twice = with_fs("t", None);
        twice.fs.push(twice.fs[0].clone());
        assert_eq!(field_of(twice), "fs.tag");
    }

    #[test]
    fn net_taps_and_macs_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let with_net = |tap: TapConfig, mac: Option<&str>| VmConfig {
            net: Some(NetConfig {
                tap,
                mac: mac.map(str::to_owned),
            }),
            ..base(dir.path())
        };
        let field_of = |c: VmConfig| match validate(&c) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        };
        validate(&with_net(TapConfig::Name("hulltap0".into()), None)).unwrap();
        validate(&with_net(TapConfig::Fd(3), Some("02:AB:cd:00:00:01"))).unwrap();
        for name in ["", "a/b", "a b", "sixteen-bytes-xx", ".."] {
            assert_eq!(
                field_of(with_net(TapConfig::Name(name.into()), None)),
                "net.tap.name",
                "{name:?}"
            );
        }
        assert_eq!(field_of(with_net(TapConfig::Fd(2), None)), "net.tap.fd");
        for mac in [
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "02:00:00:00:00:0g",
            "02-00-00-00-00-01",
            "2:00:00:00:00:001",
            "03:00:00:00:00:01",
        ] {
            assert_eq!(
                field_of(with_net(TapConfig::Fd(3), Some(mac))),
                "net.mac",
                "{mac}"
            );
        }
    }

    #[test]
    fn type_errors_in_config_files_name_their_field() {
        let dir = tempfile::tempdir().unwrap();
        let parse_error = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            match from_file(&path) {
                Err(ConfigError::Parse { message, .. }) => message,
                other => panic!("{name}: expected a parse error, got {other:?}"),
            }
        };
        let json = parse_error("c.json", r#"{"kernel":"k","vcpus":"two"}"#);
        assert!(
            json.starts_with(r#"vcpus: invalid type: string "two", expected u8"#),
            "{json}"
        );
        let toml = parse_error("c.toml", "kernel = \"k\"\nvcpus = \"two\"\n");
        assert!(toml.starts_with("vcpus: "), "{toml}");
        assert!(
            toml.contains(r#"invalid type: string "two", expected u8"#),
            "{toml}"
        );
        let nested = parse_error(
            "n.json",
            r#"{"kernel":"k","vsock":{"guest_cid":"3","uds_path":"/v"}}"#,
        );
        assert!(
            nested.starts_with("vsock.guest_cid: invalid type"),
            "{nested}"
        );
        // Errors without a field keep their plain message, and trailing
        // garbage is still refused.
        let syntax = parse_error("s.json", "{");
        assert!(syntax.starts_with("EOF while parsing"), "{syntax}");
        let trailing = parse_error("t.json", r#"{"kernel":"k"} x"#);
        assert!(trailing.contains("trailing characters"), "{trailing}");
    }
}
