//! `hull-jailer` around a real `hull-vmm` booting the product guest: the
//! VMM runs unprivileged (non-zero uid, no capabilities, empty bounding
//! set, no_new_privs, seccomp) in its own namespaces with a root that holds
//! only what it needs, in a sized host cgroup; everything is removed when it
//! ends, and the jailer ends the way the VMM did. Needs KVM and root.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hull_tests::child::{self, Spawned};
use hull_tests::poll::{poll_until, try_poll_until};
use hull_tests::{dir_entries, leaks, prereq, test_dir};

const BOOT_RUNS: Duration = Duration::from_secs(60);

fn jailed_vmm(id: &str, run_dir: &Path, extra_vmm_args: &[&str]) -> Command {
    jailed_vmm_with(id, run_dir, &[], extra_vmm_args)
}

/// [`jailed_vmm`] with `extra_jail_args` for the jailer.
fn jailed_vmm_with(
    id: &str,
    run_dir: &Path,
    extra_jail_args: &[&str],
    extra_vmm_args: &[&str],
) -> Command {
    let (kernel, initramfs) = (prereq::kernel(), prereq::agent_initramfs());
    let mut cmd = Command::new(prereq::jailer());
    cmd.arg("--id")
        .arg(id)
        .arg("--exec-file")
        .arg(prereq::vmm())
        .arg("--run-dir")
        .arg(run_dir)
        .arg("--ro")
        .arg(&kernel)
        .arg("--ro")
        .arg(&initramfs)
        .args(["--memory-bytes", "402653184", "--pids-max", "16"])
        .args(extra_jail_args)
        .arg("--")
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initramfs")
        .arg(&initramfs)
        .arg("--api-sock")
        .arg(run_dir.join("api.sock"))
        .args(extra_vmm_args);
    cmd
}

/// The jailed VMM: the pid of the process in cgroup `hull/<id>`.
fn vmm_pid(id: &str) -> u32 {
    let procs = Path::new("/sys/fs/cgroup/pids/hull")
        .join(id)
        .join("cgroup.procs");
    let unified = Path::new("/sys/fs/cgroup/hull")
        .join(id)
        .join("cgroup.procs");
    let what = format!("a jailed hull-vmm in cgroup hull/{id}");
    poll_until(&what, BOOT_RUNS, Duration::from_millis(50), || {
        let text = std::fs::read_to_string(&procs)
            .or_else(|_| std::fs::read_to_string(&unified))
            .unwrap_or_default();
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        (exe.file_name() == prereq::vmm().file_name()).then_some(pid)
    })
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("VMM status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The real uid process `pid` runs as.
fn vmm_uid(pid: u32) -> u32 {
    status_field(pid, "Uid")
        .split_whitespace()
        .next()
        .and_then(|uid| uid.parse().ok())
        .unwrap_or_else(|| panic!("no uid in /proc/{pid}/status"))
}

fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    ["memory", "pids", "cpu"]
        .iter()
        .map(|c| Path::new("/sys/fs/cgroup").join(c).join("hull").join(id))
        .chain([Path::new("/sys/fs/cgroup/hull").join(id)])
        .filter(|p| p.exists())
        .collect()
}

#[test]
fn the_jailed_vmm_holds_nothing_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    let id = format!("jail-test-{}", std::process::id());
    let mut jailer = Spawned::start(
        jailed_vmm(&id, &run_dir, &[]),
        &dir.path().join("jailer.log"),
    );
    let pid = vmm_pid(&id);

    assert_ne!(vmm_uid(pid), 0, "the VMM runs as root");
    for field in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            status_field(pid, field),
            "0000000000000000",
            "{field} of the VMM"
        );
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    // The VMM installs its filters once its vCPUs run.
    poll_until(
        "the jailed VMM under seccomp",
        BOOT_RUNS,
        Duration::from_millis(50),
        || (status_field(pid, "Seccomp") == "2").then_some(()),
    );
    // PID 1 of its own PID namespace.
    assert!(
        status_field(pid, "NSpid").ends_with("\t1") || status_field(pid, "NSpid").ends_with(" 1")
    );
    for ns in ["mnt", "pid", "ipc", "uts", "net"] {
        let mine = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let its = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_ne!(mine, its, "the VMM shares the host's {ns} namespace");
    }
    // Its root is the jail: /dev holds kvm only, and every mount is the
    // jail's tmpfs or a bind of something it was given.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    assert_eq!(dir_entries(&root.join("dev")), vec!["kvm".to_owned()]);
    assert!(
        !root.join("etc").exists() && !root.join("proc").exists() && !root.join("home").exists()
    );
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let allowed = [
        "/".to_owned(),
        prereq::vmm().display().to_string(),
        prereq::kernel().display().to_string(),
        prereq::agent_initramfs().display().to_string(),
        run_dir.display().to_string(),
        "/usr/lib".into(),
        "/usr/lib64".into(),
        "/sys/module/kvm_pvm".into(),
    ];
    for line in mountinfo.lines() {
        let point = line.split(' ').nth(4).unwrap();
        assert!(
            allowed.iter().any(|a| a == point),
            "unexpected mount in the jail: {line}"
        );
        let options = line.split(' ').nth(5).unwrap();
        if point != run_dir.display().to_string() {
            assert!(
                options.starts_with("ro"),
                "{point} is writable in the jail: {line}"
            );
        }
    }
    let limit = cgroup_dirs(&id)
        .iter()
        .find_map(|d| {
            std::fs::read_to_string(d.join("memory.limit_in_bytes"))
                .or_else(|_| std::fs::read_to_string(d.join("memory.max")))
                .ok()
        })
        .expect("the sandbox's memory cgroup");
    assert_eq!(limit.trim(), "402653184");

    // SAFETY: SIGTERM to the jailer we started; the supervisor forwards it.
    unsafe { libc::kill(jailer.pid() as i32, libc::SIGTERM) };
    let status = jailer
        .wait(Duration::from_secs(20))
        .expect("the jailer ends after SIGTERM");
    let log = std::fs::read_to_string(dir.path().join("jailer.log")).unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(0),
        "jailed VMM after SIGTERM: {status}; log:\n{log}"
    );
    assert!(
        cgroup_dirs(&id).is_empty(),
        "cgroups left: {:?}",
        cgroup_dirs(&id)
    );
    assert!(
        dir_entries(&run_dir).is_empty(),
        "left in the run dir: {:?}",
        dir_entries(&run_dir)
    );
    leaks::assert_no_process_mentions(dir.path());
}

