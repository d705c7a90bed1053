//! `ctr run --runtime io.containerd.hull.v2` end to end, with containerd
//! 1.6 (bookworm) and 1.7 (trixie): each container boots its own VM with
//! the real guest kernel, so every test here needs KVM, containerd and the
//! shim (see hull_tests::containerd), and fails loudly without them.

use hull_tests::containerd::{stdout_ok, Containerd, Engine};
use hull_tests::{prereq, test_dir};

fn host_kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("host osrelease")
        .trim()
        .to_owned()
}

/// Output (stdout and stderr apart), exit status and the guest's own
/// kernel, from one container on one containerd.
fn run_reports_output_exit_code_and_guest_kernel(engine: Engine) {
    prereq::require_kvm();
    let dir = test_dir();
    let containerd = Containerd::start(engine, dir.path());

    let out = containerd.run(
        "uname",
        &[],
        &["sh", "-c", "uname -r; echo err >&2; exit 3"],
    );
    assert_eq!(out.status.code(), Some(3), "exit code through ctr: {out:?}");
    let guest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!guest.is_empty(), "no output from uname -r: {out:?}");
    assert_ne!(
        guest,
        host_kernel_release(),
        "the container ran on the host's kernel"
    );
    assert!(
        guest.starts_with("6.1."),
        "guest kernel {guest:?} is not hull's 6.1 kernel"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("err"),
        "stderr through ctr: {out:?}"
    );

    containerd.assert_nothing_left();
}

#[test]
fn ctr_run_containerd16_kvm() {
    run_reports_output_exit_code_and_guest_kernel(Engine::Containerd16);
}

#[test]
fn ctr_run_containerd17_kvm() {
    run_reports_output_exit_code_and_guest_kernel(Engine::Containerd17);
}

/// stdin reaches the container and closing it ends `cat`.
#[test]
fn ctr_run_stdin_is_piped_through_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let containerd = Containerd::start(Engine::Containerd16, dir.path());
    let input = b"hello from the host\nsecond line\n";
    let out = containerd.run_with_stdin("cat", &[], &["sh", "-c", "cat; echo done"], Some(input));
    let stdout = stdout_ok(&out, "ctr run cat");
    assert_eq!(stdout, "hello from the host\nsecond line\ndone\n");
    containerd.assert_nothing_left();
}

