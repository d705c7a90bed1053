//! The SMP guest kernel on two vCPUs: the guest brings up both CPUs (the MP
//! table, the CPUID topology and the application-processor start-up all
//! have to be right for that) and the agent still answers and shuts down.

use std::time::Duration;

use hull_protocol::vmm_api::exit_code;
use hull_tests::sandbox::{self, diagnostics};
use hull_tests::{assert_exit_code, prereq, test_dir, within, EXIT_TIMEOUT};

const TEST_LIMIT: Duration = Duration::from_secs(300);

// Known failure on nested PVM (this development machine): the application
// processor starts ("CPU 1 Converting physical 0 to logical die 1") and the
// boot then stops there. Not yet diagnosed; 1-vCPU guests are unaffected.
// Run it with `cargo test -p hull-tests --test smp_boot -- --ignored`.
#[tokio::test(flavor = "current_thread")]
#[ignore = "2-vCPU guests hang in AP bring-up under nested PVM; run with --ignored"]
async fn smp_guest_brings_up_two_vcpus_kvm() {
    prereq::require_kvm();
    let mut spec = sandbox::agent_spec();
    spec.kernel = prereq::kernel_smp();
    spec.vcpus = 2;
    spec.verbose_boot = true;
    let dir = test_dir();
    let state_dir = dir.path().join("sandbox");
    within(TEST_LIMIT, "smp_guest_brings_up_two_vcpus_kvm", async {
        let mut vmm = sandbox::spawn(&spec, &state_dir);
        let agent = sandbox::wait_agent(&mut vmm).await;
        let console =
            std::fs::read_to_string(vmm.state_dir().join("console.log")).unwrap_or_default();
        assert!(
            console.contains("smp: Brought up 1 node, 2 CPUs"),
            "the guest did not bring up 2 CPUs; {}",
            diagnostics(&vmm)
        );
        agent.ping().await.expect("Ping on the SMP guest");
        let _ = agent.shutdown().await;
        drop(agent);
        let status = sandbox::wait_exit(&mut vmm, EXIT_TIMEOUT).await;
        assert_exit_code(status, exit_code::OK, &vmm.log_tail(20));
        sandbox::assert_ended_clean(vmm, dir.path());
    })
    .await;
}
