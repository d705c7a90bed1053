//! `hull`: the command line. Subcommands are thin: the work is in the
//! library (`hull::*`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use hull_protocol::error_chain;
use hull_sandbox::vmm_process::VmmSpec;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "hull", version, about = "hull: containers in microVMs")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Boot a microVM to a ready agent, report the boot time, and shut it down.
    Boot(BootArgs),
    /// Benchmarks, measured on this machine and printed with it and the date.
    #[command(subcommand)]
    Bench(hull::bench::BenchCommand),
    /// Audit the host (and optionally a container) for what weakens hull's
    /// isolation: PASS, INFO, WARN or FAIL per check, with a remedy.
    Check(CheckArgs),
    /// The VM templates sandboxes start from: snapshots of a booted VM.
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Build the guest initramfs (uncompressed newc cpio) with the agent as /init.
    Initramfs {
        /// The statically linked hull-agent binary (see agent/build.sh).
        #[arg(long)]
        agent: PathBuf,
        /// Where to write the archive; replaced atomically.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct BootArgs {
    /// Guest kernel (default: $HULL_KERNEL or /usr/local/share/hull/vmlinux).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs with the agent (default: $HULL_INITRAMFS or /usr/local/share/hull/initramfs.cpio).
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// hull-vmm binary (default: $HULL_VMM, next to hull, or on PATH).
    #[arg(long)]
    vmm: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    #[arg(long, default_value_t = 128)]
    memory_mib: u32,
    /// Seconds to wait for the agent.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Keep the guest kernel's boot messages (verbose boot) and show their tail if anything fails.
    #[arg(long)]
    console: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum TemplateCommand {
    /// List the templates, and whether the config's inputs still match.
    List(TemplateArgs),
    /// Build the template of a sandbox without limits (the first `ctr run`
    /// or `docker run` would build it otherwise).
    Build {
        #[command(flatten)]
        args: TemplateArgs,
        /// Guest RAM of the sandboxes it serves (rounded up to its class).
        #[arg(long)]
        memory_mib: Option<u32>,
    },
    /// Remove every template; the next sandbox of each kind boots and
    /// builds its template again.
    Clear(TemplateArgs),
}

#[derive(Debug, clap::Args)]
struct TemplateArgs {
    /// hull's config file (paths, template_dir, sizes).
    #[arg(long, default_value = "/etc/hull/config.toml")]
    config: PathBuf,
}

fn load_config(path: &std::path::Path) -> Result<hull_sandbox::config::ShimConfig, String> {
    let explicit = path != std::path::Path::new(hull_sandbox::config::DEFAULT_CONFIG_PATH);
    hull_sandbox::config::ShimConfig::load(explicit.then_some(path)).map_err(|e| error_chain(&e))
}

fn template(command: TemplateCommand) -> Result<String, String> {
    match command {
        TemplateCommand::List(args) => Ok(hull::template::list(&load_config(&args.config)?)),
        TemplateCommand::Build { args, memory_mib } => {
            let config = load_config(&args.config)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| error_chain(&e))?;
            let built = runtime
                .block_on(hull::template::build(&config, memory_mib))
                .map_err(|e| error_chain(&e))?;
            Ok(format!(
                "template {}: {} vCPU(s), {} MiB, agent ready after {:.1} s, saved in {:.2} s\n{}\n",
                built.id,
                built.meta.key.vcpus,
                built.meta.key.memory_mib,
                built.meta.boot_ms as f64 / 1000.0,
                built.meta.save_ms as f64 / 1000.0,
                built.snapshot.display()
            ))
        }
        TemplateCommand::Clear(args) => {
            let config = load_config(&args.config)?;
            let removed =
                hull_sandbox::template::clear(&config.template_dir).map_err(|e| error_chain(&e))?;
            Ok(format!(
                "removed {removed} entries from {}\n",
                config.template_dir.display()
            ))
        }
    }
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// Check the container of this OCI bundle directory.
    #[arg(long, conflicts_with_all = ["task", "docker"])]
    bundle: Option<PathBuf>,
    /// Check this running containerd task.
    #[arg(long, conflicts_with = "docker")]
    task: Option<String>,
    /// The containerd namespace of --task.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Check this Docker container (id or unique prefix).
    #[arg(long)]
    docker: Option<String>,
    /// containerd's state directory (where task bundles live).
    #[arg(long, default_value = "/run/containerd")]
    containerd_state: PathBuf,
    /// hull's config file (for `jail` and the policy's allowed paths).
    #[arg(long, default_value = "/etc/hull/config.toml")]
    config: PathBuf,
    /// Only the container checks.
    #[arg(long)]
    no_host: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn check(args: CheckArgs) -> Result<u8, String> {
    use hull::check::{self, container::Source};
    let mut results = Vec::new();
    if !args.no_host {
        let paths = check::host::HostPaths {
            config: args.config.clone(),
            ..Default::default()
        };
        results.extend(check::host::run(&paths));
        results.extend(check::network::run());
        results.extend(check::share::run(&args.config));
    }
    let source = match (args.bundle, args.task, args.docker) {
        (Some(dir), _, _) => Some(Source::Bundle(dir)),
        (_, Some(id), _) => Some(Source::Task {
            namespace: args.namespace,
            id,
            state_dir: args.containerd_state.clone(),
        }),
        (_, _, Some(id)) => Some(Source::Docker {
            id,
            state_dir: args.containerd_state.clone(),
        }),
        _ => None,
    };
    if let Some(source) = source {
        let spec = check::container::load_spec(&source).map_err(|e| error_chain(&e))?;
        results.extend(check::container::run(&spec, &Default::default()));
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).expect("results serialize")
        );
    } else {
        print!("{}", check::render_text(&results));
    }
    Ok(check::exit_status(&results))
}

