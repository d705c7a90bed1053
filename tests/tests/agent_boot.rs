//! One boot of the product guest (real kernel, hull-agent as /init) through
//! `hull-shim`'s sandbox library, checking in that one boot everything that
//! needs a running agent: Version, Ping, a refused hybrid-vsock CONNECT, a
//! pause that freezes the guest and a resume that thaws it, and finally the
//! Shutdown call, after which the VMM must exit 0 and leave nothing behind.

use std::time::{Duration, Instant};

use hull_protocol::vmm_api::{exit_code, VmState, VmmRequest};
use hull_protocol::PROTOCOL_VERSION;
use hull_sandbox::hybrid_vsock::{self, HybridVsockError};
use hull_tests::sandbox::{self, diagnostics};
use hull_tests::{assert_exit_code, control, prereq, test_dir, within, EXIT_TIMEOUT};

/// A guest port nothing listens on.
const UNUSED_PORT: u32 = 4444;
/// How long the host waits for the guest's answer to a CONNECT; the VMM
/// itself gives the guest 5 s before it gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a Ping to a paused guest is given before we call it unanswered.
const PAUSED_PING_WAIT: Duration = Duration::from_secs(3);
/// The whole test: boot (≤ 120 s), the checks, shutdown (≤ 30 s).
const TEST_LIMIT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "current_thread")]
async fn boot_agent_and_shutdown_kvm() {
    prereq::require_kvm();
    let spec = sandbox::agent_spec();
    let dir = test_dir();
    let state_dir = dir.path().join("sandbox");
    within(TEST_LIMIT, "boot_agent_and_shutdown_kvm", async {
        let mut vmm = sandbox::spawn(&spec, &state_dir);
        let agent = sandbox::wait_agent(&mut vmm).await;
        eprintln!("agent ready {:?} after VMM start", vmm.started().elapsed());

        let version = agent.version();
        assert_eq!(version.protocol_version, PROTOCOL_VERSION, "{version:?}");
        assert!(!version.kernel_release.is_empty(), "{version:?}");
        assert!(!version.agent_version.is_empty(), "{version:?}");
        agent.ping().await.expect("Ping");

        // A CONNECT to a port nobody listens on fails with the stream
        // closed, in about one guest round trip: not a hang, not a timeout.
        let asked = Instant::now();
        let refused = hybrid_vsock::connect(&vmm.vsock_path(), UNUSED_PORT, CONNECT_TIMEOUT).await;
        assert!(
            matches!(refused, Err(HybridVsockError::Refused { port: UNUSED_PORT })),
            "CONNECT {UNUSED_PORT} with no listener in the guest: expected Refused, got {refused:?} after {:?}",
            asked.elapsed()
        );
        eprintln!("CONNECT {UNUSED_PORT} refused after {:?}", asked.elapsed());
        agent
            .ping()
            .await
            .expect("Ping after a refused CONNECT on the same vsock device");

        // Pause: the vCPUs stop, so the agent cannot answer; resume: it does.
        let api = vmm.api_path();
        control::expect_state(&api, VmmRequest::Status, VmState::Running).await;
        control::expect_state(&api, VmmRequest::Pause, VmState::Paused).await;
        control::expect_state(&api, VmmRequest::Status, VmState::Paused).await;
        let paused_ping = tokio::time::timeout(PAUSED_PING_WAIT, agent.ping()).await;
        assert!(
            paused_ping.is_err(),
            "a paused guest answered Ping: {paused_ping:?}"
        );
        control::expect_state(&api, VmmRequest::Resume, VmState::Running).await;
        agent
            .ping()
            .await
            .unwrap_or_else(|e| panic!("Ping after resume: {e:?}; {}", diagnostics(&vmm)));

        // Shutdown: the reply may race the guest's power-off, so only the
        // VMM's exit code counts.
        let asked = Instant::now();
        let _ = agent.shutdown().await;
        drop(agent);
        let status = sandbox::wait_exit(&mut vmm, EXIT_TIMEOUT).await;
        eprintln!("VMM exited {:?} after Shutdown", asked.elapsed());
        assert_exit_code(status, exit_code::OK, &vmm.log_tail(20));
        sandbox::assert_ended_clean(vmm, dir.path());
    })
    .await;
}
