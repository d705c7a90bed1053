//! What hull accepts in an OCI runtime spec, and what it only warns about.
//! One set of rules, used twice: the shim refuses a container whose spec
//! breaks a [`Severity::Refuse`] rule (before any VM starts), and `hull
//! check` reports every finding. The README's "Spec policy" table is this
//! file in prose; keep them together.
//!
//! The rules read the spec as the shim parsed it once
//! ([`crate::spec::Spec`]), the same types the agent then builds the
//! container from.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{Capability, LinuxNamespaceType, Mount, Spec};

/// Host paths a container may not bind-mount (nor a parent or a child of
/// them) unless the config allows that path explicitly. A source is checked
/// as written and as it resolves on the host (symlinks followed), so
/// neither `/var/run/...` (a link to `/run`) nor a symlink of the user's own
/// reaches one of these.
pub const SENSITIVE_HOST_PATHS: &[&str] = &[
    "/",
    "/proc",
    "/sys",
    "/dev",
    "/etc",
    "/boot",
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd",
    "/var/run/containerd",
    "/var/lib/containerd",
    "/var/lib/docker",
    "/var/lib/kubelet",
    "/var/lib/hull",
    "/run/hull",
    "/var/run/hull",
    "/root",
    "/home",
];

/// The capabilities Docker and containerd grant by default; more is worth a
/// warning.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every rule, by id, with its title (`hull check` lists each one, PASS
/// when nothing matched).
pub const RULES: &[(&str, &str)] = &[
    ("C1.1", "host PID namespace"),
    ("C1.2", "host IPC namespace"),
    ("C1.3", "host network namespace"),
    ("C1.4", "UTS namespace"),
    ("C1.5", "namespace of another container"),
    ("C2.1", "sensitive host path mounted"),
    ("C2.2", "sensitive host path allowed by config"),
    ("C3.1", "host devices"),
    ("C4.1", "privileged"),
    ("C4.2", "added capabilities"),
    ("C4.3", "seccomp profile"),
    ("C4.4", "no_new_privs"),
    ("C4.5", "runs as root"),
    ("C4.6", "writable root filesystem"),
    ("C5.1", "memory limit"),
    ("C5.2", "pids limit"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Fine, but worth knowing.
    Info,
    /// Weakens isolation inside the guest; allowed.
    Warn,
    /// Cannot work with a VM, or would expose the host: refused.
    Refuse,
}

/// One rule that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Stable id, e.g. `C3.1`.
    pub id: &'static str,
    pub severity: Severity,
    /// The spec field, e.g. `linux.namespaces`.
    pub field: String,
    pub message: String,
    /// One line saying what to do about it.
    pub remedy: &'static str,
}

/// Exceptions the operator allowed in hull's config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Host paths that may be bind-mounted although they are sensitive.
    pub allowed_host_paths: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message} ({id}; {remedy})")]
pub struct PolicyError {
    pub id: &'static str,
    pub field: String,
    pub message: String,
    pub remedy: &'static str,
}

/// Refuses the spec if any rule says so; the error names the first one.
pub fn enforce(spec: &Spec, config: &PolicyConfig) -> Result<(), PolicyError> {
    match review(spec, config)
        .into_iter()
        .find(|f| f.severity == Severity::Refuse)
    {
        Some(f) => Err(PolicyError {
            id: f.id,
            field: f.field,
            message: f.message,
            remedy: f.remedy,
        }),
        None => Ok(()),
    }
}

/// Every finding for `spec`, refusals first.
pub fn review(spec: &Spec, config: &PolicyConfig) -> Vec<Finding> {
    let mut findings = Vec::new();
    host_namespaces(spec, &mut findings);
    mounts(spec, config, &mut findings);
    devices(spec, &mut findings);
    privileges(spec, &mut findings);
    limits(spec, &mut findings);
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(b.id)));
    findings
}

fn finding(
    findings: &mut Vec<Finding>,
    id: &'static str,
    severity: Severity,
    field: impl Into<String>,
    message: impl Into<String>,
    remedy: &'static str,
) {
    findings.push(Finding {
        id,
        severity,
        field: field.into(),
        message: message.into(),
        remedy,
    });
}

