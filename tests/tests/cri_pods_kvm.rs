//! Kubernetes pods through containerd 1.7's real CRI (a Rust CRI client,
//! as the kubelet would call it, runtime handler `hull`): one VM per pod,
//! every container of the pod in it. Two containers share the pod's
//! network namespace (one reaches the other on localhost) and a host
//! directory mounted in both (an emptyDir: what one writes, the other and
//! the host read) but not their rootfs or PID namespace; `ExecSync` works in each; a container exiting
//! with 3 is reported so while the other runs, and re-created it runs in
//! the same VM; a container outgrowing its own memory limit is OOM-killed
//! in the guest and reported so (`OOMKilled`); a second pod is a second VM; StopPodSandbox +
//! RemovePodSandbox leave nothing, also after the VMM was SIGKILLed under
//! a running pod; a container naming a pod that does not exist is refused.
//! Needs KVM, root, containerd 1.7 (trixie, extracted), CNI
//! (`install_cni`), the shim and virtiofsd.

use std::time::Duration;

use hull_tests::cri::{Cri, Extra};
use hull_tests::poll::try_poll_until;
use hull_tests::{leaks, prereq, test_dir};

const SERVE: &str = "while true; do echo pong | nc -l -p 8080; done";

fn boot_id(cri: &Cri, id: &str) -> String {
    let out = cri
        .exec(id, &["cat", "/proc/sys/kernel/random/boot_id"])
        .unwrap_or_else(|e| panic!("ExecSync in {id}: {e}"));
    assert_eq!(out.exit_code, 0, "boot id in {id}: {out:?}");
    out.stdout.trim().to_owned()
}

/// The guest's memory, MiB, as container `id` sees it.
fn mem_total_mib(cri: &Cri, id: &str) -> u64 {
    let out = cri
        .exec(id, &["grep", "MemTotal", "/proc/meminfo"])
        .expect("ExecSync meminfo");
    out.stdout
        .split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .unwrap_or_else(|| panic!("MemTotal in {id}: {out:?}"))
}

/// Fails with the CRI's error and the tail of containerd's log (the shim
/// logs there).
fn failed(cri: &Cri, what: &str, err: tonic::Status) -> ! {
    let log = cri.containerd.log();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(60)..].join("\n");
    panic!("{what}: {err:?}\ncontainerd's log (tail):\n{tail}")
}

fn vmm_count(cri: &Cri) -> usize {
    cri.containerd.vmm_pids().len()
}

fn wait_exited(cri: &Cri, id: &str) -> hull_tests::cri::Status {
    try_poll_until(
        Duration::from_secs(60),
        Duration::from_millis(500),
        || match cri.status(id) {
            Ok(s) if s.state == "CONTAINER_EXITED" => Ok(s),
            other => Err(other),
        },
    )
    .unwrap_or_else(|e| panic!("{id} did not exit: {e:?}"))
}

