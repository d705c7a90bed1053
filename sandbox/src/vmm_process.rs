//! `hull-vmm` as a child process: started with an explicit command line,
//! its sockets and logs in a state directory of its own, and never leaked:
//! dropping a [`VmmProcess`] kills the VMM if it still runs and removes the
//! state directory.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hull_protocol::vmm_api::{VmmRequest, VmmResponse};
use hull_protocol::vmm_config::{
    Console, NetConfig, SeccompMode, TapConfig, VmConfig, VsockConfig, DEFAULT_GUEST_CID,
};
use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum VmmProcessError {
    #[error("creating the sandbox state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for the VMM")]
    Wait(#[source] std::io::Error),
    #[error("opening the network namespace {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the VMM's control socket")]
    Api {
        #[source]
        source: std::io::Error,
    },
}

/// A raw disk image for the guest (the VMM's own drive config).
pub use hull_protocol::vmm_config::BlockConfig as Drive;
pub use hull_protocol::vmm_config::FsConfig;

/// Start the VMM through `hull-jailer` (see jailer/): namespaces, a
/// pivot_root into the state directory's jail, an unprivileged uid, no
/// capabilities, a host cgroup sized from these limits.
#[derive(Debug, Clone)]
pub struct JailSpec {
    pub jailer: PathBuf,
    /// Names the host cgroup (`hull/<id>`) and the default jail uid.
    pub id: String,
    pub memory_bytes: Option<u64>,
    pub pids_max: Option<u64>,
    /// CPU quota and period, in microseconds.
    pub cpu: Option<(u64, u64)>,
}

/// A sandbox's network: the VM gets a virtio-net device on the tap
/// [`TAP_NAME`], made in the sandbox's network namespace. What the
/// container's network plugin puts in that namespace is wired to the tap
/// later (see [`crate::network`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkSpec {
    /// The namespace to live in (the spec's path: CNI, CRI); a new one
    /// when `None`.
    pub netns: Option<PathBuf>,
}

/// The tap of every sandbox, in its own network namespace.
pub const TAP_NAME: &str = "tap0_hull";

/// The VMM's own memory beside guest RAM, for its host cgroup.
pub const VMM_OVERHEAD_BYTES: u64 = 64 << 20;

/// The host cgroup memory limit of a VMM whose guest has `memory_mib`.
pub fn host_memory_bytes(memory_mib: u32) -> u64 {
    (u64::from(memory_mib) << 20) + VMM_OVERHEAD_BYTES
}

/// What to start.
#[derive(Debug, Clone)]
pub struct VmmSpec {
    pub vmm_binary: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u32,
    pub kernel_args: Vec<String>,
    pub drives: Vec<Drive>,
    /// Keep the guest console in `<state dir>/console.log`.
    pub console_log: bool,
    pub verbose_boot: bool,
    /// Run jailed; `None` starts the VMM directly (tools, debugging).
    pub jail: Option<JailSpec>,
    /// The VMM's seccomp mode (`enforce` when `None`).
    pub seccomp: Option<SeccompMode>,
    /// Let the control socket save this VM into this file (made empty,
    /// mode 0600, when it does not exist; handed to the jail read-write).
    pub snapshot_file: Option<PathBuf>,
    /// Start from this snapshot instead of booting.
    pub restore_from: Option<PathBuf>,
    /// A network device and the namespace the VMM lives in; `None`: no
    /// device (the VMM still gets an empty namespace when jailed).
    pub network: Option<NetworkSpec>,
    /// The shared-directory devices, in order; their sockets (virtiofsd's)
    /// are handed to the jail.
    pub fs: Vec<FsConfig>,
}

