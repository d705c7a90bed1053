//! VM templates: a snapshot of a booted VM whose agent is ready, which
//! sandboxes restore instead of booting (Kata's VM templating, Firecracker's
//! snapshots). One template per set of inputs that shape the guest: the VMM
//! build, kernel, initramfs and kernel arguments (by content), vCPUs, the
//! memory size class and the device layout. A template whose inputs
//! changed has another id, so it is never used; `hull template clear`
//! removes old ones.
//!
//! Layout under the template directory (root's, 0700):
//! ```text
//! <id>/snapshot.bin    the snapshot (read-only to every restore)
//! <id>/template.json   its inputs and when and how fast it was built
//! <id>.lock            held while the template is built
//! ```
//!
//! The template VM has the device layout every restored sandbox gets: one
//! disk (serial `rootfs`, read-write, empty while the template boots, so
//! its kernel caches nothing of it), vsock, a network device on a tap in a
//! namespace of the template's own, and two shared-directory devices
//! (virtio-fs: the rootfs's and the volumes', [`fs_slots`]) with no
//! backend, which the template's guest never mounts. A restored sandbox
//! puts its own file in the disk slot (the guest learns its size from a
//! configuration interrupt; an empty file when its rootfs is shared), its
//! own tap, made by its jailer in its own namespace, behind the network
//! device, and its own virtiofsd processes behind the shared-directory
//! devices.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use hull_protocol::vmm_api::{VmState, VmmRequest, VmmResponse};
use serde::{Deserialize, Serialize};

use crate::state::{jail_id, state_dir_for, SANDBOX_STATE_BASE};
use crate::vm::{wait_for_agent, SandboxError};
use crate::vmm_process::{
    host_memory_bytes, Drive, FsConfig, NetworkSpec, VmmProcess, VmmProcessError, VmmSpec,
};
use hull_protocol::vmm_config::{ROOTFS_TAG, SHARE_TAG};