#[test]
fn pods_run_their_containers_in_one_vm_each_kvm() {
    prereq::require_kvm();
    prereq::virtiofsd();
    let dir = test_dir();
    let cri = Cri::start(dir.path());

    // Bad input: a container in a pod that does not exist.
    let ghost = cri.pod_config("ghost", None);
    let err = cri
        .create_container("no-such-pod", &ghost, "c", 0, &["true"])
        .expect_err("a container in a pod that does not exist");
    assert!(
        err.message().contains("no-such-pod"),
        "the error names the pod: {err:?}"
    );

    // Pod A (512 MiB of pod resources): two containers in one VM.
    let config_a = cri.pod_config("pod-a", Some(512 << 20));
    let pod_a = cri.run_pod(&config_a).expect("RunPodSandbox pod-a");
    assert_eq!(vmm_count(&cri), 1, "one VM for the pod");
    // The kubelet's emptyDir: one host directory mounted in both.
    let empty_dir = dir.path().join("empty-dir");
    std::fs::create_dir(&empty_dir).unwrap();
    let shared = Extra {
        mounts: &[(&empty_dir, "/shared")],
        ..Default::default()
    };
    let server = cri
        .create_with(
            &pod_a,
            &config_a,
            ("server", 0),
            &shared,
            &["sh", "-c", SERVE],
        )
        .unwrap_or_else(|e| failed(&cri, "CreateContainer server", e));
    cri.start_container(&server).expect("StartContainer server");
    let client = cri
        .create_with(
            &pod_a,
            &config_a,
            ("client", 0),
            &shared,
            &[
                "sh",
                "-c",
                "echo mine > /only-here; echo hi > /shared/from-client; sleep 100000",
            ],
        )
        .unwrap_or_else(|e| failed(&cri, "CreateContainer client", e));
    cri.start_container(&client).expect("StartContainer client");
    assert_eq!(vmm_count(&cri), 1, "still one VM with three containers");
    assert_eq!(
        boot_id(&cri, &server),
        boot_id(&cri, &client),
        "the pod's containers share one guest kernel"
    );
    // The pod's network namespace: the client reaches the server on
    // localhost.
    let reached = try_poll_until(
        Duration::from_secs(30),
        Duration::from_millis(500),
        || match cri.exec(&client, &["sh", "-c", "echo ping | nc 127.0.0.1 8080"]) {
            Ok(out) if out.stdout.contains("pong") => Ok(()),
            other => Err(other),
        },
    );
    assert!(reached.is_ok(), "localhost across the pod: {reached:?}");
    // Their own rootfs and PID namespaces.
    let seen = cri
        .exec(
            &server,
            &["sh", "-c", "test -e /only-here && echo shared || echo own"],
        )
        .expect("ExecSync server");
    assert_eq!(seen.stdout.trim(), "own", "{seen:?}");
    // The emptyDir: the client's file, read by the server and the host.
    let read = try_poll_until(
        Duration::from_secs(10),
        Duration::from_millis(500),
        || match cri.exec(&server, &["cat", "/shared/from-client"]) {
            Ok(out) if out.stdout.trim() == "hi" => Ok(()),
            other => Err(other),
        },
    );
    assert!(read.is_ok(), "the client's file in the server: {read:?}");
    assert_eq!(
        std::fs::read_to_string(empty_dir.join("from-client")).unwrap(),
        "hi\n"
    );
    let pid1 = |id: &str| {
        cri.exec(id, &["cat", "/proc/1/cmdline"])
            .expect("ExecSync")
            .stdout
            .replace('\0', " ")
    };
    let (server_init, client_init) = (pid1(&server), pid1(&client));
    assert!(server_init.contains("nc -l"), "{server_init:?}");
    assert!(client_init.contains("sleep 100000"), "{client_init:?}");

    // A container exits with 3: reported, the others run on; re-created,
    // it runs in the same VM.
    let quitter = cri
        .create_container(&pod_a, &config_a, "quitter", 0, &["sh", "-c", "exit 3"])
        .expect("CreateContainer quitter");
    cri.start_container(&quitter)
        .expect("StartContainer quitter");
    let exited = wait_exited(&cri, &quitter);
    assert_eq!(exited.exit_code, 3, "{exited:?}");
    assert_eq!(cri.status(&server).unwrap().state, "CONTAINER_RUNNING");
    cri.remove_container(&quitter)
        .expect("RemoveContainer quitter");
    let again = cri
        .create_container(&pod_a, &config_a, "quitter", 1, &["sleep", "100000"])
        .unwrap_or_else(|e| failed(&cri, "CreateContainer quitter again", e));
    cri.start_container(&again)
        .unwrap_or_else(|e| failed(&cri, "StartContainer quitter again", e));
    assert_eq!(boot_id(&cri, &again), boot_id(&cri, &server));
    assert_eq!(vmm_count(&cri), 1);

    // A container over its own memory limit (dd's 64 MiB buffer against
    // 32 MiB): the guest's OOM killer ends it, the CRI reports OOMKilled
    // (the shim forwarded the guest's OOM event under the member's id),
    // and the pod runs on.
    let hog = cri
        .create_with(
            &pod_a,
            &config_a,
            ("hog", 0),
            &Extra {
                memory_bytes: Some(32 << 20),
                ..Default::default()
            },
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        )
        .unwrap_or_else(|e| failed(&cri, "CreateContainer hog", e));
    cri.start_container(&hog).expect("StartContainer hog");
    let killed = wait_exited(&cri, &hog);
    assert_eq!(killed.exit_code, 137, "{killed:?}");
    // The exit and the OOM event travel separately; containerd sets the
    // reason whenever TaskOOM arrives.
    let reason = try_poll_until(
        Duration::from_secs(15),
        Duration::from_millis(500),
        || match cri.status(&hog) {
            Ok(s) if s.reason == "OOMKilled" => Ok(()),
            other => Err(other),
        },
    );
    assert!(reason.is_ok(), "the CRI reports OOMKilled: {reason:?}");
    assert_eq!(cri.status(&server).unwrap().state, "CONTAINER_RUNNING");
    cri.remove_container(&hog).expect("RemoveContainer hog");

    // Pod B: a VM of its own, another kernel.
    let config_b = cri.pod_config("pod-b", None);
    let pod_b = cri.run_pod(&config_b).expect("RunPodSandbox pod-b");
    let lone = cri
        .create_container(&pod_b, &config_b, "lone", 0, &["sleep", "100000"])
        .expect("CreateContainer lone");
    cri.start_container(&lone).expect("StartContainer lone");
    assert_eq!(vmm_count(&cri), 2, "a VM per pod");
    assert_ne!(boot_id(&cri, &lone), boot_id(&cri, &server));
    // Each VM sized for its pod: A's resources (512 MiB plus the overhead)
    // against B's defaults.
    assert!(mem_total_mib(&cri, &server) > 512, "pod A's VM");
    assert!(mem_total_mib(&cri, &lone) < 512, "pod B's VM");

    // Pod B's VMM dies: its container ends, the pod can be removed, and
    // nothing of it is left; pod A is untouched.
    let before: Vec<u32> = cri.containerd.vmm_pids();
    for id in [&server, &client, &again] {
        cri.stop_container(id).expect("StopContainer");
        cri.remove_container(id).expect("RemoveContainer");
    }
    cri.remove_pod(&pod_a).expect("Stop/RemovePodSandbox pod-a");
    let left: Vec<u32> = cri.containerd.vmm_pids();
    assert_eq!(left.len(), 1, "pod A's VM is gone: {before:?} -> {left:?}");
    // SAFETY: kill(2) on the VMM this test found.
    assert_eq!(unsafe { libc::kill(left[0] as i32, libc::SIGKILL) }, 0);
    let ended = wait_exited(&cri, &lone);
    assert_ne!(
        ended.exit_code, 0,
        "the VM's death is the container's: {ended:?}"
    );
    cri.remove_container(&lone).expect("RemoveContainer lone");
    cri.remove_pod(&pod_b).expect("Stop/RemovePodSandbox pod-b");
    assert!(leaks::processes_mentioning(dir.path())
        .iter()
        .all(|(pid, _)| leaks::process_name(*pid).as_deref() != Some("hull-vmm")));
    cri.assert_nothing_left();
}
