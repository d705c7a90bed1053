//! A sandbox: one VM and what the host shares with it, serving one
//! container, or every container of a Kubernetes pod (Kata's model). The
//! CRI's sandbox container (`io.kubernetes.cri.container-type=sandbox`, the
//! pause image) makes it; the pod's other containers (`container`, naming
//! it by `io.kubernetes.cri.sandbox-id`) are created in the same VM by the
//! same shim (see `crate::service`'s grouping), each with its own rootfs
//! and binds directory in the sandbox's shares, and join the sandbox
//! container's network, IPC and UTS namespaces inside the guest.

use std::sync::Arc;

use hull_protocol::agent_api::agent_ttrpc::AgentClient;
use hull_sandbox::share::Share;
use hull_sandbox::spec::Spec;
use hull_sandbox::Sandbox;
use oci_spec::runtime::LinuxNamespaceType;

use super::network::SandboxNetwork;

/// The CRI's annotation naming what a container is in its pod.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The CRI's annotation naming a container's pod sandbox.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// What a container's spec says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A container of its own (ctr, Docker): its own VM.
    Alone,
    /// The CRI's sandbox container: makes the pod's VM, which more
    /// containers will join.
    PodSandbox,
    /// A container of the pod whose sandbox container is this id.
    PodMember(String),
}

impl Role {
    pub fn of(spec: &Spec) -> Role {
        let annotations = spec.annotations().clone().unwrap_or_default();
        match annotations.get(CONTAINER_TYPE).map(String::as_str) {
            Some("sandbox") => Role::PodSandbox,
            Some("container") => match annotations.get(SANDBOX_ID) {
                Some(id) if !id.is_empty() => Role::PodMember(id.clone()),
                _ => Role::Alone,
            },
            _ => Role::Alone,
        }
    }
}

/// The VM and its shares.
pub struct Pod {
    /// The id of the container whose create made it.
    pub id: String,
    pub sandbox: Sandbox,
    pub agent: Arc<AgentClient>,
    /// The pid reported to containerd for every process of the sandbox:
    /// its host process (the jailer's supervisor, or the VMM), never a pid
    /// the guest chose. containerd and Docker build `/proc/<pid>/ns/*`
    /// paths from it, and a compromised agent answering `pid=1` would
    /// otherwise hand out the host's namespaces.
    pub host_pid: u32,
    pub network: SandboxNetwork,
    /// The rootfs share (a directory per container), when rootfs are
    /// shared.
    pub rootfs_share: std::sync::Mutex<Option<Share>>,
    /// The host bind mounts' share (a directory per container), when there
    /// is one.
    pub binds_share: std::sync::Mutex<Option<Share>>,
    /// Whether more containers may join (a CRI pod).
    pub is_pod: bool,
    /// The guest pid of the first container's init: the pod's namespaces.
    pub first_guest_pid: u32,
}

impl Pod {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: &str,
        sandbox: Sandbox,
        host_pid: u32,
        network: SandboxNetwork,
        rootfs_share: Option<Share>,
        binds_share: Option<Share>,
        is_pod: bool,
        first_guest_pid: u32,
    ) -> Self {
        let agent = sandbox.agent();
        Pod {
            id: id.to_owned(),
            sandbox,
            agent,
            host_pid,
            network,
            rootfs_share: std::sync::Mutex::new(rootfs_share),
            binds_share: std::sync::Mutex::new(binds_share),
            is_pod,
            first_guest_pid,
        }
    }

    /// Takes container `id` (a member that left the pod) out of the shares:
    /// its rootfs and binds unmounted, its empty directories removed.
    /// Blocking (unmounts).
    pub fn remove_member(&self, id: &str) {
        for share in [&self.rootfs_share, &self.binds_share] {
            if let Some(share) = share.lock().ok().as_ref().and_then(|s| s.as_ref()) {
                if let Err(e) = share.remove_subdir(id) {
                    log::warn!("{id}: {}", hull_protocol::error_chain(&e));
                }
            }
        }
    }

    /// Takes the shares, to drop them (off the async runtime: dropping one
    /// kills virtiofsd and unmounts).
    pub fn take_shares(&self) -> Vec<Share> {
        [&self.rootfs_share, &self.binds_share]
            .into_iter()
            .filter_map(|s| s.lock().ok().and_then(|mut s| s.take()))
            .collect()
    }
}

