//! The shim process itself (containerd's `start`, `delete` and serve
//! modes), on containerd-shim 0.11's async `Shim` trait.
//!
//! `start` forks the serving shim (one per container, or per Kubernetes
//! pod: a pod's containers are grouped under its sandbox id, so they reach
//! the shim that runs the pod's VM) and prints its socket address;
//! `delete` is how containerd cleans up after a shim that died: it removes
//! whatever that shim's container left on the host.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::{Config, DeleteResponse, Flags, StartOpts};

use hull_sandbox::state::{remove_leftovers, state_dir_for};

use crate::task::create::bundle_files;
use crate::task::process::timestamp;
use crate::task::HullTask;

/// How long `delete` waits for the processes it killed to end.
const KILLED_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct HullShim {
    id: String,
    namespace: String,
    bundle: PathBuf,
    exit: Arc<ExitSignal>,
    /// The task service, once serving: SIGTERM stops its VMs.
    task: OnceLock<HullTask>,
}

#[async_trait]
impl Shim for HullShim {
    type T = HullTask;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        Self {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            bundle,
            exit: Arc::new(ExitSignal::default()),
            task: OnceLock::new(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // One shim (and one VM) per container, or per pod: the CRI names a
        // pod's containers' sandbox, whose shim then serves them too (the
        // new shim finds the address in use and hands back that one).
        let grouping = grouping_of(&self.bundle, &opts.id);
        let address = spawn(opts, &grouping, Vec::new()).await?;
        // The serving shim removes the socket named here when it shuts
        // down; `delete` removes it after a shim that died.
        std::fs::write(self.bundle.join("address"), &address).map_err(|e| {
            containerd_shim::Error::Other(format!("writing the shim address file: {e}"))
        })?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        // The serving shim is gone: kill what it started and remove what it
        // made. Its VMM runs under the jailer, whose supervisor named the
        // state directory on its command line.
        let state_dir = state_dir_for(&self.namespace, &self.id);
        kill_processes_naming(&state_dir);
        if let Ok(address) = std::fs::read_to_string(self.bundle.join("address")) {
            // A pod's shim serves its other containers still: containerd
            // runs `delete` for each of its tasks whose connection closed.
            // Only a socket nobody answers on is a dead shim's.
            let path = address.trim().trim_start_matches("unix://");
            if std::os::unix::net::UnixStream::connect(path).is_err() {
                let _ = std::fs::remove_file(path);
            }
        }
        crate::rootfs::unmount(&self.bundle.join("rootfs"));
        // SIGKILL only queues their end: the host cgroups cannot be removed
        // while the VMM is still in them; this waits for them to empty.
        remove_leftovers(&state_dir, &bundle_files(&self.bundle), KILLED_EXIT_TIMEOUT).await;
        Ok(DeleteResponse {
            exit_status: 137,
            exited_at: MessageField::some(timestamp(std::time::SystemTime::now())),
            ..Default::default()
        })
    }

    /// Serves until Shutdown, or until SIGTERM: the crate only logs that
    /// signal, and a shim whose create failed would otherwise stay behind.
    async fn wait(&mut self) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigterm = match signal(SignalKind::terminate()) {
            Ok(sigterm) => sigterm,
            Err(e) => {
                log::warn!("cannot watch for SIGTERM: {e}");
                self.exit.wait().await;
                return;
            }
        };
        tokio::select! {
            _ = self.exit.wait() => {}
            _ = sigterm.recv() => {
                log::info!("SIGTERM: stopping");
                if let Some(task) = self.task.get() {
                    task.stop_all().await;
                }
            }
        }
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let task = HullTask::new(&self.namespace, publisher, self.exit.clone());
        let _ = self.task.set(task.clone());
        task
    }
}

/// The shim a container belongs to: its pod sandbox's id for a CRI pod's
/// container, else its own.
fn grouping_of(bundle: &std::path::Path, id: &str) -> String {
    let role = hull_sandbox::spec::load(&bundle.join("config.json"))
        .map(|spec| crate::task::pod::Role::of(&spec));
    match role {
        Ok(crate::task::pod::Role::PodMember(sandbox)) => sandbox,
        _ => id.to_owned(),
    }
}

/// SIGKILLs every process whose command line names `dir` (the jailer and
/// the VMM of a dead shim).
fn kill_processes_naming(dir: &std::path::Path) {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for pid in entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            // SAFETY: kill(2) on a pid read from /proc; at worst it is gone.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
