//! Creating a container, as a recipe: load the config and the spec, check
//! the policy, size the VM, prepare the rootfs (shared by virtiofsd, or a
//! disk) and the shared directory of the host bind mounts, start the
//! sandbox (restored from a template when there is one, else booted),
//! create the container in the guest. One [`CreateUndo`] guard takes back whatever the steps
//! before a failure made.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::protos::api::CreateTaskRequest;
use containerd_shim::protos::protobuf::MessageField;
use hull_jailer::cgroup::{SandboxCgroup, DEFAULT_PARENT};
use hull_protocol::agent_api::agent::{CreateContainerRequest, PrepareCloneRequest, Storage};
use hull_protocol::agent_api::agent_ttrpc::AgentClient;
use hull_protocol::vmm_config::{ROOTFS_TAG, SHARE_TAG};
use hull_sandbox::config::RootfsMode;
use hull_sandbox::share::{
    rootfs_share_dir_for, share_dir_for, Cache, HostBind, Share, ShareError,
};
use hull_sandbox::spec::{self, Spec, VmSize};
use hull_sandbox::state::{jail_id, state_dir_for, SANDBOX_STATE_BASE};
use hull_sandbox::vm::RPC_TIMEOUT;
use hull_sandbox::vmm_process::{host_memory_bytes, Drive, JailSpec, NetworkSpec, VmmSpec};
use hull_sandbox::{policy, template, Sandbox};
use tokio::sync::Mutex;

use super::network::SandboxNetwork;
use super::phases::Phases;
use super::pod::{Pod, Role};
use super::process::Process;
use super::{agent_err, stdio_options, Container};
use crate::config::{config_path_from_options, ShimConfig};
use crate::error::ShimError;
use crate::guest_spec::for_the_guest;
use crate::hooks::{self, Stage};
use crate::rootfs::{self, RootfsDisk, RootfsMount};
use crate::stdio::StdioPaths;

mod member;

/// The serial of the rootfs disk, by which the agent finds it.
pub const ROOTFS_SERIAL: &str = template::ROOTFS_SERIAL;
/// Bytes of host entropy a restored clone gets.
const CLONE_ENTROPY: usize = 64;
/// How long the undo of a failed create waits for a killed VMM to leave
/// its host cgroups.
const UNDO_CGROUP_WAIT: Duration = Duration::from_secs(2);

/// The rootfs disk image of a bundle.
pub fn image_for(bundle: &Path) -> PathBuf {
    bundle.join("rootfs.img")
}

/// The files a sandbox's create may leave in its bundle.
pub fn bundle_files(bundle: &Path) -> [PathBuf; 1] {
    [image_for(bundle)]
}

