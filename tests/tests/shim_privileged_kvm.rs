//! A privileged container, root in its guest, doing what would hurt a host
//! under runc: crash the kernel through sysrq, load a module, read a raw
//! disk through mknod (its only disk is the empty rootfs slot; a device
//! node in the shared rootfs is refused), write kernel sysctls, mount
//! things. Under hull only
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

/// The host's mounts, but those of the test (under `dir`) and of the
/// running sandboxes' shares (their rootfs; the leak checks see them go).
fn mounts_outside(dir: &std::path::Path) -> Vec<String> {
    let mut under: Vec<String> = mounts_under(dir);
    under.extend(mounts_under(std::path::Path::new(
        hull_sandbox::share::SHARE_BASE,
    )));
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
        mknod /dev/disk b 254 0 && echo disk=$(cat /sys/block/vda/size) bytes=$(wc -c < /dev/disk); \
        mknod /tmp/null c 1 3; echo rootfs-mknod=$?; \
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
    // The only disk it can reach is the guest's rootfs slot, empty: the
    // rootfs is shared (virtio-fs), and no host disk is attached.
    assert!(
        text.contains("disk=0 bytes=0"),
        "reading the guest's disk: {text}"
    );
    // A device node in the shared rootfs would be one on the host (in the
    // snapshot): virtiofsd has no CAP_MKNOD.
    assert!(
        text.contains("rootfs-mknod=") && !text.contains("rootfs-mknod=0"),
        "mknod in the shared rootfs: {text}"
    );
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
