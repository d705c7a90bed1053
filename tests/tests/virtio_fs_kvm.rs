//! The virtio-fs device against the real virtiofsd, without the shim: one
//! boot of the test guest (hull-guest-probe as /init) that mounts the
//! share, reads a host file, writes one back, and writes then reads a file
//! larger than a FUSE request. Checked on the host: the probe's console
//! lines and the files in the shared directory. virtiofsd runs as the
//! shim runs it (`hull_sandbox::share::Share`). Needs KVM and root
//! (virtiofsd's namespace sandbox).

use std::process::Command;
use std::time::Duration;

use hull_protocol::vmm_api::exit_code;
use hull_protocol::vmm_config::{Console, FsConfig, VmConfig};
use hull_sandbox::share::Share;
use hull_tests::child::Spawned;
use hull_tests::console::{probe_lines, tail};
use hull_tests::{prereq, test_dir};

const TAG: &str = "probe-share";
const INPUT: &[u8] = b"hull virtio-fs test: jumps over the lazy dog\n";
const VM_TIMEOUT: Duration = Duration::from_secs(300);
const BIG: usize = 1 << 20;

#[test]
fn guest_shares_a_host_directory_through_virtiofsd_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let d = dir.path();
    // The product's share, confined as a sandbox's virtiofsd is, with no
    // binds: the probe's files go straight into its root.
    let mut daemon = Share::start(&prereq::virtiofsd(), &d.join("s"), &[])
        .expect("starting virtiofsd as a sandbox would");
    let share = daemon.root();
    std::fs::write(share.join("in.txt"), INPUT).unwrap();
    let socket = daemon.socket();
    let console = d.join("console.log");
    let mut config = VmConfig::new(prereq::kernel());
    config.initramfs = Some(prereq::probe_initramfs());
    config.console = Console::File(console.clone());
    config.kernel_args = vec![format!("HULL_PROBE_FS={TAG}")];
    config.fs = vec![FsConfig {
        tag: TAG.into(),
        socket: Some(socket.clone()),
    }];
    let config_path = d.join("vm.json");
    std::fs::write(&config_path, config.to_json()).unwrap();

    let mut cmd = Command::new(prereq::vmm());
    cmd.arg("--config").arg(&config_path);
    let mut vm = Spawned::start(cmd, &d.join("vmm.stderr"));
    let status = vm.wait(VM_TIMEOUT);
    let console_text = std::fs::read_to_string(&console).unwrap_or_default();
    let context = format!(
        "VMM stderr:\n{}\nvirtiofsd:\n{}\nguest console (tail):\n{}",
        vm.stderr_text(),
        std::fs::read_to_string(d.join("s/virtiofsd.log")).unwrap_or_default(),
        tail(&console_text, 30)
    );
    drop(vm);
    // The VMM's end of the connection closed: virtiofsd ends by itself.
    let mut daemon_ended = false;
    for _ in 0..100 {
        daemon_ended = !daemon.is_running();
        if daemon_ended {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = status.unwrap_or_else(|| panic!("the probe VM did not exit; {context}"));
    assert_eq!(status.code(), Some(exit_code::OK), "{status:?}; {context}");

    let lines = probe_lines(&console_text);
    let expected = format!("fs {TAG} mount=ok read={} write=ok big=ok ", INPUT.len());
    let line = lines
        .iter()
        .find(|l| l.starts_with(&expected))
        .unwrap_or_else(|| panic!("expected {expected:?}... among {lines:?}; {context}"));
    // Open-by-handle from the guest (forged FUSE handles for node ids up
    // to 512) reaches nothing outside the share, or nothing at all.
    let handles = line.rsplit("handles=").next().unwrap_or_default();
    eprintln!("open-by-handle in the guest: handles={handles}");
    assert!(
        handles.starts_with("inside:") || handles.starts_with("none("),
        "open-by-handle in the guest: {line}"
    );
    let reversed: String = String::from_utf8_lossy(INPUT)
        .trim_end()
        .chars()
        .rev()
        .collect();
    assert_eq!(
        std::fs::read_to_string(share.join("out.txt")).unwrap(),
        format!("{reversed}\nwritten by hull-guest-probe on /dev/{TAG}\n"),
        "what the guest wrote reached the host directory"
    );
    let big = std::fs::read(share.join("big.bin")).unwrap();
    assert_eq!(big.len(), BIG);
    assert!(big.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    assert!(
        daemon_ended,
        "virtiofsd outlived the VMM it served; {context}"
    );
    // The share's cleanup removes only what it made (mounts, empty
    // directories): the files the test and the guest wrote in its root
    // stay, so the test removes them first.
    for name in ["in.txt", "out.txt", "big.bin"] {
        std::fs::remove_file(share.join(name)).unwrap();
    }
    drop(daemon);
    assert!(
        !d.join("s").exists(),
        "the share's cleanup left its directory"
    );
}
