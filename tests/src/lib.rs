//! hull-tests: helpers for hull's integration tests (`tests/tests/*.rs`).
//!
//! The tests drive the real binaries as processes (`hull-vmm`, `hull`) and
//! the real sandbox library (`hull-shim`), booting the real guest kernel:
//! no mocks. What they need comes from the environment ([`prereq`]); a test
//! whose prerequisite is missing fails with a message saying how to get it,
//! it never passes by returning early. Every wait is bounded ([`child`],
//! [`poll`], [`within`]) and every test ends by checking that nothing it
//! started is left behind ([`leaks`]).
//!
//! Depends on `hull-protocol` and `hull-shim` (the host side, as a user of
//! hull sees it), never on the VMM or the agent crates.

pub mod child;
pub mod console;
pub mod containerd;
pub mod containers;
pub mod control;
pub mod cri;
pub mod docker;
pub mod ext4;
pub mod leaks;
pub mod netns;
pub mod poll;
pub mod prereq;
pub mod rootfs;
pub mod sandbox;
pub mod terminal;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

/// How long a guest may take from VMM start to a ready agent. Boots take
/// 5–30 s on nested PVM (the guest kernel is emulated); the rest is margin
/// for a loaded 2-core host.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one agent call may take.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a VMM may take to exit once it was asked to (guest reboot,
/// control-socket shutdown, SIGTERM).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `hull-vmm` may take to reject bad input.
pub const REJECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A fresh temporary directory for one test, with a short path: socket
/// paths inside it must stay under the 107-byte Unix limit.
pub fn test_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hull-test-")
        .tempdir_in("/tmp")
        .expect("creating a temporary directory in /tmp")
}

/// Run `test` with a watchdog: if it has not finished within `limit` it is
/// dropped (which kills any VMM it started through `hull-shim`'s
/// `VmmProcess`) and the test fails.
pub async fn within<T>(limit: Duration, what: &str, test: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, test).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: did not finish within {limit:?} (watchdog); its VMM was killed"),
    }
}

/// The exit code `status` must have, with the VMM's log on failure.
pub fn assert_exit_code(status: std::process::ExitStatus, expected: i32, log: &[String]) {
    assert_eq!(
        status.code(),
        Some(expected),
        "hull-vmm ended with {} (expected exit code {expected}: {}); VMM log:\n  {}",
        hull_sandbox::vmm_process::describe_exit(status),
        hull_protocol::vmm_api::exit_code::describe(expected),
        log.join("\n  ")
    );
}

/// The file names in `dir`, sorted (empty if it does not exist).
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