fn host_namespaces(spec: &Spec, findings: &mut Vec<Finding>) {
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_deref())
        .unwrap_or_default();
    let has = |kind: LinuxNamespaceType| namespaces.iter().any(|ns| ns.typ() == kind);
    let rules: [(LinuxNamespaceType, &'static str, &str); 3] = [
        (
            LinuxNamespaceType::Pid,
            "C1.1",
            "shares the host's PID namespace: the container runs under the VM's own kernel, which cannot see or signal host processes",
        ),
        (
            LinuxNamespaceType::Ipc,
            "C1.2",
            "shares the host's IPC namespace: SysV and POSIX IPC objects cannot cross the VM boundary",
        ),
        (
            LinuxNamespaceType::Network,
            "C1.3",
            "shares the host's network namespace: the guest kernel has its own network stack and cannot join the host's",
        ),
    ];
    for (kind, id, message) in rules {
        if !has(kind) {
            finding(
                findings,
                id,
                Severity::Refuse,
                "linux.namespaces",
                message,
                "drop --pid/--ipc/--net host (hostPID, hostIPC, hostNetwork) or use runc for this container",
            );
        }
    }
    let cri_pod_member = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get("io.kubernetes.cri.container-type"))
        .map(String::as_str)
        == Some("container");
    for (index, ns) in namespaces.iter().enumerate() {
        let Some(path) = ns.path() else {
            continue;
        };
        // A network namespace made for the container (Docker's
        // /var/run/docker/netns/<id>, CNI's /var/run/netns/cni-...) is its
        // own network; anything named through another process is that
        // process's namespace.
        let joins_another = ns.typ() != LinuxNamespaceType::Network || path.starts_with("/proc");
        let (kind, path) = (namespace_name(ns.typ()), path.display());
        if joins_another && !cri_pod_member {
            finding(
                findings,
                "C1.5",
                Severity::Refuse,
                format!("linux.namespaces[{index}].path"),
                format!(
                    "joins the {kind} namespace of another process or container ({path}): a hull container runs behind its own kernel and cannot share a namespace with a host process or another container's VM"
                ),
                "drop --pid/--ipc/--network container:NAME (or the namespace path), or run both containers with runc",
            );
        }
    }
    if !has(LinuxNamespaceType::Uts) {
        finding(
            findings,
            "C1.4",
            Severity::Info,
            "linux.namespaces",
            "no UTS namespace: the hostname is the guest's, never the host's",
            "nothing to do",
        );
    }
}

/// A namespace's name as the spec writes it (`network`, `mount`, ...).
fn namespace_name(kind: LinuxNamespaceType) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| kind.to_string())
}

/// A normalised absolute path (`.` and `..` resolved lexically).
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(part) => out.push(part),
            _ => {}
        }
    }
    out
}

/// Whether bind-mounting `source` exposes `sensitive`: the same path, a
/// parent of it, or something inside it ("/" counts only as itself).
fn exposes(source: &Path, sensitive: &Path) -> bool {
    if sensitive == Path::new("/") {
        return source == sensitive;
    }
    source.starts_with(sensitive) || sensitive.starts_with(source)
}

/// containerd's CRI keeps each pod's hostname, hosts and resolv.conf files
/// and its /dev/shm under these directories and binds them into the pod.
fn is_cri_sandbox_file(source: &Path) -> bool {
    [
        "/run/containerd/io.containerd.grpc.v1.cri/sandboxes",
        "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes",
    ]
    .iter()
    .any(|dir| source.starts_with(dir) && source != Path::new(dir))
}

/// Docker (default data root) binds each container's own hostname, hosts
/// and resolv.conf files from `/var/lib/docker/containers/<id>/`, and a
/// named volume from `/var/lib/docker/volumes/<name>/_data`.
fn is_docker_container_file(source: &Path) -> bool {
    let parts: Vec<&str> = match source.strip_prefix("/var/lib/docker") {
        Ok(rest) => rest.iter().filter_map(|p| p.to_str()).collect(),
        Err(_) => return false,
    };
    matches!(
        parts.as_slice(),
        ["containers", id, "hostname" | "hosts" | "resolv.conf"] if !id.starts_with('.')
    ) || matches!(parts.as_slice(), ["volumes", name, "_data", ..] if !name.starts_with('.'))
}