/// A loop device over `file`, detached when dropped.
struct LoopDevice(String);

impl LoopDevice {
    fn attach(file: &Path) -> Self {
        let out = Command::new(prereq::host_tool("losetup", "mount"))
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .expect("run losetup");
        assert!(out.status.success(), "losetup --find --show: {out:?}");
        Self(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new(prereq::host_tool("losetup", "mount"))
            .arg("--detach")
            .arg(&self.0)
            .status();
    }
}

/// A disk that is a block device (as a devmapper snapshot is) gets a device
/// node of its own in the jail, owned by the jail's uid, which the VMM
/// opens; the host's node keeps its owner.
#[test]
fn a_block_device_disk_gets_its_own_node_in_the_jail_kvm() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    prereq::require_kvm();
    let dir = test_dir();
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(4 << 20))
        .unwrap();
    let device = LoopDevice::attach(&image);
    let host_owner = std::fs::metadata(&device.0).unwrap().uid();
    let id = format!("jail-blk-{}", std::process::id());
    let drive = format!("{},id=data", device.0);
    let mut jailer = Spawned::start(
        jailed_vmm_with(&id, &run_dir, &["--rw", &device.0], &["--drive", &drive]),
        &dir.path().join("jailer.log"),
    );
    let pid = vmm_pid(&id);

    let node = PathBuf::from(format!("/proc/{pid}/root{}", device.0));
    let meta = std::fs::metadata(&node).expect("the device node in the jail");
    assert!(
        meta.file_type().is_block_device(),
        "{node:?} is not a block device"
    );
    assert_eq!(
        meta.rdev(),
        std::fs::metadata(&device.0).unwrap().rdev(),
        "the jail's node is another device"
    );
    assert_ne!(meta.uid(), 0, "the jail's node is root's");
    assert_eq!(
        std::fs::metadata(&device.0).unwrap().uid(),
        host_owner,
        "the host's node changed owner"
    );
    let opened = try_poll_until(BOOT_RUNS, Duration::from_millis(50), || {
        dir_entries(Path::new(&format!("/proc/{pid}/fd")))
            .iter()
            .filter_map(|fd| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok())
            .any(|target| target == Path::new(&device.0))
            .then_some(())
            .ok_or(())
    });
    if opened.is_err() {
        panic!(
            "the jailed VMM never opened {}; log:\n{}",
            device.0,
            std::fs::read_to_string(dir.path().join("jailer.log")).unwrap_or_default()
        );
    }

    // SAFETY: SIGTERM to the jailer we started; the supervisor forwards it.
    unsafe { libc::kill(jailer.pid() as i32, libc::SIGTERM) };
    let status = jailer
        .wait(Duration::from_secs(20))
        .expect("the jailer ends after SIGTERM");
    assert_eq!(status.code(), Some(0), "jailed VMM after SIGTERM: {status}");
    assert!(cgroup_dirs(&id).is_empty());
    leaks::assert_no_process_mentions(dir.path());
}

#[test]
fn the_jailer_ends_as_the_vmm_did_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    let id = format!("jail-sigsys-{}", std::process::id());
    let cmd = jailed_vmm(&id, &run_dir, &["--test-forbidden-syscall"]);
    let mut jailer = Spawned::start(cmd, &dir.path().join("jailer.log"));
    let status = jailer.wait(BOOT_RUNS).expect("the jailer ends");
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "jailer status {status}"
    );
    assert!(cgroup_dirs(&id).is_empty());
    // The jail is gone; the killed VMM's socket file is its caller's to
    // remove with the run directory (the shim's delete does).
    assert!(!run_dir.join("jail").exists());
}

