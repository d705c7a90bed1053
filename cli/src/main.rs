//! `hull`: the command line. Subcommands are thin: the work is in the
//! library (`hull::*`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "hull", version, about = "hull: containers in microVMs")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
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

fn main() -> ExitCode {
    match Cli::parse().command {
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

/// "error: cause: root cause" on one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