impl VmmSpec {
    /// The VM's config as `hull-vmm --config` reads it, with its sockets
    /// and console in `state_dir`.
    pub fn vm_config(&self, state_dir: &Path) -> VmConfig {
        VmConfig {
            initramfs: Some(self.initramfs.clone()),
            kernel_args: self.kernel_args.clone(),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            console: if self.console_log {
                Console::File(state_dir.join(CONSOLE_LOG))
            } else {
                Console::Off
            },
            verbose_boot: self.verbose_boot,
            drives: self.drives.clone(),
            vsock: Some(VsockConfig {
                guest_cid: DEFAULT_GUEST_CID,
                uds_path: VmmProcess::vsock_path_in(state_dir),
            }),
            api_socket: Some(state_dir.join(API_SOCKET)),
            seccomp: self.seccomp.unwrap_or_default(),
            snapshot_file: self.snapshot_file.clone(),
            restore_from: self.restore_from.clone(),
            fs: self.fs.clone(),
            // Jailed, the jailer makes the tap and passes it as `--tap-fd`;
            // unjailed, the VMM (root) makes it by name in its namespace.
            net: match (&self.network, &self.jail) {
                (Some(_), None) => Some(NetConfig {
                    tap: TapConfig::Name(TAP_NAME.into()),
                    mac: None,
                }),
                _ => None,
            },
            ..VmConfig::new(self.kernel.clone())
        }
    }
}

/// What the sandbox's state directory holds.
const VM_CONFIG: &str = "vmm.json";
const CONSOLE_LOG: &str = "console.log";
const API_SOCKET: &str = "api.sock";

pub struct VmmProcess {
    child: Child,
    state_dir: PathBuf,
    started: Instant,
    exit: Option<ExitStatus>,
}

impl VmmProcess {
    /// Start the VMM. `state_dir` must not exist yet; it is created here and
    /// removed when the process handle is dropped.
    pub fn spawn(spec: &VmmSpec, state_dir: &Path) -> Result<Self, VmmProcessError> {
        let dir_err = |source| VmmProcessError::StateDir {
            path: state_dir.into(),
            source,
        };
        // The guest's console and the VMM's log are nobody else's to read.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(state_dir)
            .map_err(dir_err)?;
        let cleanup_on_error = |e| {
            let _ = std::fs::remove_dir_all(state_dir);
            e
        };
        let log = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(state_dir.join("vmm.log"))
            .map_err(dir_err)
            .map_err(cleanup_on_error)?;
        // The VMM reads its config inside the jail as the jail's uid: the
        // directory (0700) keeps it private, the file itself is readable.
        let config_path = state_dir.join(VM_CONFIG);
        File::options()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&config_path)
            .and_then(|mut file| {
                std::io::Write::write_all(&mut file, spec.vm_config(state_dir).to_json().as_bytes())
            })
            .map_err(dir_err)
            .map_err(cleanup_on_error)?;
        if let Some(snapshot) = &spec.snapshot_file {
            File::options()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(snapshot)
                .map_err(dir_err)
                .map_err(cleanup_on_error)?;
        }
        let mut cmd = match &spec.jail {
            None => {
                let mut cmd = Command::new(&spec.vmm_binary);
                if let Some(network) = &spec.network {
                    enter_netns_before_exec(&mut cmd, network).map_err(cleanup_on_error)?;
                }
                cmd
            }
            Some(jail) => jailer_command(spec, jail, state_dir),
        };
        cmd.arg("--config").arg(&config_path);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|source| VmmProcessError::Spawn {
                binary: spec.vmm_binary.clone(),
                source,
            })
            .map_err(cleanup_on_error)?;
        Ok(Self {
            child,
            state_dir: state_dir.into(),
            started,
            exit: None,
        })
    }

    /// One request on the VMM's control socket, and its answer.
    pub async fn api_request(&self, request: &VmmRequest) -> Result<VmmResponse, VmmProcessError> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let api = |source| VmmProcessError::Api { source };
        let mut stream = tokio::net::UnixStream::connect(self.api_path())
            .await
            .map_err(api)?;
        let mut line = serde_json::to_string(request).expect("a request always serialises");
        line.push('\n');
        stream.write_all(line.as_bytes()).await.map_err(api)?;
        let mut answer = String::new();
        BufReader::new(stream)
            .read_line(&mut answer)
            .await
            .map_err(api)?;
        serde_json::from_str(&answer).map_err(|e| api(std::io::Error::other(e)))
    }

    /// The pid of the process started: the VMM, or its jailer's supervisor.
    pub fn child_pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn vsock_path_in(dir: &Path) -> PathBuf {
        dir.join("vsock.sock")
    }

    /// The host end of the guest's vsock device (hybrid vsock).
    pub fn vsock_path(&self) -> PathBuf {
        Self::vsock_path_in(&self.state_dir)
    }

    /// The VMM's control socket.
    pub fn api_path(&self) -> PathBuf {
        self.state_dir.join(API_SOCKET)
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// When the VMM was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The exit status, if the VMM has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Wait up to `timeout` for the VMM to end by itself.
    pub async fn wait(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, VmmProcessError> {
        if let Some(status) = self.exit {
            return Ok(Some(status));
        }
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                self.exit = Some(status.map_err(VmmProcessError::Wait)?);
                Ok(self.exit)
            }
            Err(_) => Ok(None),
        }
    }

    /// Ask the VMM to stop (SIGTERM), then kill it if it has not ended
    /// within `grace`. Returns how it ended.
    pub async fn stop(&mut self, grace: Duration) -> Result<ExitStatus, VmmProcessError> {
        if self.try_exit().is_none() {
            if let Some(pid) = self.child.id() {
                // SAFETY: kill(2) with a pid we spawned and have not reaped
                // (try_exit saw it running), so it cannot name another process.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            }
            if self.wait(grace).await?.is_none() {
                let _ = self.child.start_kill();
                self.exit = Some(self.child.wait().await.map_err(VmmProcessError::Wait)?);
            }
        }
        Ok(self.exit.expect("the VMM has exited"))
    }

    /// The last `n` lines the VMM logged.
    pub fn log_tail(&self, n: usize) -> Vec<String> {
        tail(&self.state_dir.join("vmm.log"), n)
    }

    /// The last `n` lines of the guest console (when `console_log` was set).
    pub fn console_tail(&self, n: usize) -> Vec<String> {
        tail(&self.state_dir.join(CONSOLE_LOG), n)
    }
}

