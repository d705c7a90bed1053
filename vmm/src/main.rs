//! `hull-vmm`: run one microVM. A thin front end over the `hull_vmm` library.

#![allow(
    clippy::disallowed_macros,
    reason = "the front end logs configuration errors and its test trigger, not guest-driven events"
)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hull_protocol::vmm_api::exit_code;
use hull_vmm::config::{self, ConfigError, Console, NetConfig, TapConfig, VmConfig};
use hull_vmm::devices::virtio::block::BlockConfig;
use hull_vmm::devices::virtio::vsock::VsockConfig;
use hull_vmm::logger::ErrorChain;
use hull_vmm::seccomp::SeccompMode;

/// Run a hull microVM. Exit codes: 0 guest shut down or stop requested,
/// 1 VMM error, 2 invalid configuration, 3 guest panic, 4 guest crash.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// A JSON (or .toml) VM config; the flags below override its fields.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    kernel: Option<PathBuf>,
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// Extra kernel arguments (repeatable).
    #[arg(long = "kernel-arg")]
    kernel_args: Vec<String>,
    #[arg(long)]
    vcpus: Option<u8>,
    #[arg(long)]
    memory_mib: Option<u32>,
    /// `off`, `stdout`, or a file path.
    #[arg(long)]
    console: Option<String>,
    /// Print the kernel's boot messages.
    #[arg(long)]
    verbose_boot: bool,
    /// A raw disk image: `PATH[,ro][,id=SERIAL]` (repeatable); the id is
    /// the serial the guest reads (virtio-blk GET_ID, at most 20 bytes).
    #[arg(long = "drive")]
    drives: Vec<String>,
    /// Guest CID of the vsock device (needs --vsock-uds).
    #[arg(long, default_value_t = hull_protocol::vmm_config::DEFAULT_GUEST_CID)]
    vsock_cid: u32,
    /// Host Unix socket of the hybrid vsock device.
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// An inherited, open tap fd for the virtio-net device: adds the device
    /// (random MAC) or replaces the tap of the one the config file names.
    #[arg(long)]
    tap_fd: Option<i32>,
    /// The control socket.
    #[arg(long)]
    api_sock: Option<PathBuf>,
    /// Seccomp on a forbidden syscall: `enforce` (kill) or `log`.
    #[arg(long)]
    seccomp: Option<SeccompMode>,
    /// Test trigger: call a syscall seccomp forbids once the VM runs.
    #[arg(long, hide = true)]
    test_forbidden_syscall: bool,
    /// error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: log::LevelFilter,
}

fn config_from(args: Args) -> Result<VmConfig, ConfigError> {
    let mut config = match (&args.config, &args.kernel) {
        (Some(path), _) => config::from_file(path)?,
        (None, Some(kernel)) => VmConfig::new(kernel.clone()),
        (None, None) => {
            return Err(ConfigError::Invalid {
                field: "kernel",
                reason: "give --kernel or --config".into(),
            })
        }
    };
    if let Some(k) = args.kernel {
        config.kernel = k;
    }
    config.initramfs = args.initramfs.or(config.initramfs);
    config.kernel_args.extend(args.kernel_args);
    config.vcpus = args.vcpus.unwrap_or(config.vcpus);
    config.memory_mib = args.memory_mib.unwrap_or(config.memory_mib);
    config.verbose_boot |= args.verbose_boot;
    if let Some(console) = args.console {
        config.console = match console.as_str() {
            "off" => Console::Off,
            "stdout" => Console::Stdout,
            path => Console::File(path.into()),
        };
    }
    for drive in args.drives {
        config.drives.push(parse_drive(&drive)?);
    }
    if let Some(uds_path) = args.vsock_uds {
        config.vsock = Some(VsockConfig {
            guest_cid: args.vsock_cid,
            uds_path,
        });
    }
    if let Some(fd) = args.tap_fd {
        match &mut config.net {
            Some(net) => net.tap = TapConfig::Fd(fd),
            None => {
                config.net = Some(NetConfig {
                    tap: TapConfig::Fd(fd),
                    mac: None,
                })
            }
        }
    }
    config.api_socket = args.api_sock.or(config.api_socket);
    config.seccomp = args.seccomp.unwrap_or(config.seccomp);
    Ok(config)
}

