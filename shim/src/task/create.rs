//! Creating a container, step by step: the config, the spec and its
//! policy, the VM's size, the rootfs disk, the sandbox, the container in
//! the guest. A failure at any step undoes the steps before it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use containerd_shim::protos::api::CreateTaskRequest;
use containerd_shim::protos::protobuf::MessageField;
use hull_protocol::agent_api::agent::{CreateContainerRequest, Storage};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use super::process::Process;
use super::sandbox::{Sandbox, RPC_TIMEOUT};
use super::{stdio_options, Container};
use crate::config::{config_path_from_options, ShimConfig};
use crate::error::ShimError;
use crate::policy;
use crate::rootfs::{self, RootfsMount};
use crate::sandbox::vmm_process::{Drive, JailSpec, VmmSpec};
use crate::stdio::StdioPaths;

/// Where sandboxes keep their sockets: short, for the 107-byte socket path
/// limit (containerd's bundle paths with 64-character ids are too long).
pub const SANDBOX_STATE_BASE: &str = "/run/hull/sandboxes";
/// The serial of the rootfs disk, by which the agent finds it.
pub const ROOTFS_SERIAL: &str = "rootfs";
/// The serial of the disk holding the host bind mounts' content.
pub const BINDS_SERIAL: &str = "binds";
/// The VMM's own memory beside guest RAM, for its host cgroup.
pub const VMM_OVERHEAD_BYTES: u64 = 64 << 20;

/// The sandbox state directory of container `id` in `namespace`.
pub fn state_dir_for(namespace: &str, id: &str) -> PathBuf {
    let digest = Sha256::digest(format!("{namespace}/{id}").as_bytes());
    let name: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Path::new(SANDBOX_STATE_BASE).join(name)
}

/// The rootfs disk image of a bundle.
pub fn image_for(bundle: &Path) -> PathBuf {
    bundle.join("rootfs.img")
}

/// The disk the shim builds from the host bind mounts' content.
pub fn binds_image_for(bundle: &Path) -> PathBuf {
    bundle.join("binds.img")
}

/// The files a sandbox's create may leave in its bundle.
pub fn bundle_files(bundle: &Path) -> [PathBuf; 2] {
    [image_for(bundle), binds_image_for(bundle)]
}

