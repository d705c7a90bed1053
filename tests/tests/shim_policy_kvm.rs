//! The spec policy through the real front ends: `ctr run` and `docker run`
//! with a host namespace, another process's namespace, or a sensitive bind
//! mount (also through a symlink or the `/var/run` alias), or a limit no VM
//! can meet, are refused with an error saying why, before any VM starts,
//! and leave nothing behind. Needs
//! containerd, Docker and the shim (the refusal itself needs no KVM, but
//! the suite runs where the shim runs).

use hull_tests::containerd::{Containerd, Engine, IMAGE, RUNTIME};
use hull_tests::docker::{Docker, DOCKER_IMAGE};
use hull_tests::test_dir;

fn refused(out: &std::process::Output, what: &str, reason: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what} was not refused: {out:?}");
    assert!(
        stderr.contains(reason),
        "{what}: the error does not say {reason:?}: {stderr}"
    );
}

#[test]
fn ctr_refuses_host_namespaces_and_sensitive_mounts() {
    let dir = test_dir();
    let containerd = Containerd::start(Engine::Containerd16, dir.path());
    let config = containerd.hull_config_path().to_str().unwrap().to_owned();
    let base = [
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        &config,
    ];

    let mut args = base.to_vec();
    args.extend(["--net-host", IMAGE, "hostnet", "true"]);
    refused(
        &containerd.ctr(&args),
        "ctr run --net-host",
        "host's network namespace",
    );

    let mut args = base.to_vec();
    args.extend([
        "--mount",
        "type=bind,src=/etc,dst=/host-etc,options=rbind:ro",
        IMAGE,
        "hostetc",
        "true",
    ]);
    refused(
        &containerd.ctr(&args),
        "ctr run with /etc bound",
        "sensitive host path /etc",
    );

    // A symlink of the user's own to a host secret counts by where it
    // leads: the shadow file is never copied into a guest.
    let link = dir.path().join("innocent");
    std::os::unix::fs::symlink("/etc/shadow", &link).unwrap();
    let mount = format!("type=bind,src={},dst=/x,options=rbind:ro", link.display());
    let mut args = base.to_vec();
    args.extend(["--mount", &mount, IMAGE, "shadowlink", "true"]);
    refused(
        &containerd.ctr(&args),
        "ctr run with a symlink to /etc/shadow bound",
        "(resolves to /etc/shadow)",
    );

    // Joining another process's namespace cannot cross a VM.
    let mut args = base.to_vec();
    args.extend(["--with-ns", "pid:/proc/1/ns/pid", IMAGE, "joinpid", "true"]);
    refused(
        &containerd.ctr(&args),
        "ctr run --with-ns pid:/proc/1/ns/pid",
        "C1.5",
    );

    // A limit no VM here can meet is refused naming the spec's field,
    // not cut down to what fits.
    let mut args = base.to_vec();
    args.extend([
        "--memory-limit",
        "1125899906842624",
        IMAGE,
        "hugemem",
        "true",
    ]);
    refused(
        &containerd.ctr(&args),
        "ctr run --memory-limit 1 PiB",
        "linux.resources.memory.limit: 1125899906842624 bytes plus hull's",
    );

    // containerd keeps the container record of a failed `run --rm`.
    for id in ["hostnet", "hostetc", "shadowlink", "joinpid", "hugemem"] {
        let _ = containerd.ctr(&["container", "rm", id]);
    }
    containerd.assert_nothing_left();
}

#[test]
fn docker_refuses_host_namespaces_and_sensitive_mounts() {
    let dir = test_dir();
    let docker = Docker::start(dir.path());
    let refusals: [(&[&str], &str); 4] = [
        (&["--network", "host"], "host's network namespace"),
        (
            &["--pid", "host", "--network", "none"],
            "host's PID namespace",
        ),
        (
            &["--network", "none", "-v", "/var/run:/host-run"],
            "sensitive host path",
        ),
        (
            &["--network", "none", "-v", "/var/run/containerd:/c"],
            "sensitive host path /var/run/containerd",
        ),
    ];
    for (options, reason) in refusals {
        let mut args = vec!["run", "--rm", "--runtime", "hull"];
        args.extend_from_slice(options);
        args.extend([DOCKER_IMAGE, "true"]);
        refused(
            &docker.docker(&args),
            &format!("docker run {}", options.join(" ")),
            reason,
        );
    }
    let _ = docker.docker(&["container", "prune", "-f"]);
    docker.assert_nothing_left();
}