/// `PATH[,ro][,id=SERIAL]`: options after the path, in any order. A path
/// containing a comma cannot be given here (use --config).
fn parse_drive(text: &str) -> Result<BlockConfig, ConfigError> {
    let mut parts = text.split(',');
    let path = parts.next().unwrap_or_default();
    let mut drive = BlockConfig {
        path: path.into(),
        read_only: false,
        id: None,
    };
    for option in parts {
        match option.split_once('=') {
            None if option == "ro" => drive.read_only = true,
            Some(("id", id)) if !id.is_empty() => drive.id = Some(id.to_owned()),
            _ => {
                return Err(ConfigError::Invalid {
                    field: "drives",
                    reason: format!(
                        "--drive {text:?}: unknown option {option:?} (PATH[,ro][,id=SERIAL])"
                    ),
                })
            }
        }
    }
    Ok(drive)
}

fn main() -> ExitCode {
    let args = Args::parse();
    hull_vmm::logger::init(args.log_level);
    let test_forbidden_syscall = args.test_forbidden_syscall;
    let config = match config_from(args).and_then(|c| config::validate(&c).map(|_| c)) {
        Ok(config) => config,
        Err(e) => {
            log::error!("{}", ErrorChain(&e));
            return exit(exit_code::BAD_CONFIG);
        }
    };
    let vm = match hull_vmm::builder::build_and_start(&config) {
        Ok(vm) => vm,
        Err(e) => {
            log::error!("starting the VM: {}", ErrorChain(&e));
            return exit(exit_code::VMM_ERROR);
        }
    };
    if test_forbidden_syscall {
        forbidden_syscall_for_tests();
        return exit(exit_code::VMM_ERROR);
    }
    exit(vm.serve())
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(code as u8)
}

/// The test trigger `--test-forbidden-syscall`, run once the VM is built
/// and every thread's seccomp filter is in: open an Internet socket, which
/// the main thread's list does not allow. With the filter working the
/// kernel kills the VMM here (SIGSYS); if the call returns, the filter is
/// missing, and the VMM says so and exits with an error.
fn forbidden_syscall_for_tests() {
    log::warn!("test trigger: calling socket(AF_INET), which seccomp forbids");
    // SAFETY: a plain syscall whose result is only inspected.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    log::error!("socket(AF_INET) returned {fd}: the seccomp filter did not stop it");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_fd_adds_a_net_device_or_replaces_its_tap() {
        let args = |extra: &[&str]| {
            let mut argv = vec!["hull-vmm", "--kernel", "/k"];
            argv.extend_from_slice(extra);
            config_from(Args::parse_from(argv)).unwrap()
        };
        assert_eq!(args(&[]).net, None);
        assert_eq!(
            args(&["--tap-fd", "5"]).net,
            Some(NetConfig {
                tap: TapConfig::Fd(5),
                mac: None
            })
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vm.json");
        std::fs::write(
            &file,
            r#"{"kernel": "/k", "net": {"tap": {"name": "hulltap0"}, "mac": "02:00:00:00:00:07"}}"#,
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let from_file = args(&["--config", file]).net.unwrap();
        assert_eq!(from_file.tap, TapConfig::Name("hulltap0".into()));
        let replaced = args(&["--config", file, "--tap-fd", "4"]).net.unwrap();
        assert_eq!(replaced.tap, TapConfig::Fd(4));
        assert_eq!(replaced.mac.as_deref(), Some("02:00:00:00:00:07"));
    }

    #[test]
    fn drives_take_ro_and_an_id_in_any_order() {
        let plain = parse_drive("/img").unwrap();
        assert_eq!((plain.read_only, plain.id), (false, None));
        let ro = parse_drive("/img,ro").unwrap();
        assert!(ro.read_only);
        for text in ["/a.img,ro,id=rootfs", "/a.img,id=rootfs,ro"] {
            let drive = parse_drive(text).unwrap();
            assert_eq!(drive.path, std::path::Path::new("/a.img"));
            assert!(drive.read_only);
            assert_eq!(drive.id.as_deref(), Some("rootfs"));
        }
        for bad in ["/a.img,rw", "/a.img,id=", "/a.img,serial=x"] {
            let err = parse_drive(bad).unwrap_err().to_string();
            assert!(err.contains("drives"), "{bad}: {err}");
        }
    }
}
