//! Host bind mounts shared live with the guest (virtio-fs, one virtiofsd
//! per sandbox), through Docker 26 and ctr: what a container writes under
//! `-v` reaches the host while it runs, what the host writes reaches the
//! container (a directory or a file), a `--tmpfs` stays in the guest, `:ro`
//! holds even against a privileged container that remounts it or mounts
//! the share itself, escape attempts from a privileged root find nothing
//! of the host outside the share, a named volume keeps its data across
//! containers; `ctr run --mount` likewise, and either side of the share
//! dying under a running container. Needs KVM, root, the extracted Docker,
//! the shim and virtiofsd (hull_tests::docker, prereq::virtiofsd).

use std::path::Path;
use std::time::Duration;

use hull_sandbox::share::SHARE_BASE;
use hull_tests::containerd::{stdout_ok, Containerd, Engine};
use hull_tests::docker::{Docker, DOCKER_IMAGE};
use hull_tests::poll::try_poll_until;
use hull_tests::{leaks, prereq, test_dir};

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
    let conf = dir.path().join("app.conf");
    std::fs::write(&conf, "setting=1\n").unwrap();
    let conf_volume = format!("{}:/etc/app.conf", conf.display());

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
        "-v",
        &conf_volume,
        "--tmpfs",
        "/scratch",
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

    // A file bind, both ways; a tmpfs mount stays in the guest.
    let (code, text) = exec(
        &docker,
        "cat /etc/app.conf && echo setting=2 > /etc/app.conf",
    );
    assert_eq!(
        (code, text.as_str()),
        (Some(0), "setting=1\n"),
        "the file bind"
    );
    assert_eq!(read(&conf).as_deref(), Some("setting=2\n"));
    let (code, text) = exec(
        &docker,
        "echo t > /scratch/t && grep ' /scratch ' /proc/mounts",
    );
    assert!(
        code == Some(0) && text.starts_with("tmpfs /scratch tmpfs"),
        "--tmpfs in the guest: {text}"
    );

    // `:ro` refuses writes.
    let (code, text) = exec(&docker, "echo x > /ro/new.txt");
    assert_ne!(code, Some(0), "a write to a :ro volume: {text}");
    // The guest's own read-only flag is not what holds it: remounted
    // read-write by the privileged container, the bind stays read-only on
    // the host, and the share mounted again by its tag gives nothing more.
    let (_, text) = exec(
        &docker,
        "mount -o remount,rw /ro && echo remounted; echo x > /ro/new.txt && echo wrote; \
         mkdir -p /mnt/share && mount -t virtiofs hull-share /mnt/share && echo share-mounted; \
         for f in $(find /mnt/share -name keep.txt); do echo x > ${f%keep.txt}new.txt && echo wrote; done",
    );
    assert!(
        text.contains("remounted") && text.contains("share-mounted") && !text.contains("wrote"),
        "writes to the :ro bind after a read-write remount: {text}"
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

/// The virtiofsd processes of the one sandbox running here (one suite
/// runs at a time) serving its binds (`rootfs` false) or its rootfs: in
/// namespace mode, the monitor the shim started and the server it forked
/// (returned second).
fn virtiofsd_pids(rootfs: bool) -> (u32, u32) {
    let found: Vec<u32> = leaks::processes_mentioning(Path::new(SHARE_BASE))
        .into_iter()
        .filter(|(pid, _)| leaks::process_name(*pid).as_deref() == Some("virtiofsd"))
        .filter(|(_, cmdline)| cmdline.contains(".rootfs/") == rootfs)
        .map(|(pid, _)| pid)
        .collect();
    let parent_of = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.to_owned()))
            .and_then(|rest| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
    };
    match found.as_slice() {
        [a, b] if parent_of(*b) == Some(*a) => (*a, *b),
        [a, b] if parent_of(*a) == Some(*b) => (*b, *a),
        other => panic!("expected virtiofsd and its server, found {other:?}"),
    }
}

/// The upper directory of container `id`'s overlay snapshot, as
/// `ctr snapshots mounts` gives it.
fn snapshot_upper_dir(containerd: &Containerd, id: &str) -> std::path::PathBuf {
    let out = containerd.ctr(&["snapshots", "mounts", "/mnt", id]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split([',', ' '])
        .find_map(|option| option.strip_prefix("upperdir="))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("no upperdir in `ctr snapshots mounts`: {out:?}"))
}

/// Whether `pid` has exited (gone, or a zombie its parent has not reaped).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn sigkill(pid: u32) {
    // SAFETY: kill(2) with a pid this test found; at worst it is gone.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
}

