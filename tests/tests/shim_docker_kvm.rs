//! `docker run --runtime io.containerd.hull.v2` end to end: Docker 26 on
//! containerd 1.7, no bridge and no iptables, every container in its own
//! VM. Needs KVM, the extracted Docker and the shim (hull_tests::docker).

use hull_tests::containerd::stdout_ok;
use hull_tests::docker::{Docker, DOCKER_IMAGE};
use hull_tests::{prereq, test_dir};

/// `docker run MODE... --runtime RUNTIME --network none busybox sh -c SCRIPT`.
fn run_args<'a>(mode: &[&'a str], runtime: &'a str, script: &'a str) -> Vec<&'a str> {
    let mut args = vec!["run"];
    args.extend_from_slice(mode);
    args.extend([
        "--runtime",
        runtime,
        "--network",
        "none",
        DOCKER_IMAGE,
        "sh",
        "-c",
        script,
    ]);
    args
}

/// Output, exit code, logs, exec and stop through Docker, on one daemon.
#[test]
fn docker_run_exec_logs_stop_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let docker = Docker::start(dir.path());

    // The runtime name users type, and the registered alias.
    for runtime in ["hull", "io.containerd.hull.v2"] {
        let out = docker.docker(&run_args(&["--rm"], runtime, "uname -r; exit 3"));
        assert_eq!(
            out.status.code(),
            Some(3),
            "docker run --runtime {runtime}: {out:?}"
        );
        let release = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            release.starts_with("6.1."),
            "guest kernel through docker: {release:?}"
        );
    }

    // `-it`: the container's stdio is a terminal of the user's size, and
    // its exit code comes back through it.
    let script = "test -t 0 && test -t 1 && echo is-a-tty; \
                  for i in $(seq 100); do s=$(stty size); [ \"$s\" != '0 0' ] && break; sleep 0.1; done; \
                  echo \"size=$s\"; exit 4";
    let (status, screen) =
        docker.docker_in_terminal(&run_args(&["--rm", "-it"], "hull", script), (27, 91));
    assert_eq!(status.code(), Some(4), "docker run -it: {screen}");
    assert!(
        screen.contains("is-a-tty"),
        "docker run -it: no terminal: {screen}"
    );
    assert!(
        screen.contains("size=27 91"),
        "docker run -it: terminal size: {screen}"
    );

    let out = docker.docker(&run_args(
        &["-d", "--name", "svc"],
        "hull",
        "echo started; trap 'echo stopping; exit 0' TERM; while true; do sleep 1; done",
    ));
    stdout_ok(&out, "docker run -d");
    let out = docker.docker(&["exec", "svc", "sh", "-c", "echo in-exec; exit 6"]);
    assert_eq!(out.status.code(), Some(6), "docker exec: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in-exec\n");
    stdout_ok(&docker.docker(&["stop", "-t", "20", "svc"]), "docker stop");
    let logs = docker.docker(&["logs", "svc"]);
    let logs = stdout_ok(&logs, "docker logs");
    assert!(
        logs.contains("started") && logs.contains("stopping"),
        "docker logs: {logs}"
    );
    let inspect = stdout_ok(
        &docker.docker(&["inspect", "-f", "{{.State.ExitCode}}", "svc"]),
        "docker inspect",
    );
    assert_eq!(inspect.trim(), "0", "exit code after a trapped SIGTERM");
    stdout_ok(&docker.docker(&["rm", "svc"]), "docker rm");
    docker.assert_nothing_left();
}

/// `-m 256m --cpus 1 --pids-limit 64` reach the guest: the VM is sized
/// from them and the container's cgroup enforces them.
#[test]
fn docker_resource_limits_reach_the_guest_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let docker = Docker::start(dir.path());
    let out = docker.docker(&run_args(
        &["--rm", "-m", "256m", "--cpus", "1", "--pids-limit", "64"],
        "hull",
        "nproc; grep MemTotal /proc/meminfo; \
         cg=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup); \
         cat $cg/memory.max $cg/pids.max",
    ));
    let text = stdout_ok(&out, "docker run with limits");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("1"), "nproc in the guest: {text}");
    let mem_kib: u64 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("MemTotal: {text}"));
    assert!(
        (200 * 1024..=512 * 1024).contains(&mem_kib),
        "guest RAM {mem_kib} KiB is not the 256 MiB limit plus overhead: {text}"
    );
    assert!(
        text.contains("268435456"),
        "memory limit not in the container's cgroup: {text}"
    );
    assert!(
        text.lines().any(|l| l.trim() == "64"),
        "pids limit not in the cgroup: {text}"
    );
    docker.assert_nothing_left();
}
