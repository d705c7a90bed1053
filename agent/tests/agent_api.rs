//! Drives the real `hull-agent` binary as a host process (not PID 1): it
//! serves the agent API on a Unix socket in a temp dir, and a ttrpc client
//! calls it as the shim would over vsock.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hull_protocol::agent_api::agent::{PingRequest, ShutdownRequest, VersionRequest};
use hull_protocol::agent_api::agent_ttrpc::AgentClient;
use hull_protocol::{check_compatible, PROTOCOL_VERSION};
use ttrpc::context;
use ttrpc::r#async::Client;

/// Generous: the same tests run inside slow (emulated) environments.
const DEADLINE: Duration = Duration::from_secs(20);

/// A running agent, killed if a test fails before it exits.
struct Agent {
    child: Option<Child>,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start() -> Agent {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("agent.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_hull-agent"))
            .arg("--listen")
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn hull-agent");
        let agent = Agent {
            child: Some(child),
            socket,
            _dir: dir,
        };
        agent.wait_for_socket();
        agent
    }

    fn wait_for_socket(&self) {
        let start = Instant::now();
        while !self.socket.exists() {
            assert!(
                start.elapsed() < DEADLINE,
                "agent never listened on {}",
                self.socket.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    async fn client(&self) -> AgentClient {
        // The socket file appears at bind(2), just before listen(2): retry.
        let address = format!("unix://{}", self.socket.display());
        let start = Instant::now();
        loop {
            match Client::connect(&address).await {
                Ok(client) => return AgentClient::new(client),
                Err(err) if start.elapsed() > DEADLINE => panic!("connect to the agent: {err}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// Waits for the agent to exit by itself.
    fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("agent still owned");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(start.elapsed() < DEADLINE, "agent did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("agent still owned");
        i32::try_from(child.id()).expect("pid fits i32")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn ctx() -> context::Context {
    context::with_timeout(DEADLINE.as_nanos() as i64)
}

fn status_code(err: ttrpc::Error) -> ttrpc::Code {
    match err {
        ttrpc::Error::RpcStatus(status) => status.code(),
        other => panic!("expected an RPC status, got {other:?}"),
    }
}

fn host_kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("read osrelease")
        .trim()
        .to_owned()
}

fn assert_gone(path: &Path) {
    assert!(!path.exists(), "{} left behind", path.display());
}

#[tokio::test(flavor = "current_thread")]
async fn version_ping_shutdown_round_trip() {
    let mut agent = Agent::start();
    let client = agent.client().await;

    let request = VersionRequest {
        protocol_version: PROTOCOL_VERSION,
        ..Default::default()
    };
    let version = client.version(ctx(), &request).await.expect("Version");
    assert_eq!(version.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(version.protocol_version, PROTOCOL_VERSION);
    check_compatible(version.protocol_version).expect("compatible");
    assert_eq!(version.kernel_release, host_kernel_release());

    client.ping(ctx(), &PingRequest::new()).await.expect("Ping");

    client
        .shutdown(ctx(), &ShutdownRequest::new())
        .await
        .expect("Shutdown is answered before the agent stops");
    let status = agent.wait_exit();
    assert!(status.success(), "agent exited with {status}");
    assert_gone(&agent.socket);
}

#[tokio::test(flavor = "current_thread")]
async fn incompatible_caller_gets_failed_precondition() {
    let agent = Agent::start();
    let client = agent.client().await;
    let request = VersionRequest {
        protocol_version: PROTOCOL_VERSION + 1,
        ..Default::default()
    };
    let err = client
        .version(ctx(), &request)
        .await
        .expect_err("must refuse");
    assert_eq!(status_code(err), ttrpc::Code::FAILED_PRECONDITION);
    // The refusal does not stop the agent.
    client.ping(ctx(), &PingRequest::new()).await.expect("Ping");
}

#[tokio::test(flavor = "current_thread")]
async fn several_clients_are_served_at_once() {
    let agent = Agent::start();
    let first = agent.client().await;
    let second = agent.client().await;
    let (ping, version) = (PingRequest::new(), VersionRequest::new());
    let (a, b) = tokio::join!(first.ping(ctx(), &ping), second.version(ctx(), &version));
    a.expect("Ping");
    assert_eq!(b.expect("Version").protocol_version, PROTOCOL_VERSION);
}

#[test]
fn sigterm_stops_a_host_process_cleanly() {
    let mut agent = Agent::start();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(agent.pid()).expect("nonzero pid"),
        rustix::process::Signal::TERM,
    )
    .expect("send SIGTERM");
    let status = agent.wait_exit();
    assert!(status.success(), "agent exited with {status}");
    assert_gone(&agent.socket);
}

#[test]
fn a_bad_command_line_exits_2_with_usage() {
    let output = Command::new(env!("CARGO_BIN_EXE_hull-agent"))
        .args(["--listen", "tcp://127.0.0.1:1"])
        .output()
        .expect("run hull-agent");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid --listen") && stderr.contains("usage:"),
        "{stderr}"
    );
}

#[test]
fn an_unusable_socket_path_fails_instead_of_hanging() {
    let output = Command::new(env!("CARGO_BIN_EXE_hull-agent"))
        .args(["--listen", "unix:///nonexistent-dir/agent.sock"])
        .output()
        .expect("run hull-agent");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot listen on unix:///nonexistent-dir/agent.sock"),
        "{stderr}"
    );
}
