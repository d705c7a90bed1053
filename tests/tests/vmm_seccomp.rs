//! The VMM's seccomp filters on a running VM: every thread of `hull-vmm`
//! runs under a filter with no_new_privs, and a syscall outside the lists
//! kills the process. Needs KVM (the filters go in once the guest runs).

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use hull_protocol::vmm_api::{VmState, VmmRequest};
use hull_tests::child::Spawned;
use hull_tests::control::{self, expect_state};
use hull_tests::{prereq, sandbox, test_dir, within};

const API_UP: Duration = Duration::from_secs(30);
const TEST_LIMIT: Duration = Duration::from_secs(90);

/// `field` of a /proc status file, e.g. `Seccomp`.
fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {field} in status:\n{status}"))
}

#[tokio::test(flavor = "current_thread")]
async fn every_vmm_thread_runs_under_seccomp_kvm() {
    prereq::require_kvm();
    let spec = sandbox::agent_spec();
    let dir = test_dir();
    within(
        TEST_LIMIT,
        "every_vmm_thread_runs_under_seccomp_kvm",
        async {
            let mut vmm = sandbox::spawn(&spec, &dir.path().join("sandbox"));
            let api = vmm.api_path();
            control::wait_for_listener(&api, API_UP).await;
            expect_state(&api, VmmRequest::Status, VmState::Running).await;
            let pid = vmm.pid().expect("the VMM runs");
            let mut threads = Vec::new();
            for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("VMM tasks") {
                let task = task.expect("task entry").path();
                let status = std::fs::read_to_string(task.join("status")).expect("task status");
                threads.push((
                    status_field(&status, "Name"),
                    status_field(&status, "Seccomp"),
                    status_field(&status, "NoNewPrivs"),
                ));
            }
            assert!(
                threads.iter().any(|(name, ..)| name.starts_with("vcpu")),
                "no vCPU thread found: {threads:?}"
            );
            for (name, seccomp, no_new_privs) in &threads {
                assert_eq!(
                    seccomp, "2",
                    "thread {name} is not under a seccomp filter: {threads:?}"
                );
                assert_eq!(no_new_privs, "1", "thread {name} lacks no_new_privs");
            }
            expect_state(&api, VmmRequest::Shutdown, VmState::Stopping).await;
            sandbox::wait_exit(&mut vmm, Duration::from_secs(10)).await;
            sandbox::assert_ended_clean(vmm, dir.path());
        },
    )
    .await;
}

#[test]
fn a_forbidden_syscall_kills_the_vmm_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let mut cmd = Command::new(prereq::vmm());
    cmd.arg("--kernel")
        .arg(prereq::kernel())
        .arg("--initramfs")
        .arg(prereq::agent_initramfs())
        .arg("--test-forbidden-syscall");
    let mut vmm = Spawned::start(cmd, &dir.path().join("vmm.log"));
    let status = vmm
        .wait(Duration::from_secs(60))
        .expect("the VMM did not end after its forbidden syscall");
    let log = std::fs::read_to_string(dir.path().join("vmm.log")).unwrap_or_default();
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "the VMM was not killed by seccomp ({status}); its log:\n{log}"
    );
    assert!(
        log.contains("test trigger"),
        "the trigger did not run: {log}"
    );
}
