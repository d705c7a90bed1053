//! The reaper on real child processes. In a test binary of its own: tokio
//! delivers signals process-wide, and other tests' runtimes listening for
//! signals in the same process could take the SIGCHLD wake-up this test
//! waits for (seen as a rare timeout under load).

use std::process::Command;
use std::time::Duration;

use rustix::process::{pidfd_open, Pid, PidfdFlags};
use tokio::io::unix::AsyncFd;
use tokio::time::timeout;

use hull_agent::reaper::{ExitStatus, Reaper};

// The reaper, not `Child::wait`, collects it: that is what is tested.
#[allow(clippy::zombie_processes)]
fn spawn_shell(script: &str) -> i32 {
    let child = Command::new("sh")
        .args(["-c", script])
        .spawn()
        .expect("spawn sh");
    i32::try_from(child.id()).expect("pid fits i32")
}

/// Waits, at most `limit`, until child `pid` has ended, without reaping it:
/// its pidfd turns readable when it exits. Then gives the reaper's task,
/// woken by the same exit's SIGCHLD, its turn to (wrongly) sweep.
async fn until_ended(pid: i32, limit: Duration) {
    let raw = Pid::from_raw(pid).expect("a pid");
    let pidfd = pidfd_open(raw, PidfdFlags::empty()).expect("pidfd_open");
    // SAFETY: an `OwnedFd` is an open fd that it alone closes, on drop; the
    // `AsyncFd` owns it until it is dropped, and `as_raw_fd` always returns
    // that same fd.
    let pidfd = unsafe { AsyncFd::register(pidfd) }.expect("register the pidfd");
    timeout(limit, pidfd.readable())
        .await
        .unwrap_or_else(|_| panic!("pid {pid} did not end within {limit:?}"))
        .expect("poll the pidfd")
        .retain_ready();
    tokio::task::yield_now().await;
}

// One test only: every reaper in this process reaps all its children.
#[tokio::test(flavor = "current_thread")]
async fn exits_reach_every_subscriber_with_their_status() {
    let reaper = Reaper::new();
    let mut first = reaper.subscribe();
    let mut second = reaper.subscribe();
    let dropped = reaper.subscribe();
    drop(dropped);
    reaper.start().expect("install SIGCHLD handler");

    let exited = spawn_shell("exit 3");
    let killed = spawn_shell("kill -9 $$");
    let wait = Duration::from_secs(20);

    // Both subscribers see both exits, in whichever order they were reaped
    // (`wait_for` would skip the other one, so read them all).
    let mut statuses = std::collections::HashMap::new();
    while statuses.len() < 2 {
        let exit = timeout(wait, first.recv())
            .await
            .expect("exit in time")
            .expect("reaper alive");
        statuses.insert(exit.pid, exit.status);
    }
    assert_eq!(statuses[&exited], ExitStatus::Exited(3));
    assert_eq!(statuses[&killed], ExitStatus::Signaled(9));
    assert_eq!(statuses[&killed].code(), 137);

    let mut seen = Vec::new();
    while seen.len() < 2 {
        let exit = timeout(wait, second.recv())
            .await
            .expect("exit in time")
            .expect("reaper alive");
        seen.push(exit.pid);
    }
    seen.sort_unstable();
    let mut expected = vec![exited, killed];
    expected.sort_unstable();
    assert_eq!(seen, expected);
    assert_eq!(
        reaper.subscriber_count(),
        2,
        "the dropped subscription is forgotten"
    );

    // While a hold lives, a child can be waited for by pid (as libcontainer
    // does with its intermediate process): the reaper does not take it.
    let hold = reaper.hold();
    let held = spawn_shell("exit 5");
    until_ended(held, wait).await;
    assert_eq!(reaper.reap(), 0, "the reaper swept during a hold");
    let pid = rustix::process::Pid::from_raw(held).expect("a pid");
    let (_, status) = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty())
        .expect("waitpid by pid during a hold")
        .expect("a status");
    assert_eq!(status.exit_status(), Some(5));
    // Exits during a hold are published once it is dropped.
    let late = spawn_shell("exit 6");
    until_ended(late, wait).await;
    drop(hold);
    let status = timeout(wait, first.wait_for(late))
        .await
        .expect("exit after the hold in time")
        .expect("reaper alive");
    assert_eq!(status, ExitStatus::Exited(6));

    // A child in a process group of its own (as container processes are,
    // in sessions of their own) is reaped too.
    use std::os::unix::process::CommandExt;
    let child = Command::new("sh")
        .args(["-c", "exit 7"])
        .process_group(0)
        .spawn()
        .expect("spawn sh in its own group");
    let grouped = i32::try_from(child.id()).expect("pid fits i32");
    #[allow(clippy::zombie_processes)]
    drop(child);
    let status = timeout(wait, first.wait_for(grouped))
        .await
        .expect("exit of a child in another process group in time")
        .expect("reaper alive");
    assert_eq!(status, ExitStatus::Exited(7));
}
