//! Snapshot and restore through the VMM's control socket, on real KVM: one
//! cold boot of the product guest is saved when its agent is ready; two new
//! VMM processes restore it at the same time and each one's agent answers
//! on its own vsock socket; a VM restored from a truncated, corrupt,
//! foreign-format, foreign-version or mismatched snapshot is refused with
//! what is wrong, and nothing is left behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_protocol::vmm_api::{exit_code, VmState, VmmRequest, VmmResponse};
use hull_protocol::PROTOCOL_VERSION;
use hull_sandbox::vmm_process::VmmSpec;
use hull_tests::sandbox::{self, diagnostics};
use hull_tests::{assert_exit_code, control, test_dir, within, EXIT_TIMEOUT};

/// Boot, save, two restores, the refusals and the shutdowns.
const TEST_LIMIT: Duration = Duration::from_secs(300);

fn restoring(spec: &VmmSpec, snapshot: &Path) -> VmmSpec {
    VmmSpec {
        restore_from: Some(snapshot.into()),
        ..spec.clone()
    }
}

/// Starts a VMM that must refuse `snapshot` and exit with the VMM-error
/// code, its log naming `reason`.
async fn refused(spec: &VmmSpec, snapshot: &Path, state_dir: PathBuf, reason: &str) {
    let mut vmm = sandbox::spawn(&restoring(spec, snapshot), &state_dir);
    let status = sandbox::wait_exit(&mut vmm, EXIT_TIMEOUT).await;
    let log = vmm.log_tail(10).join("\n");
    assert_exit_code(status, exit_code::VMM_ERROR, &vmm.log_tail(10));
    assert!(
        log.contains(reason),
        "restoring {} was refused, but the log does not say {reason:?}:\n{log}",
        snapshot.display()
    );
    drop(vmm);
    assert!(!state_dir.exists(), "{} left behind", state_dir.display());
}

/// A copy of `snapshot` at `to`, changed by `edit`.
fn altered(snapshot: &Path, to: PathBuf, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(snapshot).expect("reading the snapshot");
    edit(&mut bytes);
    std::fs::write(&to, bytes).expect("writing the altered snapshot");
    to
}

