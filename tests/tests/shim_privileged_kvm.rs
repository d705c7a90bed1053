//! A privileged container, root in its guest, doing what would hurt a host
//! under runc: crash the kernel through sysrq, load a module, read a raw
//! disk through mknod, write kernel sysctls, mount things. Under hull only
//! its own VM suffers: the host's kernel, files and mounts and a second
//! container stay as they were, and the task's exit is reported. Needs KVM,
//! containerd and the shim.

use hull_tests::containerd::{mounts_under, stdout_ok, Containerd, Engine};
use hull_tests::{prereq, test_dir};

fn host_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

/// The host's mount points, but for those containerd makes under the test's
/// own directory.
fn mounts_outside(dir: &std::path::Path) -> Vec<String> {
    let under: Vec<String> = mounts_under(dir);
    let mut all: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| !under.contains(m))
        .collect();
    all.sort();
    all
}

#[test]
fn privileged_container_hurts_only_its_guest_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let containerd = Containerd::start(Engine::Containerd16, dir.path());
    let hostname = host_hostname();
    let host_mounts = mounts_outside(dir.path());

    // A bystander in its own VM.
    let out = containerd.run_detached(
        "bystander",
        &[],
        &["sh", "-c", "while true; do sleep 1; done"],
    );
    stdout_ok(&out, "ctr run -d bystander");

    let script = "\
        insmod /bin/busybox; echo insmod=$?; \
        mknod /tmp/disk b 254 0 && dd if=/tmp/disk bs=1024 skip=1 count=1 2>/dev/null | od -An -tx1 -j56 -N2 | tr -d ' \\n'; echo; \
        echo pwned > /proc/sys/kernel/hostname; echo hostname=$(cat /proc/sys/kernel/hostname); \
        mkdir -p /tmp/m && mount -t tmpfs none /tmp/m && echo mounted; \
        echo 1 > /proc/sys/kernel/panic_on_oops; echo sysctl=$?";
    let out = containerd.run("attacker", &["--privileged"], &["sh", "-c", script]);
    let text = stdout_ok(&out, "privileged attacker");
    // No module loading in hull's guest kernel at all.
    assert!(
        text.contains("insmod=") && !text.contains("insmod=0"),
        "insmod: {text}"
    );
    // The raw disk it can read is its own image (ext4 magic 0xef53, little
    // endian), never a host disk.
    assert!(text.contains("53ef"), "reading the guest's disk: {text}");
    assert!(
        text.contains("hostname=pwned") && text.contains("mounted"),
        "{text}"
    );
    assert_eq!(host_hostname(), hostname, "the host's hostname changed");

    // Crashing the guest kernel: the task ends, its exit is reported.
    let out = containerd.run(
        "crasher",
        &["--privileged"],
        &[
            "sh",
            "-c",
            "echo c > /proc/sysrq-trigger; echo b > /proc/sysrq-trigger; sleep 5; exit 7",
        ],
    );
    assert!(
        !out.status.success(),
        "the crashing task reported success: {out:?}"
    );

    // The host and the bystander are untouched.
    assert_eq!(host_hostname(), hostname);
    assert_eq!(
        mounts_outside(dir.path()),
        host_mounts,
        "the host's mount table changed"
    );
    let out = containerd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "check",
        "bystander",
        "echo",
        "alive",
    ]);
    assert_eq!(stdout_ok(&out, "exec into the bystander").trim(), "alive");
    stdout_ok(
        &containerd.ctr(&["task", "kill", "-s", "SIGKILL", "bystander"]),
        "kill bystander",
    );
    let status = containerd.wait_task_stopped_and_delete("bystander");
    assert_eq!(status, 137);
    stdout_ok(
        &containerd.ctr(&["container", "rm", "bystander"]),
        "container rm",
    );
    containerd.assert_nothing_left();
}
