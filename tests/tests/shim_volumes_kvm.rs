//! Host bind mounts shared live with the guest (virtio-fs, one virtiofsd
//! per sandbox), through Docker 26: what a container writes under `-v`
//! reaches the host while it runs, what the host writes reaches the
//! container, `:ro` holds even against a privileged container that mounts
//! the share itself, escape attempts from a privileged root find nothing
//! of the host outside the share, and a named volume keeps its data across
//! containers. Needs KVM, root, the extracted Docker, the shim and
//! virtiofsd (hull_tests::docker, prereq::virtiofsd).

use std::path::Path;
use std::time::Duration;

use hull_tests::containerd::stdout_ok;
use hull_tests::docker::{Docker, DOCKER_IMAGE};
use hull_tests::poll::try_poll_until;
use hull_tests::{prereq, test_dir};

const SECRET: &str = "host secret outside the share";

/// `docker exec vol sh -c SCRIPT`: (exit code, stdout + stderr).
fn exec(docker: &Docker, script: &str) -> (Option<i32>, String) {
    let out = docker.docker(&["exec", "vol", "sh", "-c", script]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[test]
fn docker_volumes_reach_the_host_live_kvm() {
    prereq::require_kvm();
    prereq::virtiofsd();
    let dir = test_dir();
    let docker = Docker::start(dir.path());
    let data = dir.path().join("data");
    let ro = dir.path().join("ro");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("keep.txt"), "read-only\n").unwrap();
    let outside = dir.path().join("outside.txt");
    std::fs::write(&outside, SECRET).unwrap();
    let data_volume = format!("{}:/data", data.display());
    let ro_volume = format!("{}:/ro:ro", ro.display());

    let out = docker.docker(&[
        "run",
        "-d",
        "--name",
        "vol",
        "--runtime",
        "hull",
        "--network",
        "none",
        "--privileged",
        "-v",
        &data_volume,
        "-v",
        &ro_volume,
        DOCKER_IMAGE,
        "sh",
        "-c",
        "echo from-guest > /data/guest.txt; while true; do sleep 1; done",
    ]);
    stdout_ok(&out, "docker run -d with volumes");

    // The container's write reaches the host while it runs.
    let wrote = try_poll_until(
        Duration::from_secs(120),
        Duration::from_millis(200),
        || match read(&data.join("guest.txt")) {
            Some(text) if text == "from-guest\n" => Ok(()),
            other => Err(other),
        },
    );
    assert!(wrote.is_ok(), "the guest's write on the host: {wrote:?}");
    let running = stdout_ok(
        &docker.docker(&["inspect", "-f", "{{.State.Running}}", "vol"]),
        "docker inspect",
    );
    assert_eq!(running.trim(), "true", "seen while the container runs");

    // The host's write reaches the container (attributes are cached for a
    // second: cache=auto).
    std::fs::write(data.join("host.txt"), "from-host\n").unwrap();
    let seen = try_poll_until(
        Duration::from_secs(10),
        Duration::from_millis(500),
        || match exec(&docker, "cat /data/host.txt") {
            (Some(0), text) if text == "from-host\n" => Ok(()),
            other => Err(other),
        },
    );
    assert!(seen.is_ok(), "the host's write in the container: {seen:?}");

    // `:ro` refuses writes, also through the share mounted again by a
    // privileged container (the host's bind is read-only itself).
    let (code, text) = exec(&docker, "echo x > /ro/new.txt");
    assert_ne!(code, Some(0), "a write to a :ro volume: {text}");
    let (_, text) = exec(
        &docker,
        "mkdir -p /mnt/share && mount -t virtiofs hull-share /mnt/share && \
         for d in /mnt/share /mnt/share/*; do if [ -f $d/keep.txt ]; then echo found; \
         echo x > $d/new.txt && echo wrote; fi; done",
    );
    assert!(
        text.contains("found") && !text.contains("wrote"),
        "a write to the :ro bind through the share mounted again: {text}"
    );
    assert!(
        !ro.join("new.txt").exists(),
        "a file appeared in the :ro dir"
    );
    assert_eq!(read(&ro.join("keep.txt")).as_deref(), Some("read-only\n"));

    // Escape attempts from a privileged root: symlinks resolve in the
    // guest, `..` stops at the guest's root, a hard link cannot reach a
    // file outside the share, device nodes cannot be made on the host.
    let secret_path = outside.display().to_string();
    let attempts = [
        format!("ln -s / /data/root-link && cat /data/root-link{secret_path}"),
        format!("cat /data/../..{secret_path}"),
        format!("cat /mnt/share/0/../..{secret_path}"),
        "ln /etc/passwd /data/passwd-link".to_string(),
        "mknod /data/null c 1 3".to_string(),
    ];
    for attempt in &attempts {
        let (code, text) = exec(&docker, attempt);
        assert!(
            code != Some(0) && !text.contains(SECRET),
            "escape attempt {attempt:?}: exit {code:?}, {text}"
        );
    }
    assert_eq!(read(&outside).as_deref(), Some(SECRET));
    assert!(
        !data.join("null").exists() && !data.join("passwd-link").exists(),
        "an escape attempt left a file in the volume"
    );
    // The symlink is the guest's, pointing at the guest's `/`.
    assert_eq!(
        std::fs::read_link(data.join("root-link")).ok().as_deref(),
        Some(Path::new("/"))
    );
    stdout_ok(&docker.docker(&["rm", "-f", "vol"]), "docker rm -f");

    // A named volume keeps its data from one container to the next.
    stdout_ok(
        &docker.docker(&["volume", "create", "hullvol"]),
        "docker volume create",
    );
    let write = docker.docker(&[
        "run",
        "--rm",
        "--runtime",
        "hull",
        "--network",
        "none",
        "-v",
        "hullvol:/v",
        DOCKER_IMAGE,
        "sh",
        "-c",
        "echo kept > /v/f",
    ]);
    stdout_ok(&write, "writing the named volume");
    let read_back = docker.docker(&[
        "run",
        "--rm",
        "--runtime",
        "hull",
        "--network",
        "none",
        "-v",
        "hullvol:/v",
        DOCKER_IMAGE,
        "cat",
        "/v/f",
    ]);
    assert_eq!(stdout_ok(&read_back, "reading the named volume"), "kept\n");
    stdout_ok(
        &docker.docker(&["volume", "rm", "hullvol"]),
        "docker volume rm",
    );
    docker.assert_nothing_left();
}