/// A detached container: exec, ps, metrics, pause/resume, kill.
#[test]
fn ctr_task_lifecycle_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let containerd = Containerd::start(Engine::Containerd16, dir.path());
    let id = "lifecycle";
    let out = containerd.run_detached(
        id,
        &[],
        &[
            "sh",
            "-c",
            "trap 'exit 42' TERM; while true; do sleep 1; done",
        ],
    );
    stdout_ok(&out, "ctr run -d");

    let out = containerd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        id,
        "sh",
        "-c",
        "echo exec-ok; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5), "task exec exit code: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "exec-ok\n");

    // The VMM behind it runs jailed: unprivileged, no capabilities, no
    // new privileges, under seccomp, in its own mount namespace.
    let vmm = hull_tests::leaks::processes_mentioning(dir.path())
        .into_iter()
        .find(|(pid, _)| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "hull-vmm")
        })
        .map(|(pid, _)| pid)
        .expect("the container's hull-vmm process");
    let status = std::fs::read_to_string(format!("/proc/{vmm}/status")).expect("VMM status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    assert_ne!(field("Uid"), "0", "the VMM runs as root: {status}");
    assert_eq!(field("CapEff"), "0000000000000000");
    assert_eq!(field("CapBnd"), "0000000000000000");
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2");
    assert_ne!(
        std::fs::read_link(format!("/proc/{vmm}/ns/mnt")).unwrap(),
        std::fs::read_link("/proc/self/ns/mnt").unwrap(),
        "the VMM shares the host's mount namespace"
    );

    // The pid containerd knows is a host process of this sandbox (the
    // jailer's supervisor, the VMM's parent), never a pid the guest chose.
    let ls = stdout_ok(&containerd.ctr(&["task", "ls"]), "task ls");
    let task_pid: u32 = ls
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid for {id} in: {ls}"));
    let vmm_parent = std::fs::read_to_string(format!("/proc/{vmm}/stat"))
        .ok()
        .and_then(|stat| {
            let fields: Vec<String> = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            fields.get(1)?.parse::<u32>().ok()
        });
    assert!(
        vmm_parent == Some(task_pid) || vmm.to_string() == task_pid.to_string(),
        "task pid {task_pid} is not the sandbox's host process (VMM {vmm}, its parent {vmm_parent:?})"
    );
    let ps = stdout_ok(&containerd.ctr(&["task", "ps", id]), "task ps");
    assert!(
        ps.lines()
            .skip(1)
            .any(|l| l.split_whitespace().next() == Some(&task_pid.to_string())),
        "task ps lists the sandbox's host pid {task_pid}: {ps}"
    );

    // The sandbox's state (sockets, the VMM's log, the guest console) is
    // private to its owner.
    use std::os::unix::fs::PermissionsExt;
    let state = hull_sandbox::state::state_dir_for(hull_tests::containerd::NAMESPACE, id);
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&state), 0o700, "{}", state.display());
    for file in ["vmm.log", "console.log"] {
        assert_eq!(mode(&state.join(file)), 0o600, "{file}");
    }

    let metrics = stdout_ok(&containerd.ctr(&["task", "metrics", id]), "task metrics");
    assert!(
        metrics.contains("memory.usage_in_bytes"),
        "task metrics: {metrics}"
    );

    stdout_ok(&containerd.ctr(&["task", "pause", id]), "task pause");
    let ls = stdout_ok(&containerd.ctr(&["task", "ls"]), "task ls");
    assert!(ls.contains("PAUSED"), "after pause: {ls}");
    stdout_ok(&containerd.ctr(&["task", "resume", id]), "task resume");
    let ls = stdout_ok(&containerd.ctr(&["task", "ls"]), "task ls");
    assert!(ls.contains("RUNNING"), "after resume: {ls}");

    stdout_ok(
        &containerd.ctr(&["task", "kill", "-s", "SIGTERM", id]),
        "task kill",
    );
    let status = containerd.wait_task_stopped_and_delete(id);
    assert_eq!(status, 42, "exit status after SIGTERM (trap exits 42)");
    stdout_ok(&containerd.ctr(&["container", "rm", id]), "container rm");
    containerd.assert_nothing_left();
}

/// A snapshot that already is a disk (containerd 1.7's blockfile
/// snapshotter: an ext4 image file per snapshot) goes to the guest as it
/// is: the VMM opens the snapshot's own file, no rootfs.img is built, the
/// container reads the image and writes to its disk.
#[test]
fn ctr_run_blockfile_snapshot_is_attached_directly_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let containerd = Containerd::start_with_blockfile(dir.path());
    let id = "blockfile";
    stdout_ok(
        &containerd.run_detached(id, &["--snapshotter", "blockfile"], &["sleep", "1000"]),
        "ctr run -d --snapshotter blockfile",
    );
    let snapshots = dir
        .path()
        .join("root/io.containerd.snapshotter.v1.blockfile");
    let vmm_disks: Vec<String> = containerd
        .vmm_pids()
        .into_iter()
        .flat_map(|pid| containerd.vmm_drives(pid))
        .map(|path| path.to_string_lossy().into_owned())
        .collect();
    assert!(
        vmm_disks
            .iter()
            .any(|arg| arg.contains(snapshots.to_str().unwrap())),
        "the VMM does not open the blockfile snapshot: {vmm_disks:?}"
    );
    assert!(
        !vmm_disks.iter().any(|arg| arg.contains("rootfs.img")),
        "a rootfs.img was built for a snapshot that is a disk: {vmm_disks:?}"
    );

    let out = containerd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "rw",
        id,
        "sh",
        "-c",
        "echo on-the-snapshot > /written && cat /written && test -x /bin/busybox && echo image-ok",
    ]);
    assert_eq!(
        stdout_ok(&out, "exec on the blockfile rootfs"),
        "on-the-snapshot\nimage-ok\n"
    );
    stdout_ok(
        &containerd.ctr(&["task", "kill", "-s", "SIGKILL", id]),
        "task kill",
    );
    assert_eq!(containerd.wait_task_stopped_and_delete(id), 137);
    stdout_ok(&containerd.ctr(&["container", "rm", id]), "container rm");
    containerd.assert_nothing_left();
}