/// `hull-jailer --id ... -- ` in front of the VMM's own arguments: the
/// files the VMM opens are listed so the jail holds them (at their own
/// paths, so the VMM's arguments stay as they are).
fn jailer_command(spec: &VmmSpec, jail: &JailSpec, state_dir: &Path) -> Command {
    let mut cmd = Command::new(&jail.jailer);
    cmd.arg("--id")
        .arg(&jail.id)
        .arg("--exec-file")
        .arg(&spec.vmm_binary)
        .arg("--run-dir")
        .arg(state_dir)
        .arg("--ro")
        .arg(&spec.kernel)
        .arg("--ro")
        .arg(&spec.initramfs);
    for drive in &spec.drives {
        cmd.arg(if drive.read_only { "--ro" } else { "--rw" })
            .arg(&drive.path);
    }
    if let Some(snapshot) = &spec.restore_from {
        cmd.arg("--ro").arg(snapshot);
    }
    for socket in spec.fs.iter().filter_map(|fs| fs.socket.as_ref()) {
        // Bind-mounted at its path and handed to the jail's uid, which
        // connects to it.
        cmd.arg("--socket").arg(socket);
    }
    if let Some(snapshot) = &spec.snapshot_file {
        cmd.arg("--rw").arg(snapshot);
    }
    if let Some(network) = &spec.network {
        cmd.arg("--tap").arg(TAP_NAME);
        if let Some(netns) = &network.netns {
            cmd.arg("--netns").arg(netns);
        }
    }
    if let Some(bytes) = jail.memory_bytes {
        cmd.arg("--memory-bytes").arg(bytes.to_string());
    }
    if let Some(max) = jail.pids_max {
        cmd.arg("--pids-max").arg(max.to_string());
    }
    if let Some((quota, period)) = jail.cpu {
        cmd.arg("--cpu-quota-us")
            .arg(quota.to_string())
            .arg("--cpu-period-us")
            .arg(period.to_string());
    }
    cmd.arg("--");
    cmd
}

