//! The container's spec as the guest gets it: what in a host-side spec
//! cannot mean anything in the guest is rewritten, and the host bind mounts
//! become entries of the sandbox's shared directory.

use std::path::PathBuf;

use hull_sandbox::policy;
use hull_sandbox::spec::Spec;

use hull_sandbox::share::HostBind;

/// Rewrites what in a host-side spec cannot mean anything in the guest,
/// and returns the bind mounts of host files and directories, which the
/// sandbox's shared directory (virtio-fs) serves live: each such mount's
/// source becomes its index in that directory (`"0"`, `"1"`, ...), which
/// the agent binds from in the guest. Mount propagation cannot cross the
/// VM: a shared or slave bind is warned about (mounts the host makes
/// under its source later do not reach the container);
/// - host devices never reach the guest (policy C3.1);
/// - namespace paths name host namespaces (Docker's and CRI's network
///   namespace): every namespace is the guest's own;
/// - hooks are host binaries (Docker's libnetwork-setkey);
/// - the guest has no swap, so no swap limit.
pub fn for_the_guest(spec: &mut Spec) -> Vec<HostBind> {
    if let Some(linux) = spec.linux_mut() {
        linux.set_devices(None);
        if let Some(namespaces) = linux.namespaces_mut() {
            for ns in namespaces.iter_mut() {
                ns.set_path(None);
            }
        }
        if let Some(resources) = linux.resources_mut() {
            if let Some(mut memory) = *resources.memory() {
                memory.set_swap(None);
                memory.set_swappiness(None);
                resources.set_memory(Some(memory));
            }
        }
    }
    spec.set_hooks(None);
    let mut binds = Vec::new();
    for mount in spec.mounts_mut().iter_mut().flatten() {
        let Some(source) = policy::host_bind_source(mount).map(PathBuf::from) else {
            continue;
        };
        let options = mount.options().clone().unwrap_or_default();
        if let Some(propagation) = options
            .iter()
            .find(|o| matches!(o.as_str(), "shared" | "rshared" | "slave" | "rslave"))
        {
            log::warn!(
                "bind mount of {} on {}: {propagation} propagation cannot cross the VM;                  mounts made later under the source do not reach the container",
                source.display(),
                mount.destination().display()
            );
        }
        binds.push(HostBind {
            source,
            destination: mount.destination().clone(),
            read_only: options.iter().any(|o| o == "ro"),
        });
        mount.set_source(Some(PathBuf::from((binds.len() - 1).to_string())));
    }
    binds
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn host_side_fields_are_rewritten_for_the_guest() {
        let spec = json!({
            "ociVersion": "1.0.2",
            "hooks": {"createRuntime": [{"path": "/usr/sbin/dockerd"}]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/docker/c/hosts", "options": ["rbind", "ro"]}
            ],
            "linux": {
                "devices": [{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}],
                "namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/docker/netns/x"}],
                "resources": {"memory": {"limit": 100, "swap": 200}}
            }
        });
        let mut spec = hull_sandbox::spec::parse(spec.to_string().as_bytes()).unwrap();
        let binds = for_the_guest(&mut spec);
        assert_eq!(binds.len(), 1);
        assert_eq!(binds[0].destination, PathBuf::from("/etc/hosts"));
        assert_eq!(binds[0].source, PathBuf::from("/var/lib/docker/c/hosts"));
        assert!(binds[0].read_only);
        let spec = serde_json::to_value(&spec).unwrap();
        assert!(spec.get("hooks").is_none());
        // The mount stays, its source now the bind's place in the share.
        assert_eq!(
            spec["mounts"][1],
            json!({"destination": "/etc/hosts", "type": "bind", "source": "0", "options": ["rbind", "ro"]})
        );
        assert!(spec["linux"].get("devices").is_none());
        assert_eq!(spec["linux"]["namespaces"][1], json!({"type": "network"}));
        assert_eq!(spec["linux"]["resources"]["memory"], json!({"limit": 100}));
    }
}