fn boot(args: BootArgs) -> Result<(), String> {
    let chain = |e: &dyn std::error::Error| error_chain(e);
    let spec = VmmSpec {
        vmm_binary: hull::paths::vmm(args.vmm.as_deref()).map_err(|e| chain(&e))?,
        kernel: hull::paths::kernel(args.kernel.as_deref(), args.vcpus).map_err(|e| chain(&e))?,
        initramfs: hull::paths::initramfs(args.initramfs.as_deref()).map_err(|e| chain(&e))?,
        vcpus: args.vcpus,
        memory_mib: args.memory_mib,
        kernel_args: Vec::new(),
        drives: Vec::new(),
        console_log: args.console,
        verbose_boot: args.console,
        jail: None,
        seccomp: None,
        snapshot_file: None,
        restore_from: None,
        network: None,
        fs: Vec::new(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| chain(&e))?;
    let state_dir = hull::paths::new_state_dir("boot");
    let report = runtime
        .block_on(hull::boot::boot_once(
            &spec,
            state_dir,
            Duration::from_secs(args.timeout),
        ))
        .map_err(|e| chain(&e))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("the report serializes")
        );
    } else {
        println!(
            "agent:        hull-agent {} (protocol {})",
            report.agent_version, report.protocol_version
        );
        println!("guest kernel: {}", report.guest_kernel);
        println!(
            "boot:         {} ms from VMM start to agent ready",
            report.boot_ms
        );
        println!(
            "shutdown:     clean, {} ms after VMM start",
            report.total_ms
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Commands::Boot(args) => match boot(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("hull boot: {message}");
                ExitCode::FAILURE
            }
        },
        Commands::Bench(command) => match hull::bench::run(&command, &mut |l| eprintln!("{l}")) {
            Ok(output) => {
                print!("{output}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("hull bench: {}", error_chain(&err));
                ExitCode::FAILURE
            }
        },
        Commands::Template(command) => match template(command) {
            Ok(output) => {
                print!("{output}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("hull template: {message}");
                ExitCode::FAILURE
            }
        },
        Commands::Check(args) => match check(args) {
            Ok(status) => ExitCode::from(status),
            Err(message) => {
                eprintln!("hull check: {message}");
                ExitCode::from(2)
            }
        },
        Commands::Initramfs { agent, out } => {
            match hull::initramfs::build_initramfs(&agent, &out) {
                Ok(len) => {
                    eprintln!("hull: wrote {} ({len} bytes)", out.display());
                    println!("{}", out.display());
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("hull: {}", error_chain(&err));
                    ExitCode::FAILURE
                }
            }
        }
    }
}
