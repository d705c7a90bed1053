//! hull containers through real containerd when things go wrong or pile
//! up: a real terminal on ctr's side, five VMs booting at once, the VMM or
//! the shim killed under a running container, an OOM kill in the guest,
//! containerd restarted under a running container. Every container boots its own VM with the real guest kernel, so
//! every test here needs root, KVM, containerd and the shim (see
//! hull_tests::containerd), and fails loudly without them. Each ends with
//! the leak check: no task, container, shim, VMM, shim socket, mount,
//! rootfs disk, sandbox state directory or host cgroup left.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hull_shim::task::VM_GONE_EXIT_STATUS;
use hull_tests::containerd::{hull_config, stdout_ok, Containerd, Engine};
use hull_tests::poll::try_poll_until;
use hull_tests::{leaks, prereq, test_dir};

/// A container that runs until it is killed.
const SLEEPER: &[&str] = &["sleep", "1000"];
/// The exit status of a process killed by SIGKILL, as containerd reports it.
const SIGKILLED: u32 = 128 + libc::SIGKILL as u32;
/// How long containerd may take to notice a dead shim and clean up after it.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long each of five VMs booting together on two cores may take to
/// reach its agent (one boot alone is 25–30 s of emulated guest kernel
/// here; five at once share the two cores, and took over 170 s each).
const FIVE_BOOTS_TIMEOUT: Duration = Duration::from_secs(540);
/// How long `ctr run -d` may take while five VMs boot: the boot, the
/// rootfs disk before it, the container's start after it.
const FIVE_RUNS_TIMEOUT: Duration = Duration::from_secs(600);

/// SIGKILL process `pid` (a VMM or a shim the test found under its own
/// directory).
fn sigkill(pid: u32) {
    // SAFETY: kill(2) with a pid just read from /proc for a process of this
    // test's containerd; at worst it has already exited (ESRCH).
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
}

/// Waits up to `limit` for `done`, failing with `what` and the last state.
fn wait_for<T: std::fmt::Debug>(limit: Duration, what: &str, mut poll: impl FnMut() -> (bool, T)) {
    try_poll_until(limit, Duration::from_millis(200), || match poll() {
        (true, _) => Ok(()),
        (false, state) => Err(state),
    })
    .unwrap_or_else(|state| panic!("{what}: not within {limit:?}: {state:?}"));
}

/// `ctr task exec` of `cmd` in `id`: its stdout, which must be a success.
fn exec(containerd: &Containerd, id: &str, exec_id: &str, cmd: &[&str]) -> String {
    let mut args = vec!["task", "exec", "--exec-id", exec_id, id];
    args.extend_from_slice(cmd);
    stdout_ok(&containerd.ctr(&args), &format!("ctr task exec {id}"))
}

/// `ctr task kill -s SIGKILL`, then the exit status once the task stopped
/// (it is deleted), then `ctr container rm`.
fn sigkill_task_and_remove(containerd: &Containerd, id: &str) -> u32 {
    stdout_ok(
        &containerd.ctr(&["task", "kill", "-s", "SIGKILL", id]),
        &format!("ctr task kill -s SIGKILL {id}"),
    );
    let status = containerd.wait_task_stopped_and_delete(id);
    stdout_ok(
        &containerd.ctr(&["container", "rm", id]),
        "ctr container rm",
    );
    status
}

/// `ctr run -t` from a real terminal: the container's stdio is a terminal
/// of the size ctr's terminal has, and the exit code passes through.
#[test]
fn ctr_run_tty_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let containerd = Containerd::start(Engine::Containerd16, dir.path());
    // ctr sends the terminal's size just after the task started: wait for
    // it (a new terminal is 0 x 0) rather than race it.
    let script = "tty; test -t 0 && test -t 1 && echo is-a-tty; \
                  for i in $(seq 100); do s=$(stty size); [ \"$s\" != '0 0' ] && break; sleep 0.1; done; \
                  echo \"size=$s\"; exit 7";
    let (status, screen) = containerd.run_in_terminal("tty", (31, 97), &["sh", "-c", script]);
    assert!(
        screen.contains("/dev/pts/"),
        "tty in the container: {screen:?}"
    );
    assert!(screen.contains("is-a-tty"), "test -t 0/1: {screen:?}");
    assert!(
        screen.contains("size=31 97"),
        "the container's terminal has ctr's size: {screen:?}"
    );
    assert_eq!(
        status.code(),
        Some(7),
        "exit code through ctr -t: {screen:?}"
    );
    containerd.assert_nothing_left();
}

