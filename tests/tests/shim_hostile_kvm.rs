//! A hostile guest agent against the real shim and containerd (issue 9,
//! finding 4). The agent is hull-agent built with `hostile-test`
//! (`agent/src/hostile.rs`, `$HULL_HOSTILE_INITRAMFS`): it reports an OOM
//! kill every 20 ms, alternating the sandbox's own container with a
//! "container" whose id carries a newline and a forged containerd log
//! record. The host must publish only the own container's events, spaced
//! (at most one a second), and write what the guest said on one escaped
//! log line.

use std::time::Instant;

use hull_tests::containerd::{stdout_ok, Containerd, Engine};
use hull_tests::{prereq, test_dir};

/// The record the hostile agent hopes to see as a line of its own.
const FORGED_RECORD: &str = "level=error msg=\"forged by the guest\"";

#[test]
fn ctr_hostile_agent_oom_events_are_judged_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let containerd = Containerd::start(Engine::Containerd16, dir.path());
    containerd.set_initramfs(&prereq::hostile_initramfs());
    let events = containerd.events();
    let id = "lied-to";
    let started = Instant::now();
    let out = containerd.run(id, &[], &["sh", "-c", "sleep 5; echo done"]);
    let lived = started.elapsed();
    assert_eq!(
        stdout_ok(&out, "ctr run on the hostile agent").trim(),
        "done"
    );
    let seen = Containerd::events_seen(events);

    let ooms: Vec<&str> = seen.lines().filter(|l| l.contains("/tasks/oom")).collect();
    assert!(
        ooms.iter().all(|l| l.contains(&format!("\"{id}\""))),
        "a TaskOOM for a container that is not the sandbox's:\n{seen}"
    );
    // The agent reports ~25 own kills a second; the shim passes one a second.
    let most = lived.as_secs() + 1;
    assert!(
        !ooms.is_empty() && ooms.len() as u64 <= most,
        "{} TaskOOM events for {id} in {lived:?} (expected 1..={most}):\n{seen}",
        ooms.len()
    );

    let log = containerd.log();
    assert!(
        !log.lines()
            .any(|l| l.trim_start().starts_with(FORGED_RECORD)),
        "the guest forged a line in containerd's log:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("not a container of this sandbox: dropped")
                && l.contains("victim\\")
                && l.contains("forged by the guest")),
        "the foreign OOM events are reported, escaped, on one line:\n{log}"
    );
    containerd.assert_nothing_left();
}