/// The paths the policy checks for a bind source: as written (normalised)
/// and, where it exists, as the host resolves it (every symlink followed).
pub fn bind_source_paths(source: &Path) -> (PathBuf, Option<PathBuf>) {
    let written = normalise(source);
    let real = std::fs::canonicalize(&written)
        .ok()
        .filter(|real| *real != written);
    (written, real)
}

/// The host path a spec mount binds from, if it is a bind mount of a host
/// path (`type: bind`, or a `bind`/`rbind` option, with an absolute source).
pub fn host_bind_source(mount: &Mount) -> Option<&Path> {
    let is_bind = mount.typ().as_deref() == Some("bind")
        || mount
            .options()
            .iter()
            .flatten()
            .any(|o| matches!(o.as_str(), "bind" | "rbind"));
    let source = mount.source().as_deref()?;
    (is_bind && source.is_absolute()).then_some(source)
}

fn mounts(spec: &Spec, config: &PolicyConfig, findings: &mut Vec<Finding>) {
    let Some(mounts) = spec.mounts() else {
        return;
    };
    for (index, mount) in mounts.iter().enumerate() {
        let Some(source) = host_bind_source(mount) else {
            continue;
        };
        let (written, real) = bind_source_paths(source);
        // What the copy will read is the real path: that is what counts
        // for the exceptions; both count for the sensitive paths.
        let checked = real.clone().unwrap_or_else(|| written.clone());
        if is_cri_sandbox_file(&checked) || is_docker_container_file(&checked) {
            continue;
        }
        let allowed = config.allowed_host_paths.iter().any(|p| {
            let (p_written, p_real) = bind_source_paths(p);
            p_real.unwrap_or(p_written) == checked
        });
        let Some(sensitive) = SENSITIVE_HOST_PATHS.iter().map(Path::new).find(|s| {
            [Some(&written), real.as_ref()]
                .into_iter()
                .flatten()
                .any(|path| exposes(path, s))
        }) else {
            continue;
        };
        let source = match &real {
            Some(real) => format!("{} (resolves to {})", written.display(), real.display()),
            None => written.display().to_string(),
        };
        let field = format!("mounts[{index}].source");
        if allowed {
            finding(
                findings,
                "C2.2",
                Severity::Warn,
                field,
                format!(
                    "bind-mounts {source} (sensitive: {}), allowed by the config",
                    sensitive.display()
                ),
                "remove the path from policy.allowed_host_paths unless it is needed",
            );
        } else {
            finding(
                findings,
                "C2.1",
                Severity::Refuse,
                field,
                format!(
                    "bind-mounts the sensitive host path {source} (it exposes {})",
                    sensitive.display()
                ),
                "do not mount it, or allow this exact path in hull's config (policy.allowed_host_paths)",
            );
        }
    }
}

fn devices(spec: &Spec, findings: &mut Vec<Finding>) {
    let count = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref())
        .map_or(0, Vec::len);
    if count > 0 {
        finding(
            findings,
            "C3.1",
            Severity::Info,
            "linux.devices",
            format!("{count} host device(s) requested: hull never passes host devices; the guest gets its own standard nodes"),
            "nothing to do: devices are dropped",
        );
    }
}

/// A capability's name as the spec writes it (`CAP_SYS_ADMIN`).
fn capability_name(cap: &Capability) -> String {
    serde_json::to_value(cap)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("CAP_{cap}"))
}

/// The bounding set's names, sorted.
fn bounding_set(spec: &Spec) -> Vec<String> {
    let mut names: Vec<String> = spec
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
        .and_then(|c| c.bounding().as_ref())
        .into_iter()
        .flatten()
        .map(capability_name)
        .collect();
    names.sort();
    names
}