/// Five detached containers started at once boot five VMs; each answers an
/// exec from its own VM; SIGKILL ends each with 137.
#[test]
fn ctr_five_containers_at_once_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let containerd = Containerd::start(Engine::Containerd16, dir.path());
    containerd.set_boot_timeout(FIVE_BOOTS_TIMEOUT);
    let ids: Vec<String> = (1..=5).map(|n| format!("five-{n}")).collect();
    let started = Instant::now();
    std::thread::scope(|scope| {
        let runs: Vec<_> = ids
            .iter()
            .map(|id| {
                let containerd = &containerd;
                scope.spawn(move || {
                    let marker = format!("echo {id} > /tmp/id; exec sleep 1000");
                    let cmd = ["sh", "-c", marker.as_str()];
                    let out = containerd.run_detached_within(id, &[], &cmd, FIVE_RUNS_TIMEOUT);
                    eprintln!("{id} started after {:?}", started.elapsed());
                    (id, out)
                })
            })
            .collect();
        for run in runs {
            let (id, out) = run.join().expect("a ctr run -d thread panicked");
            stdout_ok(&out, &format!("ctr run -d {id}"));
        }
    });
    eprintln!("five containers started in {:?}", started.elapsed());

    let vmms: BTreeSet<u32> = ids
        .iter()
        .map(|id| {
            containerd
                .vmm_pid(id)
                .unwrap_or_else(|| panic!("no hull-vmm for {id}"))
        })
        .collect();
    assert_eq!(vmms.len(), 5, "five distinct VMMs: {vmms:?}");
    assert_eq!(
        containerd.vmm_pids().len(),
        5,
        "exactly five hull-vmm processes"
    );
    for id in &ids {
        assert_eq!(containerd.task_status(id).as_deref(), Some("RUNNING"));
        let answer = exec(&containerd, id, "whoami", &["cat", "/tmp/id"]);
        assert_eq!(answer.trim(), id, "exec into {id} reached another VM");
    }
    for id in &ids {
        stdout_ok(
            &containerd.ctr(&["task", "kill", "-s", "SIGKILL", id]),
            &format!("ctr task kill -s SIGKILL {id}"),
        );
    }
    for id in &ids {
        let status = containerd.wait_task_stopped_and_delete(id);
        assert_eq!(status, SIGKILLED, "exit status of {id} after SIGKILL");
        stdout_ok(
            &containerd.ctr(&["container", "rm", id]),
            "ctr container rm",
        );
    }
    containerd.assert_nothing_left();
}

/// The VMM dies under a running container: the task stops with the
/// shim's "VM gone" status, and deleting it leaves nothing behind.
#[test]
fn ctr_vmm_killed_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let containerd = Containerd::start(Engine::Containerd16, dir.path());
    let id = "vmm-killed";
    stdout_ok(&containerd.run_detached(id, &[], SLEEPER), "ctr run -d");
    let vmm = containerd.vmm_pid(id).expect("the container's hull-vmm");
    sigkill(vmm);

    let status = containerd.wait_task_stopped_and_delete(id);
    assert_ne!(status, 0, "a task whose VM was killed exited 0");
    assert_eq!(status, VM_GONE_EXIT_STATUS, "exit status when the VM dies");
    assert!(
        !leaks::process_exists(vmm),
        "the killed VMM {vmm} is still there"
    );
    stdout_ok(
        &containerd.ctr(&["container", "rm", id]),
        "ctr container rm",
    );
    containerd.assert_nothing_left();
}

