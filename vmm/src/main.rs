//! `hull-vmm`: run one microVM. A thin front end over the `hull_vmm` library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hull_protocol::vmm_api::exit_code;
use hull_vmm::config::{ConfigError, Console, VmConfig};
use hull_vmm::devices::virtio::block::BlockConfig;
use hull_vmm::devices::virtio::vsock::VsockConfig;
use hull_vmm::logger::ErrorChain;

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
    /// A raw disk image: `PATH` or `PATH,ro` (repeatable).
    #[arg(long = "drive")]
    drives: Vec<String>,
    /// Guest CID of the vsock device (needs --vsock-uds).
    #[arg(long, default_value_t = 3)]
    vsock_cid: u32,
    /// Host Unix socket of the hybrid vsock device.
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// The control socket.
    #[arg(long)]
    api_sock: Option<PathBuf>,
    /// error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: log::LevelFilter,
}

fn config_from(args: Args) -> Result<VmConfig, ConfigError> {
    let mut config = match (&args.config, &args.kernel) {
        (Some(path), _) => VmConfig::from_file(path)?,
        (None, Some(kernel)) => VmConfig {
            kernel: kernel.clone(),
            initramfs: None,
            kernel_args: Vec::new(),
            vcpus: 1,
            memory_mib: 128,
            console: Console::Off,
            verbose_boot: false,
            drives: Vec::new(),
            vsock: None,
            api_socket: None,
        },
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
        let (path, read_only) = match drive.strip_suffix(",ro") {
            Some(path) => (path, true),
            None => (drive.as_str(), false),
        };
        config.drives.push(BlockConfig {
            path: path.into(),
            read_only,
            id: None,
        });
    }
    if let Some(uds_path) = args.vsock_uds {
        config.vsock = Some(VsockConfig {
            guest_cid: args.vsock_cid,
            uds_path,
        });
    }
    config.api_socket = args.api_sock.or(config.api_socket);
    Ok(config)
}

fn main() -> ExitCode {
    let args = Args::parse();
    hull_vmm::logger::init(args.log_level);
    let config = match config_from(args).and_then(|c| c.validate().map(|_| c)) {
        Ok(config) => config,
        Err(e) => {
            log::error!("{}", ErrorChain(&e));
            return ExitCode::from(exit_code::BAD_CONFIG as u8);
        }
    };
    ExitCode::from(hull_vmm::builder::run(&config) as u8)
}
