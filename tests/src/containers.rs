//! Running containers in a booted guest through the raw agent API (the
//! generated `AgentClient`, as the shim will): a VM with the busybox rootfs
//! disk, an OCI spec shaped like containerd's default, and helpers that
//! create, start, read, wait and remove with every wait bounded.

use std::path::Path;
use std::time::Duration;

use hull_protocol::agent_api::agent::{
    CreateContainerRequest, ReadStreamRequest, RemoveContainerRequest, StartContainerRequest,
    StdioOptions, Storage, WaitProcessRequest,
};
use hull_protocol::agent_api::agent_ttrpc::AgentClient;
use hull_protocol::protobuf::MessageField;
use hull_protocol::ttrpc::{self, context, Code};
use hull_protocol::AGENT_VSOCK_PORT;
use hull_sandbox::hybrid_vsock;
use hull_sandbox::vmm_process::{Drive, VmmProcess, VmmSpec};
use serde_json::{json, Value};

use crate::{sandbox, RPC_TIMEOUT};

/// The serial (virtio-blk id) of the rootfs disk.
pub const ROOTFS_SERIAL: &str = "rootfs";
/// How long a process in a test container may take to finish, its
/// container's creation included: a fork+exec costs ~0.2 s in the emulated
/// guest, creating a container 7–20 s, and the host may be loaded (an OOM
/// stage was seen taking 55 s).
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(150);

/// The product guest with `image` attached read-only as the rootfs disk,
/// 256 MiB (containers' page cache and overlays live in guest RAM).
pub fn spec_with_rootfs(image: &Path) -> VmmSpec {
    let mut spec = sandbox::agent_spec();
    spec.memory_mib = 256;
    spec.drives.push(Drive {
        path: image.into(),
        read_only: true,
        id: Some(ROOTFS_SERIAL.into()),
    });
    spec
}

/// Boots (through `sandbox::wait_agent`, which checks the version) and
/// dials a second, raw connection for the container calls.
pub async fn boot(vmm: &mut VmmProcess) -> AgentClient {
    let checked = sandbox::wait_agent(vmm).await;
    drop(checked);
    let stream = hybrid_vsock::connect(&vmm.vsock_path(), AGENT_VSOCK_PORT, RPC_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("dialling the agent: {e:?}"));
    AgentClient::new(ttrpc::r#async::Client::new(stream.into()))
}

/// A context for a call that answers at once.
pub fn ctx() -> context::Context {
    context::with_timeout(RPC_TIMEOUT.as_nanos() as i64)
}

/// A context for a call that waits for a process (reads, waits).
pub fn long_ctx() -> context::Context {
    context::with_timeout(PROCESS_TIMEOUT.as_nanos() as i64)
}

/// The ttrpc status code and message of a failed call.
pub fn status(err: &ttrpc::Error) -> (Code, String) {
    match err {
        ttrpc::Error::RpcStatus(status) => (status.code(), status.message().to_owned()),
        other => panic!("not an RPC status: {other:?}"),
    }
}

/// containerd's default spec for `args`: pid, ipc, uts, mount and network
/// namespaces, its mounts, and the default capabilities.
pub fn oci_spec(args: &[&str]) -> Value {
    let caps = json!(hull_sandbox::policy::DEFAULT_CAPABILITIES);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        "hostname": "hull-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}
            ],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// The rootfs: the busybox disk, read-only under a tmpfs overlay.
pub fn storage() -> Storage {
    Storage {
        disk_serial: ROOTFS_SERIAL.to_owned(),
        fstype: "ext4".to_owned(),
        readonly: true,
        overlay: true,
        ..Default::default()
    }
}

pub fn stdio(stdin: bool, terminal: bool) -> StdioOptions {
    StdioOptions {
        terminal,
        stdin,
        stdout: true,
        stderr: !terminal,
        ..Default::default()
    }
}

/// CreateContainer; the error as it came.
pub async fn try_create(
    agent: &AgentClient,
    id: &str,
    spec: &Value,
    stdio: StdioOptions,
) -> ttrpc::Result<u32> {
    let req = CreateContainerRequest {
        container_id: id.to_owned(),
        oci_spec: serde_json::to_vec(spec).expect("a spec serialises"),
        rootfs: MessageField::some(storage()),
        stdio: MessageField::some(stdio),
        ..Default::default()
    };
    agent
        .create_container(long_ctx(), &req)
        .await
        .map(|r| r.pid)
}

/// CreateContainer then StartContainer; panics on failure.
pub async fn create_and_start(
    agent: &AgentClient,
    id: &str,
    spec: &Value,
    stdio: StdioOptions,
) -> u32 {
    let pid = try_create(agent, id, spec, stdio)
        .await
        .unwrap_or_else(|e| panic!("CreateContainer {id}: {:?}", status(&e)));
    let req = StartContainerRequest {
        container_id: id.to_owned(),
        ..Default::default()
    };
    agent
        .start_container(ctx(), &req)
        .await
        .unwrap_or_else(|e| panic!("StartContainer {id}: {:?}", status(&e)));
    pid
}

/// Everything a stream carries until its end.
pub async fn read_all(agent: &AgentClient, id: &str, exec_id: &str, stderr: bool) -> String {
    let req = ReadStreamRequest {
        container_id: id.to_owned(),
        exec_id: exec_id.to_owned(),
        max_bytes: 64 << 10,
        ..Default::default()
    };
    let mut all = Vec::new();
    loop {
        let result = if stderr {
            agent.read_stderr(long_ctx(), &req).await
        } else {
            agent.read_stdout(long_ctx(), &req).await
        };
        let data = result
            .unwrap_or_else(|e| {
                panic!(
                    "reading {id}/{exec_id:?} (stderr {stderr}): {:?}",
                    status(&e)
                )
            })
            .data;
        if data.is_empty() {
            return String::from_utf8_lossy(&all).into_owned();
        }
        all.extend(data);
    }
}

/// WaitProcess: the exit status.
pub async fn wait(agent: &AgentClient, id: &str, exec_id: &str) -> u32 {
    let req = WaitProcessRequest {
        container_id: id.to_owned(),
        exec_id: exec_id.to_owned(),
        ..Default::default()
    };
    agent
        .wait_process(long_ctx(), &req)
        .await
        .unwrap_or_else(|e| panic!("WaitProcess {id}/{exec_id:?}: {:?}", status(&e)))
        .exit_status
}

pub async fn remove(agent: &AgentClient, id: &str, force: bool) -> ttrpc::Result<()> {
    let req = RemoveContainerRequest {
        container_id: id.to_owned(),
        force,
        ..Default::default()
    };
    agent.remove_container(long_ctx(), &req).await.map(|_| ())
}

/// What a container's init did.
#[derive(Debug)]
pub struct Ran {
    pub status: u32,
    pub stdout: String,
    pub stderr: String,
}

/// Creates, starts, collects the output and the exit of, and removes a
/// container running `spec`.
pub async fn run(agent: &AgentClient, id: &str, spec: &Value) -> Ran {
    create_and_start(agent, id, spec, stdio(false, false)).await;
    let (stdout, stderr, exit) = tokio::join!(
        read_all(agent, id, "", false),
        read_all(agent, id, "", true),
        wait(agent, id, "")
    );
    remove(agent, id, false)
        .await
        .unwrap_or_else(|e| panic!("RemoveContainer {id}: {:?}", status(&e)));
    Ran {
        status: exit,
        stdout,
        stderr,
    }
}