/// `ctr task exec` of a shell script in `id`: (exit code, stdout + stderr).
fn ctr_exec(
    containerd: &Containerd,
    id: &str,
    exec_id: &str,
    script: &str,
) -> (Option<i32>, String) {
    let out = containerd.ctr(&["task", "exec", "--exec-id", exec_id, id, "sh", "-c", script]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// `ctr run --mount type=bind,...`: a socket is refused by name; the
/// container's write reaches the host while it runs. Then each side of the share dies under a running
/// container: virtiofsd killed, the container gets I/O errors and the task
/// can be killed and deleted; the VMM killed, virtiofsd ends by itself.
/// Nothing is left either way.
#[test]
fn ctr_bind_mounts_and_a_dying_side_of_the_share_kvm() {
    prereq::require_kvm();
    prereq::virtiofsd();
    let dir = test_dir();
    let containerd = Containerd::start(Engine::Containerd17, dir.path());
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:rw",
        data.display()
    );
    let loop_script =
        |name: &str| format!("echo {name} > /data/{name}; while true; do sleep 1; done");

    // Bad input: a socket cannot be shared, and the error names it; no VM
    // is started and nothing is left.
    let socket = dir.path().join("app.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let bad = format!(
        "type=bind,src={},dst=/app.sock,options=rbind:rw",
        socket.display()
    );
    let out = containerd.run("vfs0", &["--mount", &bad], &["true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("app.sock")
            && stderr.contains("only directories and regular files can be shared"),
        "sharing a socket: {out:?}"
    );
    containerd.assert_nothing_left();

    // virtiofsd dies.
    let script = loop_script("first");
    stdout_ok(
        &containerd.run_detached("vfs1", &["--mount", &mount], &["sh", "-c", &script]),
        "ctr run -d --mount",
    );
    let wrote = try_poll_until(
        Duration::from_secs(120),
        Duration::from_millis(200),
        || match read(&data.join("first")) {
            Some(text) if text == "first\n" => Ok(()),
            other => Err(other),
        },
    );
    assert!(
        wrote.is_ok(),
        "the guest's write through ctr --mount: {wrote:?}"
    );
    // The rootfs is shared, not copied: what the container writes in it is
    // in containerd's snapshot (its overlay upper directory) on the host.
    let (code, text) = ctr_exec(&containerd, "vfs1", "e0", "echo r > /in-rootfs");
    assert_eq!(code, Some(0), "a write in the rootfs: {text}");
    let upper = snapshot_upper_dir(&containerd, "vfs1");
    assert_eq!(
        read(&upper.join("in-rootfs")).as_deref(),
        Some("r\n"),
        "the rootfs write in the snapshot's upper dir {}",
        upper.display()
    );
    let (_, server) = virtiofsd_pids(false);
    sigkill(server);
    let (code, text) = ctr_exec(&containerd, "vfs1", "e1", "echo x > /data/after-kill");
    assert!(
        code != Some(0) && text.contains("Input/output error"),
        "a write after virtiofsd died: exit {code:?}, {text}"
    );
    assert!(!data.join("after-kill").exists());
    stdout_ok(
        &containerd.ctr(&["task", "kill", "-s", "SIGKILL", "vfs1"]),
        "ctr task kill",
    );
    containerd.wait_task_stopped_and_delete("vfs1");
    stdout_ok(
        &containerd.ctr(&["container", "rm", "vfs1"]),
        "ctr container rm",
    );
    containerd.assert_nothing_left();

    // The VMM dies.
    let script = loop_script("second");
    stdout_ok(
        &containerd.run_detached("vfs2", &["--mount", &mount], &["sh", "-c", &script]),
        "ctr run -d --mount (second)",
    );
    let wrote = try_poll_until(Duration::from_secs(120), Duration::from_millis(200), || {
        read(&data.join("second")).ok_or(())
    });
    assert!(wrote.is_ok(), "the second container's write");
    let (monitor, server) = virtiofsd_pids(false);
    let (rootfs_monitor, rootfs_server) = virtiofsd_pids(true);
    let vmm = containerd
        .vmm_pid("vfs2")
        .expect("the second container's VMM");
    sigkill(vmm);
    let ended = try_poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let all = [monitor, server, rootfs_monitor, rootfs_server];
        if all.into_iter().all(exited) {
            Ok(())
        } else {
            Err(all)
        }
    });
    assert!(ended.is_ok(), "virtiofsd outlived the VMM it served");
    containerd.wait_task_stopped_and_delete("vfs2");
    stdout_ok(
        &containerd.ctr(&["container", "rm", "vfs2"]),
        "ctr container rm",
    );
    containerd.assert_nothing_left();
    assert_eq!(read(&data.join("first")).as_deref(), Some("first\n"));
}