/// Creates the container `req` names: in a new sandbox, or, for a pod's
/// container, in its sandbox among `pods` (the sandboxes this shim runs).
pub async fn create(req: &CreateTaskRequest, pods: &[Arc<Pod>]) -> Result<Container, ShimError> {
    let mut phases = Phases::begin(&req.id);
    let config = load_config(req)?;
    phases.log_to(config.phase_log.clone());
    let bundle = PathBuf::from(&req.bundle);
    let mut spec = spec::load(&bundle.join("config.json"))?;
    policy::enforce(&spec, &config.policy()).map_err(ShimError::Policy)?;
    hooks::refuse_guest_hooks(&spec)?;
    let role = Role::of(&spec);
    if let Role::PodMember(sandbox_id) = &role {
        let pod = pods
            .iter()
            .find(|p| &p.id == sandbox_id && p.is_pod)
            .cloned()
            .ok_or_else(|| ShimError::NoPod {
                id: req.id.clone(),
                sandbox: sandbox_id.clone(),
            })?;
        return member::create(req, &config, spec, pod, phases).await;
    }
    let is_pod = role == Role::PodSandbox;
    let created_hooks = hooks::of_stage(&spec, Stage::Created);
    let later_hooks = later_hooks(&spec);
    let network = network_of(&spec);
    let resolv_conf = super::dns::resolv_conf_source(&spec);
    let host_binds = for_the_guest(&mut spec);
    let size = size_the_vm(&req.id, &spec, &config, is_pod)?;
    phases.mark("spec");
    let state_dir = state_dir_for(&namespace_of(&bundle), &req.id);
    let mut undo = CreateUndo::new(state_dir.clone());
    // The network namespace first, with the host's hooks run: Docker plugs
    // its network in and rewrites resolv.conf (its embedded DNS) then.
    let early = early_network(&req.id, &bundle, network, created_hooks).await?;
    let embedded_dns = resolv_conf
        .as_deref()
        .is_some_and(super::dns::names_embedded_dns);
    phases.mark("hooks");
    let disks = prepare_rootfs(req, &bundle, &spec, &config, &state_dir, &mut undo)?;
    phases.mark("disks");
    // A pod's later containers may bring binds: its share is always there.
    let share = start_share(&req.id, &config, &state_dir, host_binds, is_pod).await?;
    phases.mark("share");
    let boot = Duration::from_secs(config.boot_timeout_secs);
    let fs = template::fs_slots(
        disks.shared.as_ref().map(|(share, _)| share.socket()),
        share.as_ref().map(Share::socket),
    );
    let vmm_spec = vmm_spec(&config, &size, &disks, &state_dir, early.spec.clone(), fs);
    let sandbox = start_sandbox(&config, &vmm_spec, &state_dir, boot, &mut phases).await?;
    let host_pid = sandbox.pid().await;
    let netns = match early.held {
        Some(held) => Ok(held),
        None => SandboxNetwork::open_of(host_pid),
    };
    let network = match netns {
        Ok(netns) => SandboxNetwork::new(netns, embedded_dns),
        Err(err) => {
            sandbox.shutdown().await;
            return Err(err);
        }
    };
    let stdio = stdio_of(req);
    let binds = share.is_some().then_some(req.id.as_str());
    let agent = sandbox.agent();
    let created = create_in_guest(
        &req.id,
        &agent,
        &spec,
        rootfs_storage(&req.id, &disks),
        binds,
        &stdio,
        boot,
    )
    .await;
    let guest_pid = match created {
        Ok(pid) => pid,
        Err(err) => {
            sandbox.shutdown().await;
            return Err(err);
        }
    };
    phases.mark("created");
    undo.disarm();
    let (rootfs_share, _) = disks.shared.unzip();
    let pod = Pod::new(
        &req.id,
        sandbox,
        host_pid,
        network,
        rootfs_share,
        share,
        is_pod,
        guest_pid,
    );
    let processes = HashMap::from([(String::new(), Arc::new(Process::new("", stdio, None)))]);
    Ok(Container {
        id: req.id.clone(),
        bundle,
        pod: Arc::new(pod),
        owns_pod: true,
        files: disks.files,
        processes: Mutex::new(processes),
        paused: AtomicBool::new(false),
        phases: std::sync::Mutex::new(Some(phases)),
        hooks: later_hooks,
    })
}

/// The sandbox's network namespace: the spec's when it names one (a pod's,
/// CNI's), else a new one the jailer makes. The host network namespace
/// never gets here: the policy refuses it.
fn network_of(spec: &Spec) -> NetworkSpec {
    let netns = spec
        .linux()
        .as_ref()
        .and_then(|linux| linux.namespaces().as_ref())
        .and_then(|namespaces| {
            namespaces
                .iter()
                .find(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
        })
        .and_then(|ns| ns.path().clone());
    NetworkSpec { netns }
}

/// The sandbox's network namespace before its VM, when host hooks must
/// run in it: what the VMM is started with, and the namespace, held.
struct EarlyNetwork {
    spec: NetworkSpec,
    held: Option<std::fs::File>,
}

/// Without hooks, the jailer makes (or joins) the namespace itself. With
/// them, a placeholder process makes (or joins) it, the hooks run with its
/// pid (Docker's `libnetwork-setkey` plugs the network into
/// `/proc/<pid>/ns/net`), the shim holds the namespace and the jailer joins
/// it through the shim's open file.
async fn early_network(
    id: &str,
    bundle: &Path,
    network: NetworkSpec,
    created_hooks: Vec<(&'static str, oci_spec::runtime::Hook)>,
) -> Result<EarlyNetwork, ShimError> {
    if created_hooks.is_empty() {
        return Ok(EarlyNetwork {
            spec: network,
            held: None,
        });
    }
    let (id, bundle) = (id.to_owned(), bundle.to_owned());
    let held = tokio::task::spawn_blocking(move || -> Result<std::fs::File, ShimError> {
        let placeholder = super::network::Placeholder::start(network.netns.as_deref())?;
        let ran = hooks::run(&created_hooks, &id, &bundle, placeholder.pid(), "created");
        let netns = placeholder.netns();
        drop(placeholder);
        ran?;
        netns
    })
    .await
    .map_err(|e| ShimError::Io {
        what: "running the createRuntime hooks".into(),
        source: std::io::Error::other(e),
    })??;
    use std::os::fd::AsRawFd;
    let path = PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        held.as_raw_fd()
    ));
    Ok(EarlyNetwork {
        spec: NetworkSpec { netns: Some(path) },
        held: Some(held),
    })
}