/// An unjailed VMM enters the sandbox's network namespace (or a new one)
/// between fork and exec, as the jailer would.
fn enter_netns_before_exec(
    cmd: &mut Command,
    network: &NetworkSpec,
) -> Result<(), VmmProcessError> {
    use std::os::fd::OwnedFd;
    let netns: Option<OwnedFd> = match &network.netns {
        Some(path) => Some(
            File::open(path)
                .map_err(|source| VmmProcessError::Netns {
                    path: path.clone(),
                    source,
                })?
                .into(),
        ),
        None => None,
    };
    // SAFETY: the closure runs between fork and exec and calls only
    // setns/unshare (see enter_before_exec), which are async-signal-safe.
    unsafe {
        cmd.pre_exec(crate::network::enter_before_exec(netns));
    }
    Ok(())
}

/// The most of a log file [`tail`] reads: the guest decides how much the
/// console gets, and the VMM's log only has a rate limit.
const TAIL_BYTES: u64 = 64 * 1024;

/// The last `n` lines of `path`, from its last [`TAIL_BYTES`] at most.
fn tail(path: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut bytes = Vec::new();
    if let Ok(mut file) = File::open(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)));
        let _ = file.take(TAIL_BYTES).read_to_end(&mut bytes);
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Describe an exit status the way `hull-vmm` defines its exit codes.
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!(
            "exit code {code} ({})",
            hull_protocol::vmm_api::exit_code::describe(code)
        ),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown exit".into(),
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            if let Some(pid) = self.child.id() {
                // SAFETY: the child is ours and not yet reaped (try_exit saw
                // it running), so the pid cannot have been reused.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                let mut status = 0;
                // SAFETY: as above; reap it so no zombie outlives the handle.
                unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vm_config_puts_sockets_and_console_in_the_state_dir() {
        let spec = VmmSpec {
            vmm_binary: "/usr/local/bin/hull-vmm".into(),
            kernel: "/k".into(),
            initramfs: "/i.cpio".into(),
            vcpus: 1,
            memory_mib: 256,
            kernel_args: vec!["quiet".into()],
            drives: vec![Drive {
                path: "/b/rootfs.img".into(),
                read_only: false,
                id: Some("rootfs".into()),
            }],
            console_log: true,
            verbose_boot: false,
            jail: None,
            seccomp: Some(SeccompMode::Log),
            snapshot_file: None,
            restore_from: None,
            network: None,
            fs: Vec::new(),
        };
        let state = Path::new("/run/hull/sandboxes/x");
        let config = spec.vm_config(state);
        assert_eq!(config.kernel, Path::new("/k"));
        assert_eq!(config.initramfs.as_deref(), Some(Path::new("/i.cpio")));
        assert_eq!((config.vcpus, config.memory_mib), (1, 256));
        assert_eq!(config.console, Console::File(state.join("console.log")));
        assert_eq!(config.api_socket, Some(state.join("api.sock")));
        let vsock = config.vsock.as_ref().unwrap();
        assert_eq!(vsock.uds_path, state.join("vsock.sock"));
        assert_eq!(config.drives, spec.drives);
        assert_eq!(config.seccomp, SeccompMode::Log);
        let quiet = VmmSpec {
            console_log: false,
            seccomp: None,
            ..spec
        }
        .vm_config(state);
        assert_eq!(
            (quiet.console, quiet.seccomp),
            (Console::Off, SeccompMode::Enforce)
        );
    }
}
