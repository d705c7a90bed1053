//! The container's rootfs shared with the guest (virtio-fs, the default)
//! instead of copied: through Docker 26 a write in the container is in
//! `docker diff`, survives `docker stop` + `docker start`, `docker cp`
//! works both ways on a running container, and `docker commit` makes an
//! image that runs with the change. Through ctr: `--read-only` keeps the
//! shared root read-only for the container, and `rootfs = "block"` still
//! copies it into an ext4 disk.
//! Needs KVM, root, the extracted Docker and containerd, the shim and
//! virtiofsd (hull_tests::docker, prereq::virtiofsd).

use std::time::Duration;

use hull_tests::containerd::{hull_config, stdout_ok, Containerd, Engine};
use hull_tests::docker::{Docker, DOCKER_IMAGE};
use hull_tests::poll::try_poll_until;
use hull_tests::{prereq, test_dir};

/// `docker exec NAME sh -c SCRIPT`: (exit code, stdout + stderr).
fn exec(docker: &Docker, name: &str, script: &str) -> (Option<i32>, String) {
    let out = docker.docker(&["exec", name, "sh", "-c", script]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

const LOOP: &str = "while true; do sleep 1; done";

#[test]
fn docker_rootfs_writes_are_the_containers_own_on_the_host_kvm() {
    prereq::require_kvm();
    prereq::virtiofsd();
    let dir = test_dir();
    let docker = Docker::start(dir.path());
    let started = docker.docker(&[
        "run",
        "-d",
        "--name",
        "rfs",
        "--runtime",
        "hull",
        "--network",
        "none",
        DOCKER_IMAGE,
        "sh",
        "-c",
        LOOP,
    ]);
    stdout_ok(&started, "docker run -d");
    let (code, text) = exec(
        &docker,
        "rfs",
        "echo kept > /kept.txt && rm /bin/true && grep -c ' / virtiofs ' /proc/mounts",
    );
    assert_eq!(
        (code, text.trim()),
        (Some(0), "1"),
        "a write in the rootfs, which is the share"
    );

    // docker diff reads the container's layer on the host.
    let diff = stdout_ok(&docker.docker(&["diff", "rfs"]), "docker diff");
    let lines: Vec<&str> = diff.lines().collect();
    for expected in ["A /kept.txt", "D /bin/true"] {
        assert!(lines.contains(&expected), "docker diff: {diff}");
    }

    // docker cp both ways while it runs.
    let into = dir.path().join("into.txt");
    std::fs::write(&into, "from the host\n").unwrap();
    let target = format!("{}", into.display());
    stdout_ok(
        &docker.docker(&["cp", &target, "rfs:/into.txt"]),
        "docker cp into the container",
    );
    let (code, text) = exec(&docker, "rfs", "cat /into.txt");
    assert_eq!((code, text.as_str()), (Some(0), "from the host\n"));
    let out_of = dir.path().join("out.txt");
    stdout_ok(
        &docker.docker(&["cp", "rfs:/kept.txt", &out_of.display().to_string()]),
        "docker cp out of the container",
    );
    assert_eq!(std::fs::read_to_string(&out_of).unwrap(), "kept\n");

    // docker commit: an image with the change, which runs.
    stdout_ok(
        &docker.docker(&["commit", "rfs", "hull-committed:1"]),
        "docker commit",
    );
    let out = docker.docker(&[
        "run",
        "--rm",
        "--runtime",
        "hull",
        "--network",
        "none",
        "hull-committed:1",
        "sh",
        "-c",
        "cat /kept.txt /into.txt; test -e /bin/true || echo no-true",
    ]);
    assert_eq!(
        stdout_ok(&out, "docker run of the committed image"),
        "kept\nfrom the host\nno-true\n"
    );

    // docker stop + docker start: the same layer, a new VM.
    stdout_ok(&docker.docker(&["stop", "-t", "1", "rfs"]), "docker stop");
    stdout_ok(&docker.docker(&["start", "rfs"]), "docker start");
    let back = try_poll_until(
        Duration::from_secs(60),
        Duration::from_millis(500),
        || match exec(&docker, "rfs", "cat /kept.txt /into.txt") {
            (Some(0), text) => Ok(text),
            other => Err(other),
        },
    );
    assert_eq!(
        back.as_deref(),
        Ok("kept\nfrom the host\n"),
        "the rootfs's writes after stop and start"
    );
    stdout_ok(&docker.docker(&["rm", "-f", "rfs"]), "docker rm -f");
    stdout_ok(&docker.docker(&["rmi", "hull-committed:1"]), "docker rmi");
    docker.assert_nothing_left();
}

/// The line of `/proc/mounts` (in the container) for its root.
fn root_line(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|line| line.split(' ').nth(1) == Some("/"))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn ctr_rootfs_shared_read_only_and_copied_kvm() {
    prereq::require_kvm();
    prereq::virtiofsd();
    let dir = test_dir();
    let containerd = Containerd::start(Engine::Containerd17, dir.path());

    // `--read-only` (the spec's read-only root): the root is the share,
    // mounted read-only for the container inside the guest.
    let out = containerd.run(
        "ro1",
        &["--read-only"],
        &["sh", "-c", "cat /proc/mounts; echo x > /x && echo wrote"],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        root_line(&out).contains(" / virtiofs ro,"),
        "the read-only root: {text}"
    );
    assert!(
        text.contains("Read-only file system") && !text.contains("wrote"),
        "a write in a read-only root: {text}"
    );
    containerd.assert_nothing_left();

    // rootfs = "block": the image copied into an ext4 disk, as before.
    let block = format!("{}rootfs = \"block\"\n", hull_config());
    std::fs::write(containerd.hull_config_path(), block).unwrap();
    let out = containerd.run(
        "blk1",
        &[],
        &["sh", "-c", "cat /proc/mounts; echo x > /x && cat /x"],
    );
    let root = root_line(&out);
    assert!(
        out.status.success()
            && root.starts_with("/dev/vda / ext4 rw,")
            && out.stdout.ends_with(b"x\n"),
        "rootfs = block: {out:?}"
    );
    containerd.assert_nothing_left();
}