#[test]
fn bad_jailer_input_is_named_and_leaves_nothing() {
    let dir = test_dir();
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    let cases: [(&str, Vec<String>, &str); 3] = [
        ("bad id", vec!["--id".into(), "../x".into()], "--id"),
        (
            "root uid",
            vec!["--id".into(), "j1".into(), "--uid".into(), "0".into()],
            "root",
        ),
        (
            "missing file",
            vec![
                "--id".into(),
                "j2".into(),
                "--ro".into(),
                "/nonexistent/vmlinux".into(),
            ],
            "--ro /nonexistent/vmlinux",
        ),
    ];
    for (what, args, expected) in cases {
        let out = Command::new(prereq::jailer())
            .args(&args)
            .arg("--exec-file")
            .arg(prereq::vmm())
            .arg("--run-dir")
            .arg(&run_dir)
            .output()
            .expect("run hull-jailer");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{what}: {stderr:?} does not name {expected:?}"
        );
        assert!(
            dir_entries(&run_dir).is_empty(),
            "{what} left {:?}",
            dir_entries(&run_dir)
        );
        assert!(cgroup_dirs("j1").is_empty() && cgroup_dirs("j2").is_empty());
    }
}

/// A supervisor killed outright (the shim's last resort) takes the VMM with
/// it: no orphaned VM keeps running in its namespace.
#[test]
fn killing_the_jailer_kills_the_vmm_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    let id = format!("jail-kill-{}", std::process::id());
    let mut jailer = Spawned::start(
        jailed_vmm(&id, &run_dir, &[]),
        &dir.path().join("jailer.log"),
    );
    let vmm = vmm_pid(&id);
    // SAFETY: SIGKILL to the jailer this test started.
    unsafe { libc::kill(jailer.pid() as i32, libc::SIGKILL) };
    jailer
        .wait(Duration::from_secs(10))
        .expect("the jailer dies");
    poll_until(
        "the VMM dying with its killed jailer",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let gone = !Path::new(&format!("/proc/{vmm}")).exists();
            let state = std::fs::read_to_string(format!("/proc/{vmm}/stat")).unwrap_or_default();
            (gone || state.split(' ').nth(2) == Some("Z")).then_some(())
        },
    );
    leaks::assert_no_process_mentions(&run_dir);
    // The cgroup outlives a SIGKILLed supervisor; whoever started it (the
    // shim's delete) removes it, as here.
    for dir in cgroup_dirs(&id) {
        poll_until(
            &format!("removing {}", dir.display()),
            Duration::from_secs(5),
            Duration::from_millis(50),
            || std::fs::remove_dir(&dir).ok(),
        );
    }
}

/// The jailer's default uid hash (FNV-1a of the id, in 2^20 uids).
fn derived_uid_slot(id: &str) -> u32 {
    let hash = id.bytes().fold(0x811c_9dc5_u32, |hash, b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    hash % (1 << 20)
}

/// Two sandboxes whose ids hash to the same default uid still get two
/// uids (the second is leased the next free one), a live sandbox's uid is
/// refused to a third given it explicitly, and each VMM's uid may hold 64
/// processes at most.
#[test]
fn live_sandboxes_never_share_a_uid_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let prefix = format!("uid-{}", std::process::id());
    let mut seen = std::collections::HashMap::new();
    let (first, second) = (0u32..)
        .find_map(|n| {
            let id = format!("{prefix}-{n}");
            let slot = derived_uid_slot(&id);
            seen.insert(slot, id.clone()).map(|other| (other, id))
        })
        .unwrap();
    let mut jailers = Vec::new();
    let mut uids = Vec::new();
    for id in [&first, &second] {
        let run_dir = dir.path().join(id);
        std::fs::create_dir(&run_dir).unwrap();
        jailers.push(Spawned::start(
            jailed_vmm(id, &run_dir, &[]),
            &dir.path().join(format!("{id}.log")),
        ));
        let pid = vmm_pid(id);
        uids.push(vmm_uid(pid));
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let nproc = limits
            .lines()
            .find(|l| l.starts_with("Max processes"))
            .unwrap_or_default();
        assert_eq!(
            nproc.split_whitespace().nth(2),
            Some("64"),
            "RLIMIT_NPROC of the VMM: {nproc}"
        );
    }
    assert_ne!(
        uids[0], uids[1],
        "{first} and {second} hash to one uid and got it both"
    );

    let run_dir = dir.path().join("third");
    std::fs::create_dir(&run_dir).unwrap();
    let taken = uids[0].to_string();
    let third = child::run(
        jailed_vmm_with("third", &run_dir, &["--uid", &taken], &[]),
        &dir.path().join("third.log"),
        Duration::from_secs(20),
    );
    assert_eq!(third.status.code(), Some(2), "{}", third.stderr);
    assert!(
        third.stderr.contains(&format!("uid {taken} is in use")),
        "{}",
        third.stderr
    );

    for mut jailer in jailers {
        // SAFETY: SIGTERM to a jailer this test started.
        unsafe { libc::kill(jailer.pid() as i32, libc::SIGTERM) };
        let status = jailer.wait(Duration::from_secs(20));
        assert_eq!(status.and_then(|s| s.code()), Some(0));
    }
    leaks::assert_no_process_mentions(dir.path());
}