#[tokio::test(flavor = "current_thread")]
async fn snapshot_restores_two_independent_vms_and_refuses_bad_files_kvm() {
    hull_tests::prereq::require_kvm();
    let dir = test_dir();
    let spec = sandbox::agent_spec();
    within(TEST_LIMIT, "snapshot_kvm", async {
        // 1. A cold boot, saved once its agent answers (and its connection
        //    is closed again: a snapshot holds no live connection).
        let snapshot = dir.path().join("agent.snap");
        let mut cold = sandbox::spawn(
            &VmmSpec {
                snapshot_file: Some(snapshot.clone()),
                ..spec.clone()
            },
            &dir.path().join("cold"),
        );
        let agent = sandbox::wait_agent(&mut cold).await;
        let booted = cold.started().elapsed();
        drop(agent);
        let saving = Instant::now();
        control::expect_state(&cold.api_path(), VmmRequest::Snapshot, VmState::Paused).await;
        let saved_in = saving.elapsed();
        control::expect_state(&cold.api_path(), VmmRequest::Shutdown, VmState::Stopping).await;
        let status = sandbox::wait_exit(&mut cold, EXIT_TIMEOUT).await;
        assert_exit_code(status, exit_code::OK, &cold.log_tail(20));
        sandbox::assert_ended_clean(cold, dir.path());

        // 2. Two restores at once, each with its own sockets.
        let mut clones: Vec<_> = ["clone-a", "clone-b"]
            .iter()
            .map(|name| sandbox::spawn(&restoring(&spec, &snapshot), &dir.path().join(name)))
            .collect();
        let mut agents = Vec::new();
        for vmm in &mut clones {
            let agent = sandbox::wait_agent(vmm).await;
            eprintln!(
                "restored agent answered {:?} after its VMM started (cold boot: {booted:?}, save: {saved_in:?})",
                vmm.started().elapsed()
            );
            let version = agent.version();
            assert_eq!(version.protocol_version, PROTOCOL_VERSION, "{version:?}");
            agent.ping().await.expect("Ping a restored agent");
            agents.push(agent);
        }
        // Independent: the first one's end leaves the second one running.
        let (first, second) = (agents.remove(0), agents.remove(0));
        let _ = first.shutdown().await;
        drop(first);
        let status = sandbox::wait_exit(&mut clones[0], EXIT_TIMEOUT).await;
        assert_exit_code(status, exit_code::OK, &clones[0].log_tail(20));
        second
            .ping()
            .await
            .unwrap_or_else(|e| panic!("the second clone after the first one ended: {e:?}; {}", diagnostics(&clones[1])));
        let _ = second.shutdown().await;
        drop(second);
        let status = sandbox::wait_exit(&mut clones[1], EXIT_TIMEOUT).await;
        assert_exit_code(status, exit_code::OK, &clones[1].log_tail(20));
        for vmm in clones {
            sandbox::assert_ended_clean(vmm, dir.path());
        }

        // 3. What must never be restored.
        let len = std::fs::metadata(&snapshot).unwrap().len() as usize;
        let cases: Vec<(PathBuf, &str)> = vec![
            (
                altered(&snapshot, dir.path().join("truncated"), |b| b.truncate(len - 4096)),
                "truncated or corrupt",
            ),
            (
                altered(&snapshot, dir.path().join("corrupt"), |b| {
                    let at = b.len() - 4096 * 1024;
                    b[at] ^= 0x55;
                }),
                "guest memory does not match its digest",
            ),
            (
                altered(&snapshot, dir.path().join("format"), |b| b[8] = 99),
                "snapshot format 99",
            ),
            (
                altered(&snapshot, dir.path().join("version"), |b| {
                    let text = String::from_utf8_lossy(&b[24..200]).into_owned();
                    let at = 24 + text.find("\"vmm_version\":\"").expect("the version field") + 15;
                    b[at] = b'9';
                }),
                "this is hull-vmm",
            ),
            (
                altered(&snapshot, dir.path().join("not-a-snapshot"), |b| b[..8].copy_from_slice(b"NOTASNAP")),
                "not a hull snapshot",
            ),
        ];
        for (i, (file, reason)) in cases.iter().enumerate() {
            refused(&spec, file, dir.path().join(format!("refused-{i}")), reason).await;
        }
        // The same snapshot with another initramfs, or another memory size.
        let other_initramfs = dir.path().join("other.cpio");
        let mut cpio = std::fs::read(&spec.initramfs).unwrap();
        cpio.extend_from_slice(&[0u8; 512]);
        std::fs::write(&other_initramfs, cpio).unwrap();
        let other = VmmSpec {
            initramfs: other_initramfs,
            ..spec.clone()
        };
        refused(&other, &snapshot, dir.path().join("refused-initramfs"), "taken with another initramfs").await;
        let bigger = VmmSpec {
            memory_mib: spec.memory_mib * 2,
            ..spec.clone()
        };
        refused(&bigger, &snapshot, dir.path().join("refused-memory"), "this VM has 1 and 256 MiB").await;

        // A VM started without a snapshot file cannot be saved.
        let mut plain = sandbox::spawn(&restoring(&spec, &snapshot), &dir.path().join("plain"));
        let agent = sandbox::wait_agent(&mut plain).await;
        match control::request(&plain.api_path(), &VmmRequest::Snapshot).await {
            VmmResponse::Error { message } => assert!(
                message.contains("without a snapshot_file"),
                "{message}"
            ),
            other => panic!("a snapshot without a snapshot_file: {other:?}"),
        }
        let _ = agent.shutdown().await;
        drop(agent);
        let status = sandbox::wait_exit(&mut plain, EXIT_TIMEOUT).await;
        assert_exit_code(status, exit_code::OK, &plain.log_tail(20));
        sandbox::assert_ended_clean(plain, dir.path());
    })
    .await;
}
