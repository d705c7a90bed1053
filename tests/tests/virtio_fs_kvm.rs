//! The virtio-fs device against the real virtiofsd, without the shim: one
//! boot of the test guest (hull-guest-probe as /init) that mounts the
//! share, reads a host file, writes one back, and writes then reads a file
//! larger than a FUSE request. Checked on the host: the probe's console
//! lines and the files in the shared directory. Needs KVM and root
//! (virtiofsd's namespace sandbox).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hull_protocol::vmm_api::exit_code;
use hull_protocol::vmm_config::{Console, FsConfig, VmConfig};
use hull_tests::child::Spawned;
use hull_tests::console::{probe_lines, tail};
use hull_tests::{prereq, test_dir};

const TAG: &str = "probe-share";
const INPUT: &[u8] = b"hull virtio-fs test: jumps over the lazy dog\n";
const VM_TIMEOUT: Duration = Duration::from_secs(300);
const BIG: usize = 1 << 20;

/// virtiofsd sharing `share`, its socket at `socket` once it listens.
fn virtiofsd(share: &Path, socket: &Path, log: &Path) -> Child {
    let mut child = Command::new(prereq::virtiofsd())
        .arg("--shared-dir")
        .arg(share)
        .arg("--socket-path")
        .arg(socket)
        .args([
            "--sandbox",
            "namespace",
            "--seccomp",
            "kill",
            "--cache",
            "auto",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("starting virtiofsd");
    for _ in 0..200 {
        if socket.exists() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "virtiofsd made no socket: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[test]
fn guest_shares_a_host_directory_through_virtiofsd_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let d = dir.path();
    let share = d.join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("in.txt"), INPUT).unwrap();
    let socket = d.join("vfs.sock");
    let mut daemon = virtiofsd(&share, &socket, &d.join("virtiofsd.log"));
    let console = d.join("console.log");
    let mut config = VmConfig::new(prereq::kernel());
    config.initramfs = Some(prereq::probe_initramfs());
    config.console = Console::File(console.clone());
    config.kernel_args = vec![format!("HULL_PROBE_FS={TAG}")];
    config.fs = Some(FsConfig {
        tag: TAG.into(),
        socket: Some(socket.clone()),
    });
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
        std::fs::read_to_string(d.join("virtiofsd.log")).unwrap_or_default(),
        tail(&console_text, 30)
    );
    drop(vm);
    // The VMM's end of the connection closed: virtiofsd ends by itself.
    let mut daemon_ended = None;
    for _ in 0..100 {
        daemon_ended = daemon.try_wait().unwrap();
        if daemon_ended.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if daemon_ended.is_none() {
        let _ = daemon.kill();
        let _ = daemon.wait();
    }
    let status = status.unwrap_or_else(|| panic!("the probe VM did not exit; {context}"));
    assert_eq!(status.code(), Some(exit_code::OK), "{status:?}; {context}");

    let lines = probe_lines(&console_text);
    let expected = format!("fs {TAG} mount=ok read={} write=ok big=ok", INPUT.len());
    assert!(
        lines.contains(&expected),
        "expected {expected:?} among {lines:?}; {context}"
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
        daemon_ended.is_some(),
        "virtiofsd outlived the VMM it served; {context}"
    );
}