fn privileges(spec: &Spec, findings: &mut Vec<Finding>) {
    let bounding = bounding_set(spec);
    let added: Vec<&String> = bounding
        .iter()
        .filter(|c| !DEFAULT_CAPABILITIES.contains(&c.as_str()))
        .collect();
    let linux = spec.linux().as_ref();
    let no_seccomp = linux.and_then(|l| l.seccomp().as_ref()).is_none();
    let privileged = bounding.iter().any(|c| c == "CAP_SYS_ADMIN")
        && no_seccomp
        && linux
            .and_then(|l| l.masked_paths().as_ref())
            .is_none_or(Vec::is_empty);
    if privileged {
        finding(
            findings,
            "C4.1",
            Severity::Warn,
            "process.capabilities",
            "privileged: every capability, no seccomp, no masked paths (inside the guest only; no host devices)",
            "drop --privileged; add only the capabilities the workload needs",
        );
    } else if !added.is_empty() {
        let names: Vec<&str> = added.iter().map(|c| c.as_str()).collect();
        finding(
            findings,
            "C4.2",
            Severity::Warn,
            "process.capabilities.bounding",
            format!("capabilities beyond the default set: {}", names.join(", ")),
            "drop the --cap-add entries the workload does not need",
        );
    }
    if no_seccomp && !privileged {
        finding(
            findings,
            "C4.3",
            Severity::Warn,
            "linux.seccomp",
            "no seccomp profile",
            "run with the default seccomp profile (do not pass seccomp=unconfined)",
        );
    }
    let process = spec.process().as_ref();
    if process.and_then(|p| p.no_new_privileges()) != Some(true) {
        finding(
            findings,
            "C4.4",
            Severity::Warn,
            "process.noNewPrivileges",
            "no_new_privs is off: setuid binaries can gain privileges",
            "run with --security-opt no-new-privileges",
        );
    }
    if process.map_or(0, |p| p.user().uid()) == 0 {
        finding(
            findings,
            "C4.5",
            Severity::Warn,
            "process.user.uid",
            "runs as root (inside the guest)",
            "run as an unprivileged user (--user)",
        );
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) != Some(true) {
        finding(
            findings,
            "C4.6",
            Severity::Info,
            "root.readonly",
            "the root filesystem is writable",
            "use --read-only with tmpfs mounts where writes are needed",
        );
    }
}

