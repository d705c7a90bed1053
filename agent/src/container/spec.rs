//! The OCI runtime spec as the host sends it, checked and made fit for the
//! guest before youki's libcontainer sees it.
//!
//! Every refusal names the field it is about (`process.args: missing`,
//! `linux.namespaces[2].type: unknown variant ...`), so the host can show
//! the user what to fix; the JSON is parsed with `serde_path_to_error` for
//! that. What the host sends that means nothing in the guest is replaced:
//! `root.path` (the agent mounts the rootfs itself), `linux.cgroupsPath`
//! (a host cgroup; the guest's is `/hull/<id>`) and the hooks that run in
//! the runtime's namespaces (see [`guest_hooks`]). Every container gets a
//! cgroup namespace of its own and its cgroup at `/sys/fs/cgroup` (see
//! [`own_cgroup`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Hooks, Linux, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResources, Mount, MountBuilder,
    Process, Root, RootBuilder, Spec,
};
use serde::de::DeserializeOwned;
use thiserror::Error;

/// The longest container or exec id taken: it becomes a directory and a
/// cgroup name.
pub const MAX_ID_LEN: usize = 64;

/// A spec (or process, or resources) the agent will not run.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    /// The JSON path of the field, as in the OCI spec (`process.user.uid`).
    pub field: String,
    pub reason: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        SpecError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Parses JSON into `T`, naming the field a type error is in, under `prefix`
/// (`""` for a whole spec, `"process"` for an exec's process).
fn parse_json<T: DeserializeOwned>(json: &[u8], prefix: &str) -> Result<T, SpecError> {
    let mut de = serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let field = match (prefix.is_empty(), path.as_str()) {
            (true, "." | "?") => "spec".to_owned(),
            (true, _) => path,
            (false, "." | "?") => prefix.to_owned(),
            (false, _) => format!("{prefix}.{path}"),
        };
        SpecError::new(field, err.into_inner().to_string())
    })
}

/// A container or exec id: a directory name and a cgroup name in the guest.
pub fn check_id(field: &str, id: &str) -> Result<(), SpecError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(SpecError::new(
            field,
            format!("{id:?} is not a valid id (1 to {MAX_ID_LEN} of A-Z a-z 0-9 - _ ., not starting with '.')"),
        ))
    }
}

/// What the agent needs to know of a checked spec besides the spec itself.
#[derive(Debug, Clone)]
pub struct CheckedSpec {
    pub spec: Spec,
    pub terminal: bool,
    /// The container has a PID namespace of its own, so the kernel kills
    /// its other processes when its init dies.
    pub own_pid_namespace: bool,
    /// `process.user.username`, still to be looked up in the rootfs.
    pub username: Option<String>,
}

/// Parses and checks a container's spec.
pub fn parse_spec(json: &[u8]) -> Result<CheckedSpec, SpecError> {
    let spec: Spec = parse_json(json, "")?;
    if !spec.version().starts_with("1.") {
        return Err(SpecError::new(
            "ociVersion",
            format!("{:?} is not supported (1.x is)", spec.version()),
        ));
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| SpecError::new("process", "missing"))?;
    check_process(process, "process")?;

    let mut own_pid_namespace = false;
    let mut seen = HashSet::new();
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref());
    for (index, namespace) in namespaces.into_iter().flatten().enumerate() {
        let field = format!("linux.namespaces[{index}]");
        let kind = namespace.typ();
        if !seen.insert(kind) {
            return Err(SpecError::new(
                format!("{field}.type"),
                format!("namespace type {kind} given twice"),
            ));
        }
        match kind {
            // The guest has no systemd, and libcontainer manages the
            // cgroups of a user-namespaced container through systemd only.
            LinuxNamespaceType::User | LinuxNamespaceType::Time => {
                return Err(SpecError::new(
                    format!("{field}.type"),
                    format!("{kind} namespaces are not supported in the guest"),
                ))
            }
            LinuxNamespaceType::Pid => own_pid_namespace |= namespace.path().is_none(),
            _ => {}
        }
        if let Some(path) = namespace.path() {
            if !path.is_absolute() {
                return Err(SpecError::new(
                    format!("{field}.path"),
                    "must be an absolute path",
                ));
            }
        }
    }

    for (index, mount) in spec.mounts().iter().flatten().enumerate() {
        if !mount.destination().is_absolute() {
            return Err(SpecError::new(
                format!("mounts[{index}].destination"),
                format!("{:?} is not an absolute path", mount.destination()),
            ));
        }
    }

    let terminal = process.terminal().unwrap_or(false);
    let username = process.user().username().clone();
    Ok(CheckedSpec {
        spec,
        terminal,
        own_pid_namespace,
        username,
    })
}