/// Where templates are kept unless the config says otherwise.
pub const DEFAULT_TEMPLATE_DIR: &str = "/var/lib/hull/templates";
/// The disk serials of a template's (and every restored sandbox's) slots.
pub const ROOTFS_SERIAL: &str = "rootfs";
/// Bumped when the template VM's devices change (2: the network device;
/// 3: the shared directory instead of the binds disk; 4: a second shared
/// directory, the rootfs's).
const LAYOUT_VERSION: u32 = 4;
/// The smallest memory class; classes double from here.
pub const MIN_MEMORY_CLASS_MIB: u32 = 256;
const SNAPSHOT: &str = "snapshot.bin";
const META: &str = "template.json";
/// How long the template VM gets to save itself and to stop.
const SAVE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the template VM")]
    Vmm(#[from] VmmProcessError),
    #[error("booting the template VM")]
    Boot(#[from] SandboxError),
    #[error("the template VM refused to save itself: {0}")]
    Save(String),
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError {
    let path = path.to_path_buf();
    move |source| TemplateError::Io { what, path, source }
}

/// The memory class `mib` falls in: the next power of two from
/// [`MIN_MEMORY_CLASS_MIB`]. Guest memory is touched lazily, so a bigger
/// VM costs only address space until the guest uses it; the container's
/// own limit is its cgroup's, in the guest.
pub fn memory_class(mib: u32) -> u32 {
    mib.max(MIN_MEMORY_CLASS_MIB)
        .checked_next_power_of_two()
        .unwrap_or(mib)
}

/// The VM of a sandbox without limits under `config` (or with
/// `memory_mib` of guest RAM), as far as its template is concerned: what
/// `hull template build` builds, the same template the shim then finds.
pub fn sandbox_spec(config: &crate::config::ShimConfig, memory_mib: Option<u32>) -> VmmSpec {
    let vcpus = crate::spec::vcpus_this_host_runs(config.vcpus);
    let memory_mib = memory_class(memory_mib.unwrap_or(config.memory_mib));
    VmmSpec {
        vmm_binary: config.vmm.clone(),
        kernel: config.kernel_for(vcpus).to_path_buf(),
        initramfs: config.initramfs.clone(),
        vcpus,
        memory_mib,
        kernel_args: Vec::new(),
        drives: Vec::new(),
        console_log: config.debug_console,
        verbose_boot: config.verbose_boot,
        jail: config.jail.then(|| crate::vmm_process::JailSpec {
            jailer: config.jailer.clone(),
            id: String::new(),
            memory_bytes: Some(host_memory_bytes(memory_mib)),
            pids_max: Some(u64::from(vcpus) + 32),
            cpu: None,
        }),
        seccomp: Some(config.seccomp),
        snapshot_file: None,
        restore_from: None,
        network: Some(NetworkSpec::default()),
        fs: fs_slots(None, None),
    }
}

/// The shared-directory devices every sandbox has (the template's
/// layout), rootfs first: the container's rootfs (served with `always`
/// caching) and the host bind mounts (`auto`), each behind its virtiofsd's
/// socket, or serving nothing (the template's, a container without
/// volumes, a rootfs on a disk).
pub fn fs_slots(rootfs: Option<PathBuf>, binds: Option<PathBuf>) -> Vec<FsConfig> {
    vec![
        FsConfig {
            tag: ROOTFS_TAG.into(),
            socket: rootfs,
        },
        FsConfig {
            tag: SHARE_TAG.into(),
            socket: binds,
        },
    ]
}

/// What a template is made from, by content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateKey {
    pub vmm_sha256: String,
    pub kernel_sha256: String,
    pub initramfs_sha256: String,
    pub kernel_args: Vec<String>,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub layout: u32,
}

impl TemplateKey {
    /// The key of the template `spec`'s sandbox can restore from (its
    /// memory rounded up to its class).
    pub fn of(spec: &VmmSpec) -> Result<Self, TemplateError> {
        Ok(TemplateKey {
            vmm_sha256: file_sha256(&spec.vmm_binary)?,
            kernel_sha256: file_sha256(&spec.kernel)?,
            initramfs_sha256: file_sha256(&spec.initramfs)?,
            kernel_args: spec.kernel_args.clone(),
            vcpus: spec.vcpus,
            memory_mib: memory_class(spec.memory_mib),
            layout: LAYOUT_VERSION,
        })
    }

    /// The template's directory name: short, and different for any other
    /// input.
    pub fn id(&self) -> String {
        let json = serde_json::to_vec(self).expect("a key always serialises");
        hull_protocol::digest::sha256_hex(&json)[..16].to_owned()
    }
}

/// What `template.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateMeta {
    pub key: TemplateKey,
    /// Seconds since the epoch.
    pub built_at: u64,
    /// From the VMM's start to the agent's answer, and the save.
    pub boot_ms: u64,
    pub save_ms: u64,
}

/// A built template.
#[derive(Debug, Clone)]
pub struct Template {
    pub id: String,
    pub snapshot: PathBuf,
    pub meta: TemplateMeta,
}

fn file_sha256(path: &Path) -> Result<String, TemplateError> {
    hull_protocol::digest::file_sha256(path).map_err(io("reading", path))
}

/// The templates directory, made root's and private when missing.
fn template_dir(base: &Path) -> Result<(), TemplateError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(base)
        .map_err(io("creating", base))
}

/// The template `key` names, if it is built.
pub fn find(base: &Path, key: &TemplateKey) -> Option<Template> {
    let id = key.id();
    let template = load(&base.join(&id)).ok()?;
    (template.meta.key == *key).then_some(template)
}

fn load(dir: &Path) -> Result<Template, TemplateError> {
    let meta_path = dir.join(META);
    let text = std::fs::read(&meta_path).map_err(io("reading", &meta_path))?;
    let meta: TemplateMeta = serde_json::from_slice(&text).map_err(|e| TemplateError::Invalid {
        path: meta_path.clone(),
        reason: e.to_string(),
    })?;
    let snapshot = dir.join(SNAPSHOT);
    std::fs::metadata(&snapshot).map_err(io("reading", &snapshot))?;
    Ok(Template {
        id: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        snapshot,
        meta,
    })
}

/// Every template under `base` (unreadable entries are skipped).
pub fn list(base: &Path) -> Vec<Template> {
    let Ok(entries) = std::fs::read_dir(base) else {
        return Vec::new();
    };
    let mut found: Vec<Template> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| load(&e.path()).ok())
        .collect();
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found
}

