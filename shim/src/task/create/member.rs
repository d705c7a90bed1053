//! Creating a pod's container in its running sandbox: no VM is started.
//! Its rootfs (containerd's snapshot) is mounted at `<id>` in the pod's
//! rootfs share, its host bind mounts at `<id>/<n>` in the binds share
//! (both reach virtiofsd through mount propagation), its namespaces that
//! name the sandbox task's (network, IPC, UTS) become the pod's first
//! container's in the guest, and the agent creates it. On failure its
//! directories in the shares are taken back; the pod goes on.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::protos::api::CreateTaskRequest;
use hull_protocol::agent_api::agent::Storage;
use hull_protocol::vmm_config::ROOTFS_TAG;
use hull_sandbox::spec::Spec;
use tokio::sync::Mutex;

use super::super::phases::Phases;
use super::super::pod::{self, Pod};
use super::super::process::Process;
use super::super::Container;
use super::{create_in_guest, later_hooks, rootfs_source, stdio_of};
use crate::config::ShimConfig;
use crate::error::ShimError;
use crate::guest_spec::for_the_guest;
use crate::hooks::{self, Stage};
use crate::rootfs;

pub(super) async fn create(
    req: &CreateTaskRequest,
    config: &ShimConfig,
    mut spec: Spec,
    pod: Arc<Pod>,
    mut phases: Phases,
) -> Result<Container, ShimError> {
    if let Some(how) = pod.sandbox.stopped() {
        return Err(ShimError::VmGone(how));
    }
    let id = req.id.clone();
    let bundle = PathBuf::from(&req.bundle);
    let created_hooks = hooks::of_stage(&spec, Stage::Created);
    let later_hooks = later_hooks(&spec);
    let joined = pod::joined_namespaces(&spec);
    let (rootfs_dir, mounts) = rootfs_source(req, &bundle, &spec);
    let host_binds = for_the_guest(&mut spec);
    pod::join_in_guest(&mut spec, &joined, pod.first_guest_pid);
    phases.mark("spec");
    if !created_hooks.is_empty() {
        let (hook_id, hook_bundle, pid) = (id.clone(), bundle.clone(), pod.host_pid);
        tokio::task::spawn_blocking(move || {
            hooks::run(&created_hooks, &hook_id, &hook_bundle, pid, "created")
        })
        .await
        .map_err(|e| ShimError::Io {
            what: "running the createRuntime hooks".into(),
            source: std::io::Error::other(e),
        })??;
    }
    // The rootfs and the binds into the pod's shares.
    let (share_pod, share_id, has_binds) = (pod.clone(), id.clone(), !host_binds.is_empty());
    let shared = tokio::task::spawn_blocking(move || -> Result<bool, ShimError> {
        let rootfs_share = share_pod.rootfs_share.lock().expect("share lock");
        let share = rootfs_share.as_ref().ok_or(ShimError::PodRootfsNotShared)?;
        let read_only = rootfs::mount_into(share, &share_id, &mounts, &rootfs_dir)?;
        if !host_binds.is_empty() {
            let mut binds_share = share_pod.binds_share.lock().expect("share lock");
            let binds = binds_share.as_mut().ok_or(ShimError::PodRootfsNotShared)?;
            binds.add_binds(&share_id, &host_binds)?;
        }
        Ok(read_only)
    })
    .await
    .map_err(|e| ShimError::Io {
        what: "sharing the container's rootfs".into(),
        source: std::io::Error::other(e),
    })
    .and_then(|r| r);
    let undo = SharesUndo {
        pod: pod.clone(),
        id: id.clone(),
        armed: true,
    };
    let read_only = shared?;
    phases.mark("share");
    let stdio = stdio_of(req);
    let rootfs = Storage {
        fstype: "virtiofs".into(),
        tag: ROOTFS_TAG.into(),
        subdir: id.clone(),
        readonly: read_only,
        overlay: read_only,
        ..Default::default()
    };
    let boot = Duration::from_secs(config.boot_timeout_secs);
    let binds = has_binds.then_some(id.as_str());
    create_in_guest(&id, &pod.agent, &spec, rootfs, binds, &stdio, boot).await?;
    phases.mark("created");
    undo.disarm();
    log::info!("{id}: created in the VM of pod {}", pod.id);
    let processes = HashMap::from([(String::new(), Arc::new(Process::new("", stdio, None)))]);
    Ok(Container {
        id,
        bundle,
        pod,
        owns_pod: false,
        files: Vec::new(),
        processes: Mutex::new(processes),
        paused: AtomicBool::new(false),
        phases: std::sync::Mutex::new(Some(phases)),
        hooks: later_hooks,
    })
}

/// Takes a failed member's directories out of the pod's shares, unless
/// disarmed.
struct SharesUndo {
    pod: Arc<Pod>,
    id: String,
    armed: bool,
}

impl SharesUndo {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for SharesUndo {
    fn drop(&mut self) {
        if self.armed {
            self.pod.remove_member(&self.id);
        }
    }
}
