//! The `hull-agent` binary: the guest's `/init`, or a plain process in
//! tests. See the library's documentation for what it does and must not do.

use std::time::Instant;

use hull_agent::config::{parse_args, AgentConfig, Command, USAGE};
use hull_agent::logger::{self, error_chain};
use hull_agent::power::{stop, Outcome};
use hull_agent::{init, Role};
use hull_protocol::PROTOCOL_VERSION;

fn main() {
    let role = Role::detect();
    logger::init();
    // PID 1 must not die of a panic (the kernel would panic in turn): log
    // it and take the orderly way out instead.
    std::panic::set_hook(Box::new(move |info| {
        log::error!("panic: {info}");
        stop(role, Outcome::Failed);
    }));

    let config = configure(role);
    if role == Role::Init {
        init_guest(&config);
    }

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            log::error!("cannot start the tokio runtime: {err}");
            stop(role, Outcome::Failed);
        }
    };
    let outcome = match runtime.block_on(hull_agent::run(&config, role)) {
        Ok(()) => Outcome::Orderly,
        Err(err) => {
            log::error!("{}", error_chain(&err));
            Outcome::Failed
        }
    };
    stop(role, outcome);
}

/// The command line's configuration. A process exits on a bad command line;
/// PID 1 gets whatever the kernel passes on, so it logs and goes on.
fn configure(role: Role) -> AgentConfig {
    let (command, errors) = parse_args(std::env::args().skip(1));
    if role == Role::Process {
        if !errors.is_empty() {
            for err in &errors {
                eprintln!("hull-agent: {err}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
        match command {
            Command::Run(config) => return config,
            Command::Help => println!("{USAGE}"),
            Command::Version => println!(
                "hull-agent {} (protocol {PROTOCOL_VERSION})",
                env!("CARGO_PKG_VERSION")
            ),
        }
        std::process::exit(0);
    }
    for err in &errors {
        log::warn!("ignoring argument: {err}");
    }
    match command {
        Command::Run(config) => config,
        Command::Help | Command::Version => AgentConfig::default(),
    }
}

/// PID 1's set-up: filesystems, hostname, logging to the kernel, console.
fn init_guest(config: &AgentConfig) {
    let started = Instant::now();
    let report = init::setup(&init::Kernel, &config.hostname);
    if let Err(err) = logger::use_kmsg() {
        log::warn!("cannot log to /dev/kmsg, staying on the console: {err}");
    }
    match init::ensure_console_stdio() {
        Ok(true) => log::info!("stdio moved to /dev/console"),
        Ok(false) => {}
        Err(err) => log::error!("{}", error_chain(&err)),
    }
    for err in &report.errors {
        log::error!("{}", error_chain(err));
    }
    log::info!(
        "init: {} of {} filesystems mounted, hostname {:?}, {} ms",
        report.mounted.len(),
        init::MOUNTS.len(),
        config.hostname,
        started.elapsed().as_millis()
    );
}