/// Removes a template a restore failed with (a damaged file, or one its
/// key no longer describes), so that the next sandbox of its kind builds
/// it again; VMs already restored from it keep their mapping.
pub fn discard(base: &Path, template: &Template) {
    let dir = base.join(&template.id);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => log::warn!(
            "template {} discarded: the next sandbox of its kind builds it again",
            template.id
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("discarding template {}: {e}", dir.display()),
    }
}

/// Removes every template (and any half-built one); returns how many
/// entries went.
pub fn clear(base: &Path) -> Result<usize, TemplateError> {
    let Ok(entries) = std::fs::read_dir(base) else {
        return Ok(0);
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let gone = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        gone.map_err(io("removing", &path))?;
        removed += 1;
    }
    Ok(removed)
}

/// An exclusive lock on a template's id, held while it is built, so two
/// shims starting the first sandboxes of a kind build it once.
struct BuildLock {
    /// Closing it releases the lock.
    _file: File,
}

impl BuildLock {
    fn take(path: &Path) -> Result<Self, TemplateError> {
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io("opening the lock", path))?;
        // A blocking flock on a dedicated thread: the build may take a
        // cold boot's time.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
            return Err(io("locking", path)(std::io::Error::last_os_error()));
        }
        Ok(BuildLock { _file: file })
    }
}

/// The template for `spec`'s kind of sandbox: found, or built now (a cold
/// boot, saved when its agent answers).
pub async fn ensure(
    base: &Path,
    spec: &VmmSpec,
    boot: Duration,
) -> Result<Template, TemplateError> {
    let key = TemplateKey::of(spec)?;
    if let Some(template) = find(base, &key) {
        return Ok(template);
    }
    template_dir(base)?;
    let lock_path = base.join(format!("{}.lock", key.id()));
    let taken = tokio::task::spawn_blocking({
        let lock_path = lock_path.clone();
        move || BuildLock::take(&lock_path)
    })
    .await;
    let lock = taken.map_err(|e| io("locking", &lock_path)(std::io::Error::other(e)))??;
    let built = match find(base, &key) {
        Some(template) => Ok(template),
        None => build(base, spec, &key, boot).await,
    };
    drop(lock);
    built
}