/// Parses and checks an exec'd process (the `process` of a spec).
pub fn parse_process(json: &[u8]) -> Result<Process, SpecError> {
    let process: Process = parse_json(json, "process")?;
    check_process(&process, "process")?;
    if process.user().username().is_some() {
        return Err(SpecError::new(
            "process.user.username",
            "not supported for exec; give process.user.uid and gid",
        ));
    }
    Ok(process)
}

/// Parses `linux.resources` for an update.
pub fn parse_resources(json: &[u8]) -> Result<LinuxResources, SpecError> {
    parse_json(json, "resources")
}

fn check_process(process: &Process, field: &str) -> Result<(), SpecError> {
    match process.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => {}
        Some(_) => return Err(SpecError::new(format!("{field}.args"), "empty")),
        None => return Err(SpecError::new(format!("{field}.args"), "missing")),
    }
    if !process.cwd().is_absolute() {
        return Err(SpecError::new(
            format!("{field}.cwd"),
            format!("{:?} is not an absolute path", process.cwd()),
        ));
    }
    for (index, entry) in process.env().iter().flatten().enumerate() {
        if !entry.contains('=') {
            return Err(SpecError::new(
                format!("{field}.env[{index}]"),
                format!("{entry:?} is not NAME=VALUE"),
            ));
        }
    }
    Ok(())
}

/// The hooks that belong in the guest: `createContainer` and
/// `startContainer` run in the container's namespaces, so their paths name
/// programs of the container's rootfs. `prestart`, `createRuntime`,
/// `poststart` and `poststop` run in the runtime's namespaces: for hull that
/// is the host (Docker's `libnetwork-setkey`, CNI), where the shim runs
/// them; their programs do not exist in the guest.
fn guest_hooks(hooks: Option<&Hooks>) -> Option<Hooks> {
    let hooks = hooks?;
    let mut kept = Hooks::default();
    kept.set_create_container(hooks.create_container().clone());
    kept.set_start_container(hooks.start_container().clone());
    Some(kept)
}

/// The cgroup of container `id` in the guest's cgroup2 tree.
pub fn cgroup_path(id: &str) -> PathBuf {
    Path::new("/hull").join(id)
}

/// Where a container sees its cgroup.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// Gives the container a private cgroup namespace and its own cgroup at
/// `/sys/fs/cgroup`, whatever the host asked for.
///
/// The guest's hierarchy is cgroup v2 and hull's own (the agent and every
/// container of the sandbox live in it), so a container must not see it:
/// runc on a cgroup v2 host does the same by default (Docker's
/// `--cgroupns private`), showing `0::/` in `/proc/self/cgroup` and the
/// container's own limit files (`pids.max`, `memory.max`) at
/// `/sys/fs/cgroup`. A host on cgroup v1 (Docker then asks for no cgroup
/// namespace) gets the same, since the guest is v2 whatever the host runs.
/// libcontainer unshares the namespace after it has put the process in its
/// cgroup and before it mounts, so the cgroup2 mount's root is the
/// container's cgroup. The spec's own `/sys/fs/cgroup` mount keeps its
/// options (Docker and containerd ask for `ro` unless privileged); without
/// one the mount is read-only. A cgroup namespace the spec joins by path (a
/// guest namespace) is kept.
fn own_cgroup(linux: &mut Linux, mounts: &mut Vec<Mount>) -> Result<(), SpecError> {
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    if !namespaces
        .iter()
        .any(|ns| ns.typ() == LinuxNamespaceType::Cgroup)
    {
        let cgroup = LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Cgroup)
            .build()
            .map_err(|err| SpecError::new("linux.namespaces", err.to_string()))?;
        namespaces.push(cgroup);
    }
    linux.set_namespaces(Some(namespaces));

    let target = Path::new(CGROUP_MOUNT);
    // A cgroup mount anywhere else would show the guest's root hierarchy.
    mounts.retain(|m| {
        !matches!(m.typ().as_deref(), Some("cgroup" | "cgroup2")) || m.destination() == target
    });
    if !mounts.iter().any(|m| m.destination() == target) {
        let mount = MountBuilder::default()
            .destination(target)
            .typ("cgroup")
            .source("cgroup")
            .options(["nosuid", "noexec", "nodev", "relatime", "ro"].map(String::from))
            .build()
            .map_err(|err| SpecError::new("mounts", err.to_string()))?;
        mounts.push(mount);
    }
    Ok(())
}