/// The host cgroup id (`hull/<id>`) of a sandbox: its state directory's name.
fn jail_id(state_dir: &Path) -> String {
    state_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The host cgroup directories a sandbox's jailer may have made: `hull/<id>`
/// in each v1 controller, or in the unified hierarchy.
fn cgroup_dirs(state_dir: &Path) -> Vec<PathBuf> {
    let jail = jail_id(state_dir);
    if jail.is_empty() {
        return Vec::new();
    }
    ["memory", "pids", "cpu", ""]
        .iter()
        .map(|controller| {
            Path::new("/sys/fs/cgroup")
                .join(controller)
                .join("hull")
                .join(&jail)
        })
        .collect()
}

/// Removes what a container left on the host: its files, its state
/// directory, its host cgroups (the jailer's supervisor removes them when it
/// ends normally; not when it was killed).
pub fn remove_leftovers(state_dir: &Path, files: &[PathBuf]) {
    for file in files {
        let _ = std::fs::remove_file(file);
    }
    let _ = std::fs::remove_dir_all(state_dir);
    for dir in cgroup_dirs(state_dir) {
        let _ = std::fs::remove_dir(dir);
    }
}

/// SIGKILLs whatever still runs in a sandbox's host cgroups and waits up to
/// `limit` until they are empty, so that [`remove_leftovers`] can remove
/// them: a killed VMM stays in its cgroup until it has released its guest
/// memory and its VM, well after its command line is gone from /proc.
pub async fn empty_cgroups(state_dir: &Path, limit: Duration) {
    let procs: Vec<PathBuf> = cgroup_dirs(state_dir)
        .into_iter()
        .map(|dir| dir.join("cgroup.procs"))
        .collect();
    let members = || -> Vec<i32> {
        procs
            .iter()
            .filter_map(|file| std::fs::read_to_string(file).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|pid| pid.trim().parse().ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = members();
        if left.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            log::warn!("sandbox cgroups still hold {left:?} {limit:?} after SIGKILL");
            return;
        }
        for pid in left {
            // SAFETY: kill(2) on a pid listed in this sandbox's own cgroup,
            // which holds only its jailed VMM; at worst it is gone (ESRCH).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Mounts containerd's rootfs mounts on `rootfs_dir` (unless containerd
/// gave none: Docker mounted it already) and builds the ext4 `image` from
/// it, reading only; returns how long that took.
fn build_rootfs_image(
    mounts: &[RootfsMount],
    rootfs_dir: &Path,
    image: &Path,
) -> Result<Duration, ShimError> {
    std::fs::create_dir_all(rootfs_dir).map_err(|source| ShimError::Io {
        what: format!("creating {}", rootfs_dir.display()),
        source,
    })?;
    let built =
        rootfs::mount_all(mounts, rootfs_dir).and_then(|_| rootfs::build_image(rootfs_dir, image));
    if !mounts.is_empty() {
        rootfs::unmount(rootfs_dir);
    }
    Ok(built?)
}

/// Builds the binds disk `image` from the host bind mounts' content (see
/// [`rootfs::stage_binds`]), staged under `staging` and removed after.
fn build_binds_image(
    binds: &[rootfs::HostBind],
    staging: &Path,
    image: &Path,
) -> Result<Duration, ShimError> {
    let _ = std::fs::remove_dir_all(staging);
    let built =
        rootfs::stage_binds(binds, staging).and_then(|_| rootfs::build_image(staging, image));
    let _ = std::fs::remove_dir_all(staging);
    Ok(built?)
}

pub async fn create(req: &CreateTaskRequest) -> Result<Container, ShimError> {
    let config_path = req
        .options
        .as_ref()
        .and_then(|any| config_path_from_options(&any.type_url, &any.value))
        .or_else(|| std::env::var_os("HULL_CONFIG").map(PathBuf::from));
    let config = ShimConfig::load(config_path.as_deref())?;
    let bundle = PathBuf::from(&req.bundle);
    let spec_path = bundle.join("config.json");
    let text = std::fs::read_to_string(&spec_path).map_err(|source| ShimError::Spec {
        path: spec_path.clone(),
        source,
    })?;
    let mut spec: Value = serde_json::from_str(&text).map_err(|source| ShimError::SpecJson {
        path: spec_path.clone(),
        source,
    })?;
    policy::enforce(&spec, &config.policy()).map_err(ShimError::Policy)?;
    let host_binds = for_the_guest(&mut spec);
    let (wanted_vcpus, memory_mib) = vm_size(&spec, &config);
    let vcpus = vcpus_this_host_runs(wanted_vcpus, Path::new(NESTED_PVM_MODULE).is_dir());
    if vcpus != wanted_vcpus {
        log::warn!(
            "{}: nested PVM (kvm_pvm): a guest with {wanted_vcpus} vCPUs would hang starting \
             its second CPU; it gets {vcpus} (the CPU quota still applies in the guest)",
            req.id
        );
    }

    // The rootfs disk, from containerd's mounts (or a prepared rootfs dir).
    // containerd hands over the snapshot as mounts for `<bundle>/rootfs`;
    // Docker mounts its graph driver's rootfs itself and names it in
    // root.path.
    let rootfs_dir = if req.rootfs.is_empty() {
        let root = spec
            .pointer("/root/path")
            .and_then(Value::as_str)
            .unwrap_or("rootfs");
        bundle.join(root)
    } else {
        bundle.join("rootfs")
    };
    let image = image_for(&bundle);
    let mounts: Vec<RootfsMount> = req
        .rootfs
        .iter()
        .map(|m| RootfsMount {
            fs_type: m.type_.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
        })
        .collect();
    // A snapshot that already is a disk goes to the guest as it is;
    // anything else is copied into a new ext4 image.
    let (disk, mut files) = match rootfs::direct_disk(&mounts) {
        Some(disk) => {
            log::info!(
                "{}: the rootfs snapshot {} is a disk: attached as it is",
                req.id,
                disk.path.display()
            );
            (disk, Vec::new())
        }
        None => {
            let took = build_rootfs_image(&mounts, &rootfs_dir, &image)?;
            log::info!("{}: rootfs disk built in {} ms", req.id, took.as_millis());
            let disk = rootfs::RootfsDisk {
                path: image.clone(),
                read_only: false,
            };
            (disk, vec![image.clone()])
        }
    };
    let binds_disk = if host_binds.is_empty() {
        None
    } else {
        let binds_image = binds_image_for(&bundle);
        match build_binds_image(&host_binds, &bundle.join("binds"), &binds_image) {
            Ok(took) => {
                log::info!(
                    "{}: {} bind mount(s) copied to their disk in {} ms",
                    req.id,
                    host_binds.len(),
                    took.as_millis()
                );
                files.push(binds_image.clone());
                Some(binds_image)
            }
            Err(err) => {
                files.iter().for_each(|f| drop(std::fs::remove_file(f)));
                return Err(err);
            }
        }
    };

    let state_dir = state_dir_for(&namespace_of(&bundle), &req.id);
    let undo = |e: ShimError| {
        remove_leftovers(&state_dir, &files);
        e
    };
    std::fs::create_dir_all(SANDBOX_STATE_BASE).map_err(|source| ShimError::Io {
        what: format!("creating {SANDBOX_STATE_BASE}"),
        source,
    })?;
    let _ = std::fs::remove_dir_all(&state_dir);
    let vmm_spec = VmmSpec {
        vmm_binary: config.vmm.clone(),
        kernel: config.kernel_for(vcpus).to_path_buf(),
        initramfs: config.initramfs.clone(),
        vcpus,
        memory_mib,
        kernel_args: Vec::new(),
        drives: std::iter::once(Drive {
            path: disk.path.clone(),
            read_only: disk.read_only,
            id: Some(ROOTFS_SERIAL.into()),
        })
        .chain(binds_disk.iter().map(|path| Drive {
            path: path.clone(),
            read_only: false,
            id: Some(BINDS_SERIAL.into()),
        }))
        .collect(),
        console_log: config.debug_console,
        verbose_boot: config.verbose_boot,
        jail: config.jail.then(|| JailSpec {
            jailer: config.jailer.clone(),
            id: jail_id(&state_dir),
            memory_bytes: Some((u64::from(memory_mib) << 20) + VMM_OVERHEAD_BYTES),
            pids_max: Some(u64::from(vcpus) + 32),
            cpu: cpu_limit(&spec),
        }),
        seccomp: Some(config.seccomp),
    };
    let boot = Duration::from_secs(config.boot_timeout_secs);
    let sandbox = Sandbox::start(&vmm_spec, &state_dir, boot)
        .await
        .map_err(undo)?;
    let agent = sandbox.agent();

    let stdio = StdioPaths {
        stdin: req.stdin.clone(),
        stdout: req.stdout.clone(),
        stderr: req.stderr.clone(),
        terminal: req.terminal,
    };
    let request = CreateContainerRequest {
        container_id: req.id.clone(),
        oci_spec: serde_json::to_vec(&spec).map_err(|source| ShimError::Json {
            what: "the OCI spec",
            source,
        })?,
        rootfs: MessageField::some(Storage {
            disk_serial: ROOTFS_SERIAL.into(),
            fstype: "ext4".into(),
            // A read-only snapshot still gives the container a writable
            // root: a tmpfs upper layer in the guest.
            readonly: disk.read_only,
            overlay: disk.read_only,
            ..Default::default()
        }),
        binds: binds_disk
            .as_ref()
            .map(|_| Storage {
                disk_serial: BINDS_SERIAL.into(),
                fstype: "ext4".into(),
                ..Default::default()
            })
            .into(),
        stdio: MessageField::some(stdio_options(&stdio)),
        ..Default::default()
    };
    // The new guest's first real work (mount the disk, build the
    // container) runs as slowly as its boot on a loaded host: it gets the
    // configured boot budget, not the limit of one quick call.
    let ctx = ttrpc::context::with_timeout(boot.max(RPC_TIMEOUT).as_nanos() as i64);
    let guest_pid = match agent.create_container(ctx, &request).await {
        Ok(response) => response.pid,
        Err(source) => {
            sandbox.shutdown().await;
            return Err(undo(ShimError::AgentCall {
                call: "CreateContainer",
                source,
            }));
        }
    };
    log::debug!("{}: container init is guest pid {guest_pid}", req.id);
    let host_pid = sandbox.pid().await;
    let mut processes = HashMap::new();
    processes.insert(
        String::new(),
        std::sync::Arc::new(Process::new("", stdio, None)),
    );
    Ok(Container {
        id: req.id.clone(),
        bundle,
        sandbox,
        agent,
        files,
        host_pid,
        processes: Mutex::new(processes),
        paused: AtomicBool::new(false),
    })
}

/// Rewrites what in a host-side spec cannot mean anything in the guest,
/// and returns the bind mounts of host files and directories, whose
/// content is copied onto a disk of their own (hull has no shared file
/// system yet: a copy at start, not a live view): each such mount's source
/// becomes its index on that disk (`"0"`, `"1"`, ...), which the agent
/// binds from in the guest;
/// - host devices never reach the guest (policy C3.1);
/// - namespace paths name host namespaces (Docker's and CRI's network
///   namespace): every namespace is the guest's own;
/// - hooks are host binaries (Docker's libnetwork-setkey);
/// - the guest has no swap, so no swap limit.
pub fn for_the_guest(spec: &mut Value) -> Vec<rootfs::HostBind> {
    if let Some(linux) = spec.get_mut("linux").and_then(Value::as_object_mut) {
        linux.remove("devices");
        if let Some(namespaces) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
            for ns in namespaces.iter_mut().filter_map(Value::as_object_mut) {
                ns.remove("path");
            }
        }
        if let Some(memory) = linux
            .get_mut("resources")
            .and_then(|r| r.get_mut("memory"))
            .and_then(Value::as_object_mut)
        {
            memory.remove("swap");
            memory.remove("swappiness");
        }
    }
    if let Some(root) = spec.as_object_mut() {
        root.remove("hooks");
    }
    let mut binds = Vec::new();
    for m in spec
        .get_mut("mounts")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let Some(source) = policy::host_bind_source(m).map(PathBuf::from) else {
            continue;
        };
        let destination = m.get("destination").and_then(Value::as_str).unwrap_or("");
        binds.push(rootfs::HostBind {
            source,
            destination: destination.into(),
        });
        m["source"] = Value::from((binds.len() - 1).to_string());
    }
    binds
}

/// containerd's bundles are `<state>/io.containerd.runtime.v2.task/<ns>/<id>`.
fn namespace_of(bundle: &Path) -> String {
    bundle
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// vCPUs and guest RAM: the spec's CPU and memory limits when it has them
/// (memory limit plus the configured overhead), else the config's defaults.
pub fn vm_size(spec: &Value, config: &ShimConfig) -> (u8, u32) {
    let vcpus = match cpu_limit(spec) {
        Some((quota, period)) if period > 0 => quota.div_ceil(period).clamp(1, 8) as u8,
        _ => config.vcpus,
    };
    let memory_mib = spec
        .pointer("/linux/resources/memory/limit")
        .and_then(Value::as_i64)
        .filter(|limit| *limit > 0)
        .map_or(config.memory_mib, |limit| {
            let mib = (limit as u64).div_ceil(1 << 20) as u32;
            mib.saturating_add(config.memory_overhead_mib)
        });
    (vcpus, memory_mib)
}

/// Present when /dev/kvm is nested PVM (see shared/kvm-here.md).
const NESTED_PVM_MODULE: &str = "/sys/module/kvm_pvm";

/// The vCPUs a VM gets: what it asked for, except under nested PVM, where
/// guests with more than one vCPU hang in the second CPU's start-up
/// (tests/tests/smp_boot.rs), so they get one.
fn vcpus_this_host_runs(wanted: u8, nested_pvm: bool) -> u8 {
    if nested_pvm {
        wanted.min(1)
    } else {
        wanted
    }
}

fn cpu_limit(spec: &Value) -> Option<(u64, u64)> {
    let quota = spec
        .pointer("/linux/resources/cpu/quota")
        .and_then(Value::as_i64)?;
    let period = spec
        .pointer("/linux/resources/cpu/period")
        .and_then(Value::as_u64)
        .unwrap_or(100_000);
    (quota > 0).then_some((quota as u64, period))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_pvm_gets_one_vcpu() {
        assert_eq!(vcpus_this_host_runs(4, false), 4);
        assert_eq!(vcpus_this_host_runs(4, true), 1);
        assert_eq!(vcpus_this_host_runs(1, true), 1);
    }

    #[test]
    fn the_vm_is_sized_from_the_spec_limits() {
        let config = ShimConfig::default();
        assert_eq!(vm_size(&json!({}), &config), (1, 256));
        let spec = json!({"linux": {"resources": {
            "memory": {"limit": 268_435_456},
            "cpu": {"quota": 150_000, "period": 100_000}
        }}});
        assert_eq!(
            vm_size(&spec, &config),
            (2, 256 + config.memory_overhead_mib)
        );
        assert_eq!(cpu_limit(&spec), Some((150_000, 100_000)));
    }

    #[test]
    fn host_side_fields_are_rewritten_for_the_guest() {
        let mut spec = json!({
            "hooks": {"createRuntime": [{"path": "/usr/sbin/dockerd"}]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/docker/c/hosts", "options": ["rbind", "ro"]}
            ],
            "linux": {
                "devices": [{"path": "/dev/sda"}],
                "namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/docker/netns/x"}],
                "resources": {"memory": {"limit": 100, "swap": 200}}
            }
        });
        let binds = for_the_guest(&mut spec);
        assert_eq!(binds.len(), 1);
        assert_eq!(binds[0].destination, PathBuf::from("/etc/hosts"));
        assert!(spec.get("hooks").is_none());
        assert_eq!(binds[0].source, PathBuf::from("/var/lib/docker/c/hosts"));
        // The mount stays, its source now the bind's place on the binds disk.
        assert_eq!(
            spec["mounts"][1],
            json!({"destination": "/etc/hosts", "type": "bind", "source": "0", "options": ["rbind", "ro"]})
        );
        assert!(spec["linux"].get("devices").is_none());
        assert_eq!(spec["linux"]["namespaces"][1], json!({"type": "network"}));
        assert_eq!(spec["linux"]["resources"]["memory"], json!({"limit": 100}));
    }

    #[test]
    fn state_dirs_are_short_and_distinct() {
        let a = state_dir_for("default", &"x".repeat(64));
        let b = state_dir_for("moby", &"x".repeat(64));
        assert_ne!(a, b);
        // Room for "/vsock.sock_1024" under the socket path limit.
        assert!(a.as_os_str().len() + 16 < 100, "{}", a.display());
        assert_eq!(
            namespace_of(Path::new("/s/io.containerd.runtime.v2.task/ns1/id1")),
            "ns1"
        );
    }
}