/// The namespaces a pod member joins: those its spec names by a path under
/// `/proc` (the CRI names the sandbox task's `/proc/<pid>/ns/<kind>`, a
/// host pid hull reported), which inside the guest are the first
/// container's: their paths become `/proc/<guest pid>/ns/<kind>` there.
/// Call before the spec's host paths are dropped (`for_the_guest`).
pub fn joined_namespaces(spec: &Spec) -> Vec<LinuxNamespaceType> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
        .filter(|ns| ns.path().as_ref().is_some_and(|p| p.starts_with("/proc")))
        .map(|ns| ns.typ())
        .collect()
}

/// Points the spec's namespaces of `kinds` at the guest process `pid`'s.
pub fn join_in_guest(spec: &mut Spec, kinds: &[LinuxNamespaceType], pid: u32) {
    let Some(linux) = spec.linux_mut() else {
        return;
    };
    let Some(namespaces) = linux.namespaces_mut() else {
        return;
    };
    for ns in namespaces.iter_mut() {
        if kinds.contains(&ns.typ()) {
            let name = match ns.typ() {
                LinuxNamespaceType::Network => "net",
                LinuxNamespaceType::Ipc => "ipc",
                LinuxNamespaceType::Uts => "uts",
                LinuxNamespaceType::Pid => "pid",
                LinuxNamespaceType::Mount => "mnt",
                LinuxNamespaceType::Cgroup => "cgroup",
                LinuxNamespaceType::User => "user",
                LinuxNamespaceType::Time => "time",
            };
            ns.set_path(Some(format!("/proc/{pid}/ns/{name}").into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(annotations: serde_json::Value, namespaces: serde_json::Value) -> Spec {
        serde_json::from_value(json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "annotations": annotations,
            "linux": {"namespaces": namespaces},
        }))
        .unwrap()
    }

    #[test]
    fn roles_come_from_the_cri_annotations() {
        let ns = json!([]);
        assert_eq!(Role::of(&spec(json!({}), ns.clone())), Role::Alone);
        assert_eq!(
            Role::of(&spec(json!({CONTAINER_TYPE: "sandbox"}), ns.clone())),
            Role::PodSandbox
        );
        assert_eq!(
            Role::of(&spec(
                json!({CONTAINER_TYPE: "container", SANDBOX_ID: "pod1"}),
                ns.clone()
            )),
            Role::PodMember("pod1".into())
        );
        assert_eq!(
            Role::of(&spec(json!({CONTAINER_TYPE: "container"}), ns)),
            Role::Alone
        );
    }

    #[test]
    fn a_members_namespaces_become_the_first_containers_in_the_guest() {
        let mut s = spec(
            json!({}),
            json!([
                {"type": "pid"},
                {"type": "network", "path": "/proc/4242/ns/net"},
                {"type": "ipc", "path": "/proc/4242/ns/ipc"},
                {"type": "mount"},
            ]),
        );
        let kinds = joined_namespaces(&s);
        assert_eq!(
            kinds,
            vec![LinuxNamespaceType::Network, LinuxNamespaceType::Ipc]
        );
        join_in_guest(&mut s, &kinds, 17);
        let value = serde_json::to_value(&s).unwrap();
        assert_eq!(
            value["linux"]["namespaces"],
            json!([
                {"type": "pid"},
                {"type": "network", "path": "/proc/17/ns/net"},
                {"type": "ipc", "path": "/proc/17/ns/ipc"},
                {"type": "mount"},
            ])
        );
    }
}