/// Makes the relative sources of bind mounts (the host's bind mounts,
/// shared with the guest through virtio-fs) paths under `binds`,
/// where the share is mounted. Without a share a relative bind source
/// names nothing.
fn locate_binds(mounts: &mut [Mount], binds: Option<&Path>) -> Result<(), SpecError> {
    for (index, mount) in mounts.iter_mut().enumerate() {
        let is_bind = mount.typ().as_deref() == Some("bind")
            || mount
                .options()
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind");
        let Some(source) = mount
            .source()
            .clone()
            .filter(|s| is_bind && s.is_relative())
        else {
            continue;
        };
        let field = format!("mounts[{index}].source");
        let Some(binds) = binds else {
            return Err(SpecError::new(
                field,
                format!("{source:?} is relative, and the request has no shared directory"),
            ));
        };
        if !source
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(SpecError::new(
                field,
                format!("{source:?} is not a plain path in the shared directory"),
            ));
        }
        mount.set_source(Some(binds.join(source)));
    }
    Ok(())
}

/// Rewrites `spec` for the guest: the rootfs the agent mounted, the guest
/// cgroup, the user resolved from the rootfs, the guest's hooks only, the
/// host's bind mounts from the shared directory at `binds`.
pub fn adapt_for_guest(
    checked: &mut CheckedSpec,
    id: &str,
    rootfs: &Path,
    binds: Option<&Path>,
) -> Result<(), SpecError> {
    let spec = &mut checked.spec;
    let readonly = spec.root().as_ref().and_then(Root::readonly);
    let root = RootBuilder::default()
        .path(rootfs)
        .readonly(readonly.unwrap_or(false))
        .build()
        .map_err(|err| SpecError::new("root", err.to_string()))?;
    spec.set_root(Some(root));

    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_cgroups_path(Some(cgroup_path(id)));
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    own_cgroup(&mut linux, &mut mounts)?;
    locate_binds(&mut mounts, binds)?;
    spec.set_linux(Some(linux));
    spec.set_mounts(Some(mounts));

    let hooks = guest_hooks(spec.hooks().as_ref());
    spec.set_hooks(hooks);

    if let Some(name) = checked.username.clone() {
        let (uid, gid) = lookup_user(rootfs, &name)?;
        let mut process = spec.process().clone().unwrap_or_default();
        let mut user = process.user().clone();
        user.set_uid(uid);
        user.set_gid(gid);
        user.set_username(None);
        process.set_user(user);
        spec.set_process(Some(process));
    }
    Ok(())
}

/// `name`'s uid and gid in the rootfs's `/etc/passwd`.
fn lookup_user(rootfs: &Path, name: &str) -> Result<(u32, u32), SpecError> {
    let field = "process.user.username";
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).map_err(|err| {
        SpecError::new(
            field,
            format!("no such user {name:?} (no /etc/passwd: {err})"),
        )
    })?;
    find_user(&passwd, name).ok_or_else(|| SpecError::new(field, format!("no such user {name:?}")))
}

