//! The shim's errors and their ttrpc codes, mapped in one place.

use hull_protocol::error_chain;
use hull_sandbox::policy::PolicyError;
use hull_sandbox::share::ShareError;
use hull_sandbox::spec::SpecError;
use hull_sandbox::SandboxError;

use crate::config::ConfigError;
use crate::rootfs::RootfsError;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the container's spec is refused by hull's policy")]
    Policy(#[source] PolicyError),
    #[error("the container's OCI spec")]
    Spec(#[from] SpecError),
    #[error("{what} is not valid JSON")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("preparing the container's rootfs")]
    Rootfs(#[from] RootfsError),
    #[error("sharing the container's bind mounts with the guest")]
    Share(#[from] ShareError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("agent call {call} failed")]
    AgentCall {
        call: &'static str,
        #[source]
        source: ttrpc::Error,
    },
    #[error("the VM of this container has stopped ({0})")]
    VmGone(String),
    #[error("no container {0} in this shim")]
    NoContainer(String),
    #[error("container {id} is of pod sandbox {sandbox}, which this shim does not run")]
    NoPod { id: String, sandbox: String },
    #[error(
        "a pod's containers join its VM through its shared rootfs: the pod's sandbox was created \
         with rootfs = \"block\" or a snapshot that is a disk; use rootfs = \"virtio-fs\" (the default) \
         and an overlay or native snapshotter"
    )]
    PodRootfsNotShared,
    #[error("no process {exec_id:?} in container {id}")]
    NoProcess { id: String, exec_id: String },
    #[error("process {0:?} exists already")]
    ProcessExists(String),
    #[error("container {0} exists already")]
    ContainerExists(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    WrongState(String),
    #[error("the container's network")]
    Network(#[from] hull_sandbox::network::NetworkError),
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
}

impl ShimError {
    /// The ttrpc code containerd gets.
    pub fn code(&self) -> ttrpc::Code {
        use ttrpc::Code;
        match self {
            ShimError::Config(_) | ShimError::Spec(_) | ShimError::Json { .. } => {
                Code::INVALID_ARGUMENT
            }
            ShimError::Policy(_) => Code::FAILED_PRECONDITION,
            // The spec names a host path that is not there or cannot be
            // shared (a socket, a device).
            ShimError::Share(ShareError::Source { .. } | ShareError::NotShareable { .. }) => {
                Code::INVALID_ARGUMENT
            }
            ShimError::NoContainer(_) | ShimError::NoProcess { .. } | ShimError::NoPod { .. } => {
                Code::NOT_FOUND
            }
            ShimError::PodRootfsNotShared => Code::FAILED_PRECONDITION,
            ShimError::ProcessExists(_) | ShimError::ContainerExists(_) => Code::ALREADY_EXISTS,
            ShimError::WrongState(_) => Code::FAILED_PRECONDITION,
            ShimError::VmGone(_)
            | ShimError::Sandbox(SandboxError::VmGone(_) | SandboxError::Agent(_)) => {
                Code::UNAVAILABLE
            }
            // The agent's own code says what went wrong (a bad spec is
            // INVALID_ARGUMENT, a missing process NOT_FOUND, ...).
            ShimError::AgentCall {
                source: ttrpc::Error::RpcStatus(status),
                ..
            } => status.code(),
            ShimError::AgentCall { .. } => Code::UNAVAILABLE,
            ShimError::Hook(crate::hooks::HookError::InGuest { .. }) => Code::FAILED_PRECONDITION,
            ShimError::Rootfs(_)
            | ShimError::Share(_)
            | ShimError::Network(_)
            | ShimError::Hook(_)
            | ShimError::Sandbox(SandboxError::Vmm(_))
            | ShimError::Io { .. } => Code::INTERNAL,
        }
    }
}

/// Text that came from the guest (or a container), made safe for one log
/// line: control characters (newlines, escape sequences) are escaped, so a
/// guest cannot forge lines in containerd's log or drive a terminal.
pub fn untrusted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl From<ShimError> for ttrpc::Error {
    fn from(err: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(err.code(), error_chain(&err)))
    }
}

#[cfg(test)]
mod untrusted_tests {
    #[test]
    fn guest_text_cannot_forge_log_lines() {
        assert_eq!(
            super::untrusted("oom\nlevel=info msg=\"forged\"\u{1b}[2J"),
            "oom\\nlevel=info msg=\"forged\"\\u{1b}[2J"
        );
        assert_eq!(super::untrusted("plain text"), "plain text");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_chosen_not_flattened() {
        assert_eq!(
            ShimError::NoContainer("x".into()).code(),
            ttrpc::Code::NOT_FOUND
        );
        let policy = PolicyError {
            id: "C1.3",
            field: "linux.namespaces".into(),
            message: "shares the host's network namespace".into(),
            remedy: "r",
        };
        let err = ShimError::Policy(policy);
        assert_eq!(err.code(), ttrpc::Code::FAILED_PRECONDITION);
        assert!(
            error_chain(&err).contains("host's network"),
            "{}",
            error_chain(&err)
        );
        let agent = ShimError::AgentCall {
            call: "CreateContainer",
            source: ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::INVALID_ARGUMENT,
                "process.args: missing",
            )),
        };
        assert_eq!(agent.code(), ttrpc::Code::INVALID_ARGUMENT);
    }
}