fn limits(spec: &Spec, findings: &mut Vec<Finding>) {
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let memory = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit());
    let pids = resources.and_then(|r| r.pids().as_ref()).map(|p| p.limit());
    if memory.filter(|v| *v > 0).is_none() {
        finding(
            findings,
            "C5.1",
            Severity::Warn,
            "linux.resources.memory.limit",
            "no memory limit: the VM gets the configured default size",
            "set a memory limit (-m / --memory-limit)",
        );
    }
    if pids.filter(|v| *v > 0).is_none() {
        finding(
            findings,
            "C5.2",
            Severity::Warn,
            "linux.resources.pids.limit",
            "no pids limit: a fork bomb can exhaust the guest",
            "set a pids limit (--pids-limit)",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// A spec as `ctr run` writes it, cut to what the rules read.
    fn base() -> Value {
        json!({
            "process": {"user": {"uid": 1000, "gid": 1000}, "noNewPrivileges": true, "cwd": "/",
                        "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL"]}},
            "root": {"path": "rootfs", "readonly": true},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/docker/containers/x/hosts", "options": ["rbind", "ro"]}
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
                "resources": {"memory": {"limit": 268435456}, "pids": {"limit": 64}},
                "seccomp": {"defaultAction": "SCMP_ACT_ERRNO"},
                "maskedPaths": ["/proc/kcore"]
            }
        })
    }

    fn typed(spec: &Value) -> Spec {
        crate::spec::parse(&serde_json::to_vec(spec).unwrap()).unwrap()
    }

    fn ids(spec: &Value, config: &PolicyConfig) -> Vec<&'static str> {
        review(&typed(spec), config).iter().map(|f| f.id).collect()
    }

    fn enforce(spec: &Value, config: &PolicyConfig) -> Result<(), PolicyError> {
        super::enforce(&typed(spec), config)
    }

    #[test]
    fn every_finding_has_a_rule() {
        let mut spec = base();
        spec["linux"] = json!({"devices": [{"path": "/dev/sda", "type": "b"}]});
        spec["process"] = json!({"cwd": "/", "user": {"uid": 0, "gid": 0},
                                 "capabilities": {"bounding": ["CAP_SYS_ADMIN"]}});
        spec["mounts"] = json!([{"destination": "/x", "type": "bind", "source": "/etc"}]);
        for f in review(&typed(&spec), &PolicyConfig::default()) {
            assert!(
                RULES.iter().any(|(id, _)| *id == f.id),
                "{} has no rule",
                f.id
            );
        }
    }

    #[test]
    fn a_careful_spec_passes_without_findings() {
        let config = PolicyConfig::default();
        assert_eq!(ids(&base(), &config), Vec::<&str>::new());
        enforce(&base(), &config).unwrap();
    }

    #[test]
    fn joining_another_containers_namespace_is_refused() {
        for (kind, path) in [
            ("network", "/proc/4242/ns/net"),
            ("pid", "/proc/4242/ns/pid"),
            ("ipc", "/proc/1/ns/ipc"),
            ("uts", "/run/some/uts"),
        ] {
            let mut spec = base();
            let namespaces = spec["linux"]["namespaces"].as_array_mut().unwrap();
            let ns = namespaces.iter_mut().find(|ns| ns["type"] == kind).unwrap();
            ns["path"] = json!(path);
            let err = enforce(&spec, &PolicyConfig::default()).unwrap_err();
            assert_eq!(err.id, "C1.5", "{kind} {path}");
            assert!(err.field.ends_with("].path"), "{}", err.field);
            assert!(err.message.contains(path), "{err}");
        }
    }

    #[test]
    fn host_namespaces_are_refused_with_the_reason() {
        for (kind, id) in [("pid", "C1.1"), ("ipc", "C1.2"), ("network", "C1.3")] {
            let mut spec = base();
            let namespaces = spec["linux"]["namespaces"].as_array_mut().unwrap();
            namespaces.retain(|ns| ns["type"] != kind);
            let err = enforce(&spec, &PolicyConfig::default()).unwrap_err();
            assert_eq!(err.id, id);
            assert_eq!(err.field, "linux.namespaces");
            assert!(err.to_string().contains("host's"), "{err}");
        }
    }

    #[test]
    fn a_network_namespace_path_is_the_containers_own_network() {
        let mut spec = base();
        spec["linux"]["namespaces"][4] = json!({"type": "network", "path": "/var/run/netns/cni-1"});
        enforce(&spec, &PolicyConfig::default()).unwrap();
    }

    #[test]
    fn sensitive_bind_mounts_are_refused_unless_allowed() {
        for source in [
            "/",
            "/etc",
            "/etc/shadow",
            "/var/run/docker.sock",
            "/var/run",
            "/run/containerd/containerd.sock",
            "/proc/1/root",
            "/dev/sda",
            "/sys/../etc",
            "/var/run/containerd",
            "/var/run/hull/sandboxes",
            "/var/lib/docker",
            "/var/lib/kubelet/pods",
            "/root/.ssh",
            "/home/user/data",
        ] {
            let mut spec = base();
            spec["mounts"][1]["source"] = json!(source);
            let err = enforce(&spec, &PolicyConfig::default()).unwrap_err();
            assert_eq!(
                (err.id, err.field.as_str()),
                ("C2.1", "mounts[1].source"),
                "{source}"
            );
            let allowed = PolicyConfig {
                allowed_host_paths: vec![source.into()],
            };
            enforce(&spec, &allowed).unwrap();
            assert!(ids(&spec, &allowed).contains(&"C2.2"), "{source}");
        }
        for fine in [
            "/var/lib/docker/containers/x/hosts",
            "/var/lib/docker/containers/x/resolv.conf",
            "/var/lib/docker/volumes/data/_data",
            "/var/lib/docker/volumes/data/_data/sub",
            "/srv/data",
            "/tmp/x",
        ] {
            let mut spec = base();
            spec["mounts"][1]["source"] = json!(fine);
            enforce(&spec, &PolicyConfig::default()).unwrap();
        }
        // Not a bind mount: "proc" as a source is a file system, not a path.
        let mut spec = base();
        spec["mounts"][1] = json!({"destination": "/sys", "type": "sysfs", "source": "/sys"});
        enforce(&spec, &PolicyConfig::default()).unwrap();
    }

    #[test]
    fn a_symlink_to_a_sensitive_path_is_refused_by_its_real_path() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink("/etc/shadow", &link).unwrap();
        let docker_like = dir.path().join("hosts");
        std::os::unix::fs::symlink("/etc/hosts", &docker_like).unwrap();
        for source in [&link, &docker_like] {
            let mut spec = base();
            spec["mounts"][1]["source"] = json!(source);
            let err = enforce(&spec, &PolicyConfig::default()).unwrap_err();
            assert_eq!(err.id, "C2.1", "{source:?}");
            assert!(
                err.message
                    .contains(&format!("{} (resolves to /etc/", source.display())),
                "{err}"
            );
        }
        // Docker's and a volume's paths count by where they lead.
        let escape = dir.path().join("escape");
        std::os::unix::fs::symlink("/etc", &escape).unwrap();
        let mut spec = base();
        spec["mounts"][1]["source"] = json!(escape.join("cron.d"));
        assert_eq!(
            enforce(&spec, &PolicyConfig::default()).unwrap_err().id,
            "C2.1"
        );
        // Allowing the real path allows the link too.
        let allowed = PolicyConfig {
            allowed_host_paths: vec!["/etc/shadow".into()],
        };
        let mut spec = base();
        spec["mounts"][1]["source"] = json!(link);
        enforce(&spec, &allowed).unwrap();
    }

    #[test]
    fn docker_files_count_by_their_place() {
        assert!(is_docker_container_file(Path::new(
            "/var/lib/docker/containers/abc/hosts"
        )));
        for not in [
            "/var/lib/docker/containers/abc",
            "/var/lib/docker/containers/abc/config.v2.json",
            "/var/lib/docker/containers/../image/hosts",
            "/var/lib/docker/volumes/x",
            "/var/lib/docker/overlay2/x/merged",
        ] {
            assert!(!is_docker_container_file(Path::new(not)), "{not}");
        }
    }

    #[test]
    fn cri_pod_files_under_the_containerd_state_are_fine() {
        let mut spec = base();
        spec["mounts"][1]["source"] =
            json!("/run/containerd/io.containerd.grpc.v1.cri/sandboxes/abc/shm");
        enforce(&spec, &PolicyConfig::default()).unwrap();
    }

    #[test]
    fn risky_settings_are_warned_about() {
        let mut spec = base();
        spec["process"]["user"]["uid"] = json!(0);
        spec["process"]["noNewPrivileges"] = json!(false);
        spec["process"]["capabilities"]["bounding"] = json!(["CAP_CHOWN", "CAP_NET_ADMIN"]);
        spec["root"]["readonly"] = json!(false);
        spec["linux"]["resources"] = json!({});
        spec["linux"].as_object_mut().unwrap().remove("seccomp");
        spec["linux"]["devices"] = json!([{"path": "/dev/sda", "type": "b"}]);
        let found = ids(&spec, &PolicyConfig::default());
        for id in [
            "C3.1", "C4.2", "C4.3", "C4.4", "C4.5", "C4.6", "C5.1", "C5.2",
        ] {
            assert!(found.contains(&id), "{id} missing from {found:?}");
        }
        enforce(&spec, &PolicyConfig::default()).unwrap();

        spec["process"]["capabilities"]["bounding"] = json!(["CAP_SYS_ADMIN", "CAP_SYS_MODULE"]);
        spec["linux"]["maskedPaths"] = json!([]);
        let found = ids(&spec, &PolicyConfig::default());
        assert!(
            found.contains(&"C4.1") && !found.contains(&"C4.3"),
            "{found:?}"
        );
    }
}