fn find_user(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_json(patch: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "args": ["/bin/true"],
                "cwd": "/",
                "env": ["PATH=/bin"],
                "user": {"uid": 0, "gid": 0}
            },
            "root": {"path": "rootfs"},
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}],
                "seccomp": {
                    "defaultAction": "SCMP_ACT_ALLOW",
                    "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO"}]
                }
            }
        });
        patch(&mut spec);
        serde_json::to_vec(&spec).unwrap()
    }

    fn refusal(json: &[u8]) -> String {
        parse_spec(json).unwrap_err().to_string()
    }

    #[test]
    fn a_good_spec_passes() {
        let checked = parse_spec(&spec_json(|_| {})).unwrap();
        assert!(checked.own_pid_namespace);
        assert!(!checked.terminal);
        assert_eq!(checked.username, None);
    }

    #[test]
    fn unknown_namespace_type_names_the_field() {
        let message = refusal(&spec_json(|s| {
            s["linux"]["namespaces"][2]["type"] = "foo".into();
        }));
        assert!(
            message.starts_with("linux.namespaces[2].type: unknown variant `foo`"),
            "{message}"
        );
    }

    #[test]
    fn missing_or_empty_args() {
        let message = refusal(&spec_json(|s| {
            s["process"].as_object_mut().unwrap().remove("args");
        }));
        assert_eq!(message, "process.args: missing");
        let message = refusal(&spec_json(|s| s["process"]["args"] = serde_json::json!([])));
        assert_eq!(message, "process.args: empty");
    }

    #[test]
    fn bad_seccomp_action_names_the_field() {
        let message = refusal(&spec_json(|s| {
            s["linux"]["seccomp"]["syscalls"][0]["action"] = "SCMP_ACT_BOGUS".into();
        }));
        assert!(
            message.starts_with("linux.seccomp.syscalls[0].action: unknown variant"),
            "{message}"
        );
    }

    #[test]
    fn user_namespaces_and_duplicates_are_refused() {
        let message = refusal(&spec_json(|s| {
            s["linux"]["namespaces"][1]["type"] = "user".into();
        }));
        assert_eq!(
            message,
            "linux.namespaces[1].type: user namespaces are not supported in the guest"
        );
        let message = refusal(&spec_json(|s| {
            s["linux"]["namespaces"][1]["type"] = "pid".into();
        }));
        assert_eq!(
            message,
            "linux.namespaces[1].type: namespace type pid given twice"
        );
    }

    #[test]
    fn relative_cwd_and_missing_process() {
        let message = refusal(&spec_json(|s| s["process"]["cwd"] = "tmp".into()));
        assert_eq!(message, "process.cwd: \"tmp\" is not an absolute path");
        let message = refusal(&spec_json(|s| {
            s.as_object_mut().unwrap().remove("process");
        }));
        assert_eq!(message, "process: missing");
        assert_eq!(
            refusal(b"{"),
            "spec: EOF while parsing an object at line 1 column 1"
        );
    }

    #[test]
    fn exec_process_fields_are_prefixed() {
        let err = parse_process(br#"{"cwd": "/", "user": {"uid": "x", "gid": 0}}"#).unwrap_err();
        assert_eq!(err.field, "process.user.uid", "{err}");
        let err = parse_process(br#"{"cwd": "/", "user": {"uid": 0, "gid": 0}}"#).unwrap_err();
        assert_eq!(err.to_string(), "process.args: missing");
    }

    #[test]
    fn adapting_replaces_root_cgroup_and_host_hooks() {
        let mut checked = parse_spec(&spec_json(|s| {
            s["linux"]["cgroupsPath"] = "/host/slice".into();
            s["root"]["readonly"] = true.into();
            s["hooks"] = serde_json::json!({
                "prestart": [{"path": "/usr/bin/host-hook"}],
                "startContainer": [{"path": "/bin/in-container"}]
            });
        }))
        .unwrap();
        adapt_for_guest(&mut checked, "c1", Path::new("/run/hull/c1/rootfs"), None).unwrap();
        let spec = &checked.spec;
        let root = spec.root().as_ref().unwrap();
        assert_eq!(root.path(), Path::new("/run/hull/c1/rootfs"));
        assert_eq!(root.readonly(), Some(true));
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/hull/c1")));
        let hooks = spec.hooks().as_ref().unwrap();
        assert!(hooks.prestart().is_none());
        assert_eq!(hooks.start_container().as_ref().unwrap().len(), 1);
    }

    #[test]
    fn every_container_gets_its_own_cgroup_namespace_and_mount() {
        // No cgroup namespace and no cgroup mount: both are added, the
        // mount read-only.
        let mut checked = parse_spec(&spec_json(|_| {})).unwrap();
        adapt_for_guest(&mut checked, "c1", Path::new("/r"), None).unwrap();
        let spec = &checked.spec;
        let namespaces = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        let cgroup: Vec<_> = namespaces
            .iter()
            .filter(|ns| ns.typ() == LinuxNamespaceType::Cgroup)
            .collect();
        assert_eq!(cgroup.len(), 1);
        assert_eq!(cgroup[0].path(), &None);
        assert_eq!(namespaces.len(), 4, "the others are kept");
        let mounts = spec.mounts().clone().unwrap();
        let mount = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/sys/fs/cgroup"))
            .unwrap();
        assert_eq!(mount.typ().as_deref(), Some("cgroup"));
        assert!(mount.options().as_ref().unwrap().contains(&"ro".to_owned()));

        // The spec's own mount keeps its options (a privileged container's
        // rw); one namespace, not two; a cgroup mount elsewhere goes.
        let mut checked = parse_spec(&spec_json(|s| {
            s["linux"]["namespaces"][2]["type"] = "cgroup".into();
            s["mounts"] = serde_json::json!([
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                 "options": ["nosuid", "rw"]},
                {"destination": "/mnt/cg", "type": "cgroup2", "source": "cgroup"}
            ]);
        }))
        .unwrap();
        adapt_for_guest(&mut checked, "c1", Path::new("/r"), None).unwrap();
        let spec = &checked.spec;
        let namespaces = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert_eq!(namespaces.len(), 3);
        let mounts = spec.mounts().clone().unwrap();
        let destinations: Vec<_> = mounts.iter().map(|m| m.destination().clone()).collect();
        assert_eq!(
            destinations,
            [PathBuf::from("/proc"), PathBuf::from("/sys/fs/cgroup")]
        );
        assert_eq!(
            mounts[1].options().as_deref(),
            Some(&["nosuid".to_owned(), "rw".to_owned()][..])
        );
    }

    #[test]
    fn relative_bind_sources_come_from_the_binds_disk() {
        let json = spec_json(|s| {
            s["mounts"] = serde_json::json!([
                {"destination": "/etc/hosts", "type": "bind", "source": "0", "options": ["rbind", "ro"]},
                {"destination": "/data", "source": "1", "options": ["bind"]},
                {"destination": "/guest", "type": "bind", "source": "/run/x", "options": ["bind"]}
            ]);
        });
        let mut checked = parse_spec(&json).unwrap();
        adapt_for_guest(
            &mut checked,
            "c1",
            Path::new("/r"),
            Some(Path::new("/c/binds")),
        )
        .unwrap();
        let sources: Vec<_> = checked
            .spec
            .mounts()
            .iter()
            .flatten()
            .filter_map(|m| m.source().clone())
            .collect();
        assert_eq!(
            sources[..3],
            ["/c/binds/0", "/c/binds/1", "/run/x"].map(PathBuf::from)
        );

        let mut checked = parse_spec(&json).unwrap();
        let err = adapt_for_guest(&mut checked, "c1", Path::new("/r"), None).unwrap_err();
        assert_eq!(err.field, "mounts[0].source");
        let escape = spec_json(|s| {
            s["mounts"] = serde_json::json!([
                {"destination": "/x", "type": "bind", "source": "../../etc", "options": ["bind"]}
            ]);
        });
        let mut checked = parse_spec(&escape).unwrap();
        let err = adapt_for_guest(&mut checked, "c1", Path::new("/r"), Some(Path::new("/b")))
            .unwrap_err();
        assert!(err.reason.contains("not a plain path"), "{err}");
    }

    #[test]
    fn users_are_found_in_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1001::/home/user:/bin/sh\n";
        assert_eq!(find_user(passwd, "user"), Some((1000, 1001)));
        assert_eq!(find_user(passwd, "nobody"), None);
    }

    #[test]
    fn ids() {
        check_id("container_id", "abc-1_2.3").unwrap();
        for bad in ["", ".x", "a/b", &"x".repeat(65)] {
            let err = check_id("container_id", bad).unwrap_err();
            assert_eq!(err.field, "container_id");
        }
    }
}
