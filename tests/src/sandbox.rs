//! Booting the product guest (kernel + agent initramfs) through `hull-shim`'s
//! sandbox library, the way the shim does, with test-sized timeouts and
//! failure messages that carry the VMM log and the guest console.

use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use hull_sandbox::agent_client::Agent;
use hull_sandbox::vmm_process::{describe_exit, VmmProcess, VmmSpec};

use crate::{leaks, prereq, BOOT_TIMEOUT, RPC_TIMEOUT};

/// The product guest: `$HULL_KERNEL` and `$HULL_INITRAMFS`, 1 vCPU, 128 MiB,
/// console kept in the state directory.
pub fn agent_spec() -> VmmSpec {
    VmmSpec {
        vmm_binary: prereq::vmm(),
        kernel: prereq::kernel(),
        initramfs: prereq::agent_initramfs(),
        vcpus: 1,
        memory_mib: 128,
        kernel_args: Vec::new(),
        drives: Vec::new(),
        console_log: true,
        verbose_boot: false,
        jail: None,
        seccomp: None,
        snapshot_file: None,
        restore_from: None,
        network: None,
        fs: Vec::new(),
    }
}

/// Start the VMM with its state directory at `state_dir`.
pub fn spawn(spec: &VmmSpec, state_dir: &Path) -> VmmProcess {
    VmmProcess::spawn(spec, state_dir)
        .unwrap_or_else(|e| panic!("starting {}: {e:?}", spec.vmm_binary.display()))
}

/// What the VMM logged and the guest printed, for failure messages.
pub fn diagnostics(vmm: &VmmProcess) -> String {
    format!(
        "VMM log:\n  {}\nguest console:\n  {}",
        vmm.log_tail(20).join("\n  "),
        vmm.console_tail(20).join("\n  ")
    )
}

/// Wait for the agent to answer (at most [`BOOT_TIMEOUT`] after VMM start).
pub async fn wait_agent(vmm: &mut VmmProcess) -> Agent {
    let uds = vmm.vsock_path();
    let deadline = vmm.started() + BOOT_TIMEOUT;
    let mut exited = None;
    let result = Agent::wait_ready(&uds, deadline, RPC_TIMEOUT, || {
        exited = vmm.try_exit();
        exited.is_some()
    })
    .await;
    match (result, exited) {
        (Ok(agent), _) => agent,
        (Err(e), Some(status)) => panic!(
            "the VMM exited ({}) before the agent answered ({e:?}); {}",
            describe_exit(status),
            diagnostics(vmm)
        ),
        (Err(e), None) => panic!(
            "the agent did not answer within {BOOT_TIMEOUT:?}: {e:?}; {}",
            diagnostics(vmm)
        ),
    }
}

/// Wait up to `timeout` for the VMM to end by itself; fail if it does not.
pub async fn wait_exit(vmm: &mut VmmProcess, timeout: Duration) -> ExitStatus {
    match vmm.wait(timeout).await {
        Ok(Some(status)) => status,
        Ok(None) => panic!(
            "the VMM did not exit within {timeout:?}; {}",
            diagnostics(vmm)
        ),
        Err(e) => panic!("waiting for the VMM: {e:?}"),
    }
}

/// After the VMM exited: it removed its own sockets from the state
/// directory. Then drop the handle and check the state directory is gone
/// and no process names `test_dir`.
pub fn assert_ended_clean(vmm: VmmProcess, test_dir: &Path) {
    for socket in [vmm.vsock_path(), vmm.api_path()] {
        leaks::assert_gone(&socket, "VMM socket");
    }
    leaks::assert_no_sockets(vmm.state_dir());
    let state_dir = vmm.state_dir().to_path_buf();
    drop(vmm);
    leaks::assert_gone(&state_dir, "state directory");
    leaks::assert_clean(test_dir);
}
