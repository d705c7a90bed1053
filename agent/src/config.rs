//! The agent's command line and the role it plays.
//!
//! In the guest the kernel starts the agent as `/init`, passing on any
//! command-line words it does not know itself (and everything after `--`),
//! so as PID 1 unknown arguments are reported and skipped, never fatal.

use std::path::PathBuf;

use hull_protocol::AGENT_VSOCK_PORT;
use thiserror::Error;

/// Whether the agent is the guest's init or an ordinary process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// PID 1 of the guest: mounts, sets the hostname, reboots to stop.
    Init,
    /// Anything else (tests on the host): touches nothing, exits to stop.
    Process,
}

impl Role {
    /// PID 1 is the init role; any other PID is an ordinary process.
    pub fn detect() -> Self {
        if rustix::process::getpid().is_init() {
            Role::Init
        } else {
            Role::Process
        }
    }
}

/// Where the agent serves its API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// AF_VSOCK, any CID, on this port: the guest.
    Vsock { port: u32 },
    /// A Unix socket at this path: tests on the host.
    Unix(PathBuf),
}

impl ListenAddr {
    /// The address as ttrpc's `Server::bind` takes it.
    pub fn to_ttrpc(&self) -> String {
        match self {
            ListenAddr::Vsock { port } => format!("vsock://-1:{port}"),
            ListenAddr::Unix(path) => format!("unix://{}", path.display()),
        }
    }

    fn parse(text: &str) -> Result<Self, ConfigError> {
        let invalid = || ConfigError::InvalidListen {
            address: text.to_owned(),
        };
        if let Some(path) = text.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(invalid());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        let rest = text.strip_prefix("vsock://").ok_or_else(invalid)?;
        let port = rest.strip_prefix("-1:").ok_or_else(invalid)?;
        let port = port.parse().map_err(|_| invalid())?;
        Ok(ListenAddr::Vsock { port })
    }
}

/// The agent's settings, from its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// `--listen`: `vsock://-1:PORT` (default, port 1024) or `unix:///PATH`.
    pub listen: ListenAddr,
    /// `--hostname`: the guest's hostname (init role only).
    pub hostname: String,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: ListenAddr::Vsock {
                port: AGENT_VSOCK_PORT,
            },
            hostname: "hull".to_owned(),
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(AgentConfig),
    Help,
    Version,
}

/// A command line the agent cannot follow.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("unknown argument {argument:?}")]
    UnknownArgument { argument: String },
    #[error("{flag} needs a value")]
    MissingValue { flag: &'static str },
    #[error("invalid --listen address {address:?} (expected vsock://-1:PORT or unix:///PATH)")]
    InvalidListen { address: String },
    #[error("invalid --hostname {hostname:?} (1 to 64 bytes, no '/' or NUL)")]
    InvalidHostname { hostname: String },
}

pub const USAGE: &str =
    "usage: hull-agent [--listen vsock://-1:PORT|unix:///PATH] [--hostname NAME]";

/// Parses the arguments (without argv[0]).
///
/// Every problem is returned next to the best command line that could be
/// made of the rest: PID 1 logs them and goes on, a process exits on them.
pub fn parse_args<I>(args: I) -> (Command, Vec<ConfigError>)
where
    I: IntoIterator<Item = String>,
{
    let mut config = AgentConfig::default();
    let mut errors = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |flag: &'static str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(ConfigError::MissingValue { flag })
        };
        match flag.as_str() {
            "--listen" => match value("--listen").and_then(|text| ListenAddr::parse(&text)) {
                Ok(listen) => config.listen = listen,
                Err(err) => errors.push(err),
            },
            "--hostname" => match value("--hostname").and_then(validate_hostname) {
                Ok(hostname) => config.hostname = hostname,
                Err(err) => errors.push(err),
            },
            "--help" | "-h" => return (Command::Help, errors),
            "--version" | "-V" => return (Command::Version, errors),
            _ => errors.push(ConfigError::UnknownArgument { argument: arg }),
        }
    }
    (Command::Run(config), errors)
}

fn validate_hostname(hostname: String) -> Result<String, ConfigError> {
    let valid = !hostname.is_empty() && hostname.len() <= 64 && !hostname.contains(['/', '\0']);
    if valid {
        Ok(hostname)
    } else {
        Err(ConfigError::InvalidHostname { hostname })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> (Command, Vec<ConfigError>) {
        parse_args(args.iter().map(|arg| arg.to_string()))
    }

    #[test]
    fn defaults_to_vsock_port_1024() {
        let (command, errors) = parse(&[]);
        assert!(errors.is_empty());
        let Command::Run(config) = command else {
            panic!("{command:?}")
        };
        assert_eq!(config.listen, ListenAddr::Vsock { port: 1024 });
        assert_eq!(config.listen.to_ttrpc(), hull_protocol::AGENT_VSOCK_ADDRESS);
        assert_eq!(config.hostname, "hull");
    }

    #[test]
    fn listen_and_hostname_in_both_spellings() {
        let (command, errors) = parse(&["--listen", "unix:///tmp/a.sock", "--hostname=box-1"]);
        assert!(errors.is_empty(), "{errors:?}");
        let Command::Run(config) = command else {
            panic!("{command:?}")
        };
        assert_eq!(config.listen, ListenAddr::Unix("/tmp/a.sock".into()));
        assert_eq!(config.listen.to_ttrpc(), "unix:///tmp/a.sock");
        assert_eq!(config.hostname, "box-1");

        let (command, _) = parse(&["--listen=vsock://-1:2000"]);
        let Command::Run(config) = command else {
            panic!("{command:?}")
        };
        assert_eq!(config.listen, ListenAddr::Vsock { port: 2000 });
    }

    #[test]
    fn problems_are_reported_and_the_rest_still_applies() {
        let (command, errors) = parse(&[
            "quiet",
            "--listen",
            "vsock://1024",
            "--hostname",
            "a/b",
            "--listen",
        ]);
        let Command::Run(config) = command else {
            panic!("{command:?}")
        };
        assert_eq!(config, AgentConfig::default());
        assert_eq!(
            errors,
            vec![
                ConfigError::UnknownArgument {
                    argument: "quiet".into()
                },
                ConfigError::InvalidListen {
                    address: "vsock://1024".into()
                },
                ConfigError::InvalidHostname {
                    hostname: "a/b".into()
                },
                ConfigError::MissingValue { flag: "--listen" },
            ]
        );
    }

    #[test]
    fn relative_unix_paths_are_rejected() {
        let (_, errors) = parse(&["--listen", "unix://agent.sock"]);
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse(&["--help"]).0, Command::Help);
        assert_eq!(parse(&["-V"]).0, Command::Version);
    }
}
