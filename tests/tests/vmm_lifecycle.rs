//! Stopping a running VM from the host: the control socket (status, pause,
//! resume, shutdown) and SIGTERM. The guest is the product guest, started
//! through `hull-shim`'s `VmmProcess`; it only has to be running (booting
//! counts), so these tests do not wait for the agent.

use std::time::{Duration, Instant};

use hull_protocol::vmm_api::{exit_code, VmState, VmmRequest, VmmResponse};
use hull_tests::control::{self, expect_state};
use hull_tests::sandbox;
use hull_tests::{assert_exit_code, prereq, test_dir, within};

/// How long the VMM may take to exit once told to stop: it kicks the vCPUs
/// out of KVM_RUN (2 s at most) and removes its sockets.
const PROMPT: Duration = Duration::from_secs(10);
/// How long the VMM may take to start serving its control socket.
const API_UP: Duration = Duration::from_secs(30);
/// Let the guest kernel run a little before stopping it.
const GUEST_RUNS: Duration = Duration::from_secs(2);
const TEST_LIMIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "current_thread")]
async fn control_socket_kvm() {
    prereq::require_kvm();
    let spec = sandbox::agent_spec();
    let dir = test_dir();
    let state_dir = dir.path().join("sandbox");
    within(TEST_LIMIT, "control_socket_kvm", async {
        let mut vmm = sandbox::spawn(&spec, &state_dir);
        let api = vmm.api_path();
        control::wait_for_listener(&api, API_UP).await;
        expect_state(&api, VmmRequest::Status, VmState::Running).await;
        expect_state(&api, VmmRequest::Pause, VmState::Paused).await;
        expect_state(&api, VmmRequest::Status, VmState::Paused).await;
        // Pausing twice is harmless.
        expect_state(&api, VmmRequest::Pause, VmState::Paused).await;
        expect_state(&api, VmmRequest::Resume, VmState::Running).await;
        expect_state(&api, VmmRequest::Status, VmState::Running).await;

        // A malformed request gets an error response and changes nothing.
        let bad = control::request_line(&api, "{\"op\":\"reboot\"}").await;
        assert!(
            matches!(&bad, VmmResponse::Error { message } if message.contains("reboot")),
            "unknown op: expected an error naming it, got {bad:?}"
        );
        tokio::time::sleep(GUEST_RUNS).await;
        assert!(
            vmm.try_exit().is_none(),
            "the VMM exited after a bad request; {}",
            sandbox::diagnostics(&vmm)
        );

        let asked = Instant::now();
        expect_state(&api, VmmRequest::Shutdown, VmState::Stopping).await;
        let status = sandbox::wait_exit(&mut vmm, PROMPT).await;
        eprintln!(
            "VMM exited {:?} after the shutdown request",
            asked.elapsed()
        );
        assert_exit_code(status, exit_code::OK, &vmm.log_tail(20));
        sandbox::assert_ended_clean(vmm, dir.path());
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn sigterm_stops_vm_kvm() {
    prereq::require_kvm();
    let spec = sandbox::agent_spec();
    let dir = test_dir();
    let state_dir = dir.path().join("sandbox");
    within(TEST_LIMIT, "sigterm_stops_vm_kvm", async {
        let mut vmm = sandbox::spawn(&spec, &state_dir);
        let api = vmm.api_path();
        control::wait_for_listener(&api, API_UP).await;
        expect_state(&api, VmmRequest::Status, VmState::Running).await;
        tokio::time::sleep(GUEST_RUNS).await;

        // `stop` sends SIGTERM and only kills (SIGKILL) after `PROMPT`: an
        // exit code of 0 means the VMM stopped by itself on SIGTERM.
        let asked = Instant::now();
        let status = vmm
            .stop(PROMPT)
            .await
            .unwrap_or_else(|e| panic!("stopping the VMM: {e:?}"));
        let took = asked.elapsed();
        eprintln!("VMM exited {took:?} after SIGTERM");
        assert_exit_code(status, exit_code::OK, &vmm.log_tail(20));
        assert!(took < PROMPT, "SIGTERM took {took:?}");
        sandbox::assert_ended_clean(vmm, dir.path());
    })
    .await;
}