/// Boots the template VM, saves it once its agent answers, and moves the
/// result into place; a failed build leaves nothing.
async fn build(
    base: &Path,
    spec: &VmmSpec,
    key: &TemplateKey,
    boot: Duration,
) -> Result<Template, TemplateError> {
    let id = key.id();
    let work = base.join(format!("{id}.build"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&work)
        .map_err(io("creating", &work))?;
    let result = boot_and_save(&work, spec, key, boot).await;
    let result = result.and_then(|meta| {
        let dir = base.join(&id);
        let meta_path = work.join(META);
        let json = serde_json::to_vec_pretty(&meta).expect("meta always serialises");
        std::fs::write(&meta_path, json).map_err(io("writing", &meta_path))?;
        let _ = std::fs::remove_file(work.join(ROOTFS_SERIAL));
        std::fs::rename(&work, &dir).map_err(io("moving the template to", &dir))?;
        load(&dir)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

async fn boot_and_save(
    work: &Path,
    spec: &VmmSpec,
    key: &TemplateKey,
    boot: Duration,
) -> Result<TemplateMeta, TemplateError> {
    let path = work.join(ROOTFS_SERIAL);
    File::create(&path).map_err(io("creating", &path))?;
    let drives = vec![Drive {
        path,
        read_only: false,
        id: Some(ROOTFS_SERIAL.into()),
    }];
    let snapshot = work.join(SNAPSHOT);
    let state_dir = state_dir_for("hull-template", &key.id());
    let template_spec = VmmSpec {
        memory_mib: key.memory_mib,
        drives,
        snapshot_file: Some(snapshot.clone()),
        restore_from: None,
        // Never the sandbox's own namespace: the template is everyone's.
        network: Some(NetworkSpec::default()),
        fs: fs_slots(None, None),
        jail: spec.jail.clone().map(|mut jail| {
            jail.id = jail_id(&state_dir);
            jail.memory_bytes = jail.memory_bytes.map(|_| host_memory_bytes(key.memory_mib));
            jail
        }),
        ..spec.clone()
    };
    std::fs::create_dir_all(SANDBOX_STATE_BASE)
        .map_err(io("creating", Path::new(SANDBOX_STATE_BASE)))?;
    let _ = std::fs::remove_dir_all(&state_dir);
    let mut vmm = VmmProcess::spawn(&template_spec, &state_dir)?;
    let started = Instant::now();
    let agent = wait_for_agent(&mut vmm, boot).await?;
    let boot_ms = started.elapsed().as_millis() as u64;
    // A template holds no connection: the one that checked the agent is
    // closed before the save.
    drop(agent);
    let saving = Instant::now();
    let saved = tokio::time::timeout(SAVE_TIMEOUT, vmm.api_request(&VmmRequest::Snapshot)).await;
    let save_ms = saving.elapsed().as_millis() as u64;
    let saved = match saved {
        Ok(Ok(VmmResponse::Ok {
            state: VmState::Paused,
        })) => Ok(()),
        Ok(Ok(other)) => Err(TemplateError::Save(format!("{other:?}"))),
        Ok(Err(e)) => Err(TemplateError::Save(hull_protocol::error_chain(&e))),
        Err(_) => Err(TemplateError::Save(format!(
            "no answer in {SAVE_TIMEOUT:?}"
        ))),
    };
    let _ = vmm.api_request(&VmmRequest::Shutdown).await;
    let _ = vmm.stop(Duration::from_secs(10)).await;
    drop(vmm);
    saved?;
    // The jail made the file its uid's; restores only read it.
    let c_path = std::ffi::CString::new(snapshot.as_os_str().as_encoded_bytes())
        .map_err(|e| io("naming", &snapshot)(std::io::Error::other(e)))?;
    // SAFETY: a NUL-terminated path; chown only changes ownership.
    if unsafe { libc::chown(c_path.as_ptr(), 0, 0) } != 0 {
        return Err(io("chown", &snapshot)(std::io::Error::last_os_error()));
    }
    std::fs::set_permissions(
        &snapshot,
        std::os::unix::fs::PermissionsExt::from_mode(0o444),
    )
    .map_err(io("chmod", &snapshot))?;
    let built_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    log::info!(
        "template {} built: agent ready after {boot_ms} ms, saved in {save_ms} ms",
        key.id()
    );
    Ok(TemplateMeta {
        key: key.clone(),
        built_at,
        boot_ms,
        save_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_rounds_up_to_a_class() {
        assert_eq!(memory_class(64), 256);
        assert_eq!(memory_class(256), 256);
        assert_eq!(memory_class(257), 512);
        assert_eq!(memory_class(352), 512);
        assert_eq!(memory_class(4000), 4096);
    }

    #[test]
    fn keys_differ_by_every_input_and_templates_list_and_clear() {
        let key = TemplateKey {
            vmm_sha256: "a".into(),
            kernel_sha256: "b".into(),
            initramfs_sha256: "c".into(),
            kernel_args: vec![],
            vcpus: 1,
            memory_mib: 256,
            layout: LAYOUT_VERSION,
        };
        let other = TemplateKey {
            initramfs_sha256: "d".into(),
            ..key.clone()
        };
        assert_ne!(key.id(), other.id());
        assert_eq!(key.id().len(), 16);
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join(key.id());
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(SNAPSHOT), b"").unwrap();
        let meta = TemplateMeta {
            key: key.clone(),
            built_at: 1,
            boot_ms: 2,
            save_ms: 3,
        };
        std::fs::write(dir.join(META), serde_json::to_vec(&meta).unwrap()).unwrap();
        assert_eq!(find(base.path(), &key).unwrap().meta, meta);
        assert!(find(base.path(), &other).is_none());
        assert_eq!(list(base.path()).len(), 1);
        std::fs::write(base.path().join("x.lock"), b"").unwrap();
        assert_eq!(clear(base.path()).unwrap(), 2);
        assert!(list(base.path()).is_empty());
    }
}