/// Undoes a create that failed part-way, unless disarmed: the disks the
/// shim built, the sandbox's state directory and its host cgroups (a VMM
/// killed before its jailer could remove them leaves them behind).
struct CreateUndo {
    state_dir: PathBuf,
    files: Vec<PathBuf>,
    armed: bool,
}

impl CreateUndo {
    fn new(state_dir: PathBuf) -> Self {
        CreateUndo {
            state_dir,
            files: Vec::new(),
            armed: true,
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CreateUndo {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for file in &self.files {
            let _ = std::fs::remove_file(file);
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
        if let Ok(cgroup) = SandboxCgroup::existing(DEFAULT_PARENT, &jail_id(&self.state_dir)) {
            let left = cgroup.kill_and_remove(UNDO_CGROUP_WAIT);
            if !left.is_empty() {
                log::warn!("the failed sandbox's host cgroups still hold {left:?}");
            }
        }
    }
}

/// hull's config: the runtime options' `ConfigPath`, else `$HULL_CONFIG`,
/// else the defaults.
fn load_config(req: &CreateTaskRequest) -> Result<ShimConfig, ShimError> {
    let path = req
        .options
        .as_ref()
        .and_then(|any| config_path_from_options(&any.type_url, &any.value))
        .or_else(|| std::env::var_os("HULL_CONFIG").map(PathBuf::from));
    Ok(ShimConfig::load(path.as_deref())?)
}

/// The VM's size from the spec's limits (a pod's from its resources), with
/// the vCPUs this host can run.
fn size_the_vm(id: &str, spec: &Spec, config: &ShimConfig, pod: bool) -> Result<VmSize, ShimError> {
    let mut size = if pod {
        VmSize::of_pod(spec, &config.vm_defaults())?
    } else {
        VmSize::of(spec, &config.vm_defaults())?
    };
    let vcpus = spec::vcpus_this_host_runs(size.vcpus);
    if vcpus != size.vcpus {
        log::warn!(
            "{id}: nested PVM (kvm_pvm): a guest with {} vCPUs would hang starting its second \
             CPU; it gets {vcpus} (the CPU quota still applies in the guest)",
            size.vcpus
        );
        size.vcpus = vcpus;
    }
    Ok(size)
}

/// The container's rootfs as its VM gets it.
struct Disks {
    /// The file in the rootfs disk slot: the rootfs, or an empty
    /// placeholder when the rootfs is shared.
    rootfs: RootfsDisk,
    /// The rootfs's share and whether it is read-only, when shared.
    shared: Option<(Share, bool)>,
    /// The files the shim built (removed with the container).
    files: Vec<PathBuf>,
}

/// The hooks run after the container is created: poststart, then
/// poststop.
pub(super) fn later_hooks(spec: &Spec) -> Vec<(&'static str, oci_spec::runtime::Hook)> {
    hooks::of_stage(spec, Stage::Poststart)
        .into_iter()
        .chain(hooks::of_stage(spec, Stage::Poststop))
        .collect()
}

/// The init process's stdio, as containerd names it.
pub(super) fn stdio_of(req: &CreateTaskRequest) -> StdioPaths {
    StdioPaths {
        stdin: req.stdin.clone(),
        stdout: req.stdout.clone(),
        stderr: req.stderr.clone(),
        terminal: req.terminal,
    }
}

/// Where the rootfs comes from: containerd's mounts, else (Docker, a
/// prepared bundle) the spec's root directory.
pub(super) fn rootfs_source(
    req: &CreateTaskRequest,
    bundle: &Path,
    spec: &Spec,
) -> (PathBuf, Vec<RootfsMount>) {
    let rootfs_dir = if req.rootfs.is_empty() {
        let root = spec.root().as_ref().map(|r| r.path().clone());
        bundle.join(root.unwrap_or_else(|| "rootfs".into()))
    } else {
        bundle.join("rootfs")
    };
    let mounts = req
        .rootfs
        .iter()
        .map(|m| RootfsMount {
            fs_type: m.type_.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
        })
        .collect();
    (rootfs_dir, mounts)
}

/// The rootfs, from containerd's mounts (or a prepared rootfs dir).
/// containerd hands over the snapshot as mounts for `<bundle>/rootfs`;
/// Docker mounts its graph driver's rootfs itself and names it in
/// root.path. A snapshot that already is a disk goes to the guest as it
/// is; anything else is shared (virtio-fs), or copied into a new ext4
/// image with `rootfs = "block"`.
fn prepare_rootfs(
    req: &CreateTaskRequest,
    bundle: &Path,
    spec: &Spec,
    config: &ShimConfig,
    state_dir: &Path,
    undo: &mut CreateUndo,
) -> Result<Disks, ShimError> {
    let (rootfs_dir, mounts) = rootfs_source(req, bundle, spec);
    if let Some(disk) = rootfs::direct_disk(&mounts) {
        log::info!(
            "{}: the rootfs snapshot {} is a disk: attached as it is",
            req.id,
            disk.path.display()
        );
        return Ok(Disks {
            rootfs: disk,
            shared: None,
            files: Vec::new(),
        });
    }
    let image = image_for(bundle);
    undo.files.push(image.clone());
    let shared = match config.rootfs {
        RootfsMode::VirtioFs => {
            let started = std::time::Instant::now();
            let share_dir = rootfs_share_dir_for(state_dir);
            let shared = rootfs::share(
                (&config.virtiofsd, config.virtiofsd_threads),
                &share_dir,
                &req.id,
                &mounts,
                &rootfs_dir,
            )?;
            // The disk slot every sandbox has (the template's layout)
            // holds nothing.
            std::fs::File::create(&image).map_err(|source| ShimError::Io {
                what: format!("creating {}", image.display()),
                source,
            })?;
            log::info!(
                "{}: rootfs shared{} (virtiofsd pid {}) in {} ms",
                req.id,
                if shared.1 { " read-only" } else { "" },
                shared.0.pid().unwrap_or_default(),
                started.elapsed().as_millis()
            );
            Some(shared)
        }
        RootfsMode::Block => {
            let took = build_rootfs_image(&mounts, &rootfs_dir, &image)?;
            log::info!("{}: rootfs disk built in {} ms", req.id, took.as_millis());
            None
        }
    };
    Ok(Disks {
        rootfs: RootfsDisk {
            path: image,
            read_only: false,
        },
        shared,
        files: undo.files.clone(),
    })
}

/// The shared directory of the container's host bind mounts, served by
/// its own virtiofsd; none without binds (the VM's shared-directory device
/// then serves nothing) unless `always` (a pod's).
async fn start_share(
    id: &str,
    config: &ShimConfig,
    state_dir: &Path,
    binds: Vec<HostBind>,
    always: bool,
) -> Result<Option<Share>, ShimError> {
    if binds.is_empty() && !always {
        return Ok(None);
    }
    let (virtiofsd, threads) = (config.virtiofsd.clone(), config.virtiofsd_threads);
    let dir = share_dir_for(state_dir);
    let started = std::time::Instant::now();
    let count = binds.len();
    let subdir = id.to_owned();
    let share = tokio::task::spawn_blocking(move || {
        let mut share = Share::create(&dir)?;
        share.add_binds(&subdir, &binds)?;
        share.serve(&virtiofsd, Cache::Auto, threads)?;
        Ok::<_, ShareError>(share)
    })
    .await
    .map_err(|e| ShimError::Io {
        what: "starting the shared directory".into(),
        source: std::io::Error::other(e),
    })??;
    log::info!(
        "{id}: {count} bind mount(s) shared (virtiofsd pid {}) in {} ms",
        share.pid().unwrap_or_default(),
        started.elapsed().as_millis()
    );
    Ok(Some(share))
}

/// What `hull-vmm` (under `hull-jailer`, unless the config turns the jail
/// off) is started with.
fn vmm_spec(
    config: &ShimConfig,
    size: &VmSize,
    disks: &Disks,
    state_dir: &Path,
    network: NetworkSpec,
    fs: Vec<hull_sandbox::vmm_process::FsConfig>,
) -> VmmSpec {
    let rootfs = Drive {
        path: disks.rootfs.path.clone(),
        read_only: disks.rootfs.read_only,
        id: Some(ROOTFS_SERIAL.into()),
    };
    VmmSpec {
        vmm_binary: config.vmm.clone(),
        kernel: config.kernel_for(size.vcpus).to_path_buf(),
        initramfs: config.initramfs.clone(),
        vcpus: size.vcpus,
        memory_mib: size.memory_mib,
        kernel_args: Vec::new(),
        drives: vec![rootfs],
        console_log: config.debug_console,
        verbose_boot: config.verbose_boot,
        jail: config.jail.then(|| JailSpec {
            jailer: config.jailer.clone(),
            id: jail_id(state_dir),
            memory_bytes: Some(host_memory_bytes(size.memory_mib)),
            pids_max: Some(u64::from(size.vcpus) + 32),
            cpu: size.cpu,
        }),
        seccomp: Some(config.seccomp),
        snapshot_file: None,
        restore_from: None,
        network: Some(network),
        fs,
    }
}

/// A fresh state directory, then the VMM, until the agent answers: a VM
/// restored from the template of its kind (built first when there is
/// none), made a clone of its own; a cold boot without templates or when
/// the restore fails.
async fn start_sandbox(
    config: &ShimConfig,
    vmm_spec: &VmmSpec,
    state_dir: &Path,
    boot: Duration,
    phases: &mut Phases,
) -> Result<Sandbox, ShimError> {
    std::fs::create_dir_all(SANDBOX_STATE_BASE).map_err(|source| ShimError::Io {
        what: format!("creating {SANDBOX_STATE_BASE}"),
        source,
    })?;
    let restoring = restoring_spec(config, vmm_spec, boot).await;
    phases.mark("template");
    if let Some((restoring, template)) = restoring {
        let _ = std::fs::remove_dir_all(state_dir);
        let started = std::time::Instant::now();
        match Sandbox::start(&restoring, state_dir, boot).await {
            Ok(sandbox) => {
                phases.mark("agent");
                if let Err(err) = prepare_clone(&sandbox).await {
                    sandbox.shutdown().await;
                    return Err(err);
                }
                phases.mark("clone");
                log::info!(
                    "sandbox restored from a template, agent ready in {} ms",
                    started.elapsed().as_millis()
                );
                return Ok(sandbox);
            }
            Err(err) => {
                log::warn!(
                    "restoring from the template failed, booting instead: {}",
                    hull_protocol::error_chain(&err)
                );
                template::discard(&config.template_dir, &template);
            }
        }
    }
    let _ = std::fs::remove_dir_all(state_dir);
    let sandbox = Sandbox::start(vmm_spec, state_dir, boot).await?;
    phases.mark("agent");
    Ok(sandbox)
}

/// `vmm_spec` restored from its template (and the template), when
/// templates are on and the sandbox fits one: a read-write disk in the
/// rootfs slot.
async fn restoring_spec(
    config: &ShimConfig,
    vmm_spec: &VmmSpec,
    boot: Duration,
) -> Option<(VmmSpec, template::Template)> {
    if !config.templates {
        return None;
    }
    let fits = vmm_spec.drives.len() == 1 && vmm_spec.drives.iter().all(|d| !d.read_only);
    if !fits {
        log::info!("no template for a read-only rootfs disk: booting");
        return None;
    }
    match template::ensure(&config.template_dir, vmm_spec, boot).await {
        Ok(found) => {
            let memory_mib = found.meta.key.memory_mib;
            let jail = vmm_spec.jail.clone().map(|jail| JailSpec {
                memory_bytes: Some(host_memory_bytes(memory_mib)),
                ..jail
            });
            let spec = VmmSpec {
                restore_from: Some(found.snapshot.clone()),
                memory_mib,
                jail,
                ..vmm_spec.clone()
            };
            Some((spec, found))
        }
        Err(err) => {
            log::warn!("no template, booting: {}", hull_protocol::error_chain(&err));
            None
        }
    }
}

/// A restored VM is one of many identical clones: before anything runs in
/// it, it gets the host's time and fresh entropy (see the agent's
/// PrepareClone).
async fn prepare_clone(sandbox: &Sandbox) -> Result<(), ShimError> {
    let mut entropy = vec![0u8; CLONE_ENTROPY];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut entropy))
        .map_err(|source| ShimError::Io {
            what: "reading host entropy".into(),
            source,
        })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let request = PrepareCloneRequest {
        realtime_ns: now.as_nanos() as i64,
        entropy,
        ..Default::default()
    };
    let ctx = ttrpc::context::with_timeout(RPC_TIMEOUT.as_nanos() as i64);
    sandbox
        .agent()
        .prepare_clone(ctx, &request)
        .await
        .map_err(agent_err("PrepareClone"))?;
    Ok(())
}

/// `CreateContainer` in the guest, with the `rootfs` and the directory
/// `binds` of the shared directory of the binds (when there are binds);
/// returns the container's init's guest pid.
pub(super) async fn create_in_guest(
    id: &str,
    agent: &AgentClient,
    spec: &Spec,
    rootfs: Storage,
    binds: Option<&str>,
    stdio: &StdioPaths,
    boot: Duration,
) -> Result<u32, ShimError> {
    let request = CreateContainerRequest {
        container_id: id.to_owned(),
        oci_spec: serde_json::to_vec(spec).map_err(|source| ShimError::Json {
            what: "the OCI spec",
            source,
        })?,
        rootfs: MessageField::some(rootfs),
        binds: binds
            .map(|subdir| Storage {
                fstype: "virtiofs".into(),
                tag: SHARE_TAG.into(),
                subdir: subdir.to_owned(),
                ..Default::default()
            })
            .into(),
        stdio: MessageField::some(stdio_options(stdio)),
        ..Default::default()
    };
    // The new guest's first real work (mount the disk, build the
    // container) runs as slowly as its boot on a loaded host: it gets the
    // configured boot budget, not the limit of one quick call.
    let ctx = ttrpc::context::with_timeout(boot.max(RPC_TIMEOUT).as_nanos() as i64);
    let response = agent
        .create_container(ctx, &request)
        .await
        .map_err(agent_err("CreateContainer"))?;
    log::debug!("{id}: container init is guest pid {}", response.pid);
    Ok(response.pid)
}

/// What the agent mounts as the rootfs. A read-only snapshot still gives
/// the container a writable root: a tmpfs upper layer in the guest.
fn rootfs_storage(id: &str, disks: &Disks) -> Storage {
    match &disks.shared {
        Some((_, read_only)) => Storage {
            fstype: "virtiofs".into(),
            tag: ROOTFS_TAG.into(),
            subdir: id.to_owned(),
            readonly: *read_only,
            overlay: *read_only,
            ..Default::default()
        },
        None => Storage {
            disk_serial: ROOTFS_SERIAL.into(),
            fstype: "ext4".into(),
            readonly: disks.rootfs.read_only,
            overlay: disks.rootfs.read_only,
            ..Default::default()
        },
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

/// containerd's bundles are `<state>/io.containerd.runtime.v2.task/<ns>/<id>`.
fn namespace_of(bundle: &Path) -> String {
    bundle
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_name_their_namespace() {
        assert_eq!(
            namespace_of(Path::new("/s/io.containerd.runtime.v2.task/ns1/id1")),
            "ns1"
        );
    }
}