/// The shim dies under a running container: containerd runs the shim's
/// `delete` to clean up, which must take the VM with it; the task is gone
/// or stopped, and the container can be removed.
#[test]
fn ctr_shim_killed_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let containerd = Containerd::start(Engine::Containerd16, dir.path());
    let id = "shim-killed";
    stdout_ok(&containerd.run_detached(id, &[], SLEEPER), "ctr run -d");
    let shim = containerd.shim_pid(id).expect("the container's shim");
    let vmm = containerd.vmm_pid(id).expect("the container's hull-vmm");
    sigkill(shim);

    wait_for(CLEANUP_TIMEOUT, "the task ends with its shim", || {
        let status = containerd.task_status(id);
        (status.as_deref() != Some("RUNNING"), status)
    });
    let out = containerd.ctr(&["task", "delete", id]);
    assert!(
        out.status.success() || String::from_utf8_lossy(&out.stderr).contains("not found"),
        "ctr task delete after the shim died: {out:?}"
    );
    stdout_ok(
        &containerd.ctr(&["container", "rm", id]),
        "ctr container rm",
    );
    wait_for(CLEANUP_TIMEOUT, "the VMM dies with its shim", || {
        (!leaks::process_exists(vmm), vmm)
    });
    containerd.assert_nothing_left();
}

/// containerd restarts under a running container: the shim and the VM
/// carry on, the new containerd still lists the task as running and can
/// exec into it, and the kill's exit status still reaches it.
#[test]
fn ctr_containerd_restart_keeps_containers_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let mut containerd = Containerd::start(Engine::Containerd16, dir.path());
    let id = "survivor";
    let cmd = [
        "sh",
        "-c",
        "echo before-restart > /tmp/mark; exec sleep 1000",
    ];
    stdout_ok(&containerd.run_detached(id, &[], &cmd), "ctr run -d");
    let shim = containerd.shim_pid(id).expect("the container's shim");
    let vmm = containerd.vmm_pid(id).expect("the container's hull-vmm");

    let restarting = Instant::now();
    containerd.restart();
    eprintln!("containerd restarted in {:?}", restarting.elapsed());

    assert_eq!(
        containerd.task_status(id).as_deref(),
        Some("RUNNING"),
        "after the restart; containerd log:\n{}",
        containerd.log()
    );
    assert_eq!(containerd.shim_pid(id), Some(shim), "the same shim");
    assert_eq!(containerd.vmm_pid(id), Some(vmm), "the same VM");
    let mark = exec(&containerd, id, "after", &["cat", "/tmp/mark"]);
    assert_eq!(mark.trim(), "before-restart");

    let status = sigkill_task_and_remove(&containerd, id);
    assert_eq!(status, SIGKILLED, "exit status after SIGKILL");
    containerd.assert_nothing_left();
}

/// A container that outgrows its memory limit: the guest's OOM killer ends
/// it with 137 (the VM, sized limit + overhead, survives it), containerd
/// gets a TaskOOM event for it, and nothing is left.
#[test]
fn ctr_oom_in_guest_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let containerd = Containerd::start(Engine::Containerd16, dir.path());
    let events = containerd.events();
    let id = "oom";
    // dd's 64 MiB buffer, filled from /dev/zero, against a 32 MiB limit.
    let out = containerd.run(
        id,
        &["--memory-limit", "33554432"],
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    assert_eq!(
        out.status.code(),
        Some(SIGKILLED as i32),
        "a container over its memory limit: {out:?}"
    );

    // TaskOOM is published while the task runs.
    let seen = Containerd::events_seen(events);
    assert!(
        seen.lines()
            .any(|l| l.contains("/tasks/oom") && l.contains(&format!("\"{id}\""))),
        "no TaskOOM event for {id}:\n{seen}"
    );
    containerd.assert_nothing_left();
}

/// The agent does not answer within the configured boot budget (here 3 s,
/// far less than a boot takes): `ctr run` fails naming the unreachable
/// agent, and the shim stops the VM it started and removes everything.
#[test]
fn ctr_agent_unreachable_fails_cleanly_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let containerd = Containerd::start(Engine::Containerd16, dir.path());
    // A cold boot's budget: a template would answer well within it.
    containerd.set_hull_config(&format!(
        "{}boot_timeout_secs = 3\ntemplates = false\n",
        hull_config()
    ));
    let id = "no-agent";
    let out = containerd.run(id, &[], &["true"]);
    assert!(!out.status.success(), "ctr run without an agent: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("agent did not answer within 3s"),
        "the error names the unreachable agent: {stderr}"
    );
    // ctr --rm removes its container when the task cannot be created.
    let _ = containerd.ctr(&["container", "rm", id]);
    containerd.assert_nothing_left();
}
