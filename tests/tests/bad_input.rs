//! `hull-vmm` and `hull boot` given bad input: each must exit with the
//! documented code (2: rejected by validation, nothing started; 1: found
//! while building the VM), name what was wrong on stderr, and leave no
//! socket file or process behind. No guest boots; the `_kvm` cases open
//! /dev/kvm because the error is only found while building the VM.

use std::ffi::OsString;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use hull_protocol::vmm_api::exit_code::{BAD_CONFIG, VMM_ERROR};
use hull_tests::child::{self, Finished};
use hull_tests::{leaks, prereq, test_dir, REJECT_TIMEOUT};

/// The control and vsock socket flags, inside `dir`, so a test can check
/// that no socket file is left when the VMM gives up.
fn socket_args(dir: &Path) -> Vec<OsString> {
    vec![
        "--api-sock".into(),
        dir.join("api.sock").into(),
        "--vsock-uds".into(),
        dir.join("v.sock").into(),
    ]
}

/// A file that passes validation as a kernel (it only has to exist).
fn placeholder_kernel(dir: &Path) -> OsString {
    let path = dir.join("vmlinux");
    std::fs::write(&path, b"not a kernel").expect("writing a placeholder kernel");
    path.into()
}

/// Run `hull-vmm args` in `dir`; require exit code `code`, every string of
/// `named` in stderr, no panic, and nothing left behind.
fn assert_rejected(dir: &Path, args: &[OsString], code: i32, named: &[&str]) -> Finished {
    let mut cmd = Command::new(prereq::vmm());
    cmd.args(args);
    let done = child::run(cmd, &dir.join("vmm.stderr"), REJECT_TIMEOUT);
    assert_eq!(
        done.status.code(),
        Some(code),
        "hull-vmm {args:?}: expected exit code {code}, got {:?}; stderr:\n{}",
        done.status,
        done.stderr
    );
    for name in named {
        assert!(
            done.stderr.contains(name),
            "hull-vmm {args:?}: stderr does not name {name:?}:\n{}",
            done.stderr
        );
    }
    assert!(
        !done.stderr.contains("panicked"),
        "hull-vmm panicked:\n{}",
        done.stderr
    );
    leaks::assert_clean(dir);
    for socket in ["api.sock", "v.sock"] {
        leaks::assert_gone(&dir.join(socket), "socket");
    }
    done
}

fn os(s: &str) -> OsString {
    s.into()
}

#[test]
fn bad_input_missing_kernel() {
    let dir = test_dir();
    let missing = dir.path().join("no-such-vmlinux");
    let mut args = vec![os("--kernel"), missing.clone().into()];
    args.extend(socket_args(dir.path()));
    assert_rejected(
        dir.path(),
        &args,
        BAD_CONFIG,
        &["kernel", &missing.to_string_lossy()],
    );
}

#[test]
fn bad_input_memory_zero() {
    let dir = test_dir();
    let mut args = vec![os("--kernel"), placeholder_kernel(dir.path())];
    args.extend([os("--memory-mib"), os("0")]);
    args.extend(socket_args(dir.path()));
    assert_rejected(dir.path(), &args, BAD_CONFIG, &["memory_mib"]);
}

#[test]
fn bad_input_vcpus_zero() {
    let dir = test_dir();
    let mut args = vec![os("--kernel"), placeholder_kernel(dir.path())];
    args.extend([os("--vcpus"), os("0")]);
    args.extend(socket_args(dir.path()));
    assert_rejected(dir.path(), &args, BAD_CONFIG, &["vcpus"]);
}

#[test]
fn bad_input_unknown_config_field() {
    let dir = test_dir();
    let kernel = placeholder_kernel(dir.path());
    let config = dir.path().join("vm.json");
    let json = serde_json::json!({ "kernel": kernel.to_string_lossy(), "memroy_mib": 64 });
    std::fs::write(&config, json.to_string()).expect("writing the config file");
    let mut args = vec![os("--config"), config.clone().into()];
    args.extend(socket_args(dir.path()));
    assert_rejected(
        dir.path(),
        &args,
        BAD_CONFIG,
        &["memroy_mib", &config.to_string_lossy()],
    );
}

#[test]
fn bad_input_socket_path_too_long() {
    let dir = test_dir();
    let kernel = placeholder_kernel(dir.path());
    // 120 bytes: longer than any Unix socket path (107).
    let prefix = dir.path().as_os_str().len() + 1;
    let api = dir.path().join("a".repeat(120 - prefix));
    let args = vec![os("--kernel"), kernel.clone(), os("--api-sock"), api.into()];
    assert_rejected(dir.path(), &args, BAD_CONFIG, &["api_socket"]);
    // 100 bytes: a valid socket path, but the vsock device also binds
    // `<path>_<port>` for guest-initiated connections, which would not fit.
    let uds = dir.path().join("v".repeat(100 - prefix));
    let args = vec![os("--kernel"), kernel, os("--vsock-uds"), uds.into()];
    assert_rejected(dir.path(), &args, BAD_CONFIG, &["vsock.uds_path"]);
}

#[test]
fn bad_input_garbage_kernel_kvm() {
    prereq::require_kvm();
    let dir = test_dir();
    let garbage = dir.path().join("garbage-vmlinux");
    let mut bytes = vec![0u8; 64 << 10];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("reading /dev/urandom");
    std::fs::write(&garbage, &bytes).expect("writing the garbage kernel");
    let mut args = vec![os("--kernel"), garbage.clone().into()];
    args.extend(socket_args(dir.path()));
    assert_rejected(
        dir.path(),
        &args,
        VMM_ERROR,
        &["kernel", &garbage.to_string_lossy()],
    );
}

#[test]
fn bad_input_initramfs_larger_than_memory_kvm() {
    prereq::require_kvm();
    let kernel = prereq::kernel();
    let dir = test_dir();
    let initramfs = dir.path().join("huge.cpio");
    std::fs::File::create(&initramfs)
        .and_then(|f| f.set_len(48 << 20))
        .expect("creating a sparse 48 MiB initramfs");
    let mut args = vec![os("--kernel"), kernel.into(), os("--memory-mib"), os("32")];
    args.extend([os("--initramfs"), initramfs.into()]);
    args.extend(socket_args(dir.path()));
    assert_rejected(dir.path(), &args, VMM_ERROR, &["initramfs"]);
}

/// The control socket cannot be bound (a regular file is in the way) after
/// the vsock socket was: the VMM must remove the vsock socket it made and
/// leave the file that is not its own alone.
#[test]
fn bad_input_socket_path_in_use_kvm() {
    prereq::require_kvm();
    let kernel = prereq::kernel();
    let dir = test_dir();
    let taken = dir.path().join("api.sock");
    std::fs::write(&taken, b"not a socket").expect("writing the file in the way");
    let args = vec![
        os("--kernel"),
        kernel.into(),
        os("--api-sock"),
        taken.clone().into(),
        os("--vsock-uds"),
        dir.path().join("v.sock").into(),
    ];
    let mut cmd = Command::new(prereq::vmm());
    cmd.args(&args);
    let done = child::run(cmd, &dir.path().join("vmm.stderr"), REJECT_TIMEOUT);
    assert_eq!(
        done.status.code(),
        Some(VMM_ERROR),
        "expected exit code {VMM_ERROR}; stderr:\n{}",
        done.stderr
    );
    assert!(
        done.stderr.contains(&*taken.to_string_lossy()),
        "stderr does not name {}:\n{}",
        taken.display(),
        done.stderr
    );
    leaks::assert_clean(dir.path());
    leaks::assert_gone(&dir.path().join("v.sock"), "vsock socket");
    assert_eq!(
        std::fs::read(&taken).ok().as_deref(),
        Some(&b"not a socket"[..]),
        "the VMM touched a file that is not its socket"
    );
}

#[test]
fn bad_input_hull_boot_missing_kernel() {
    let hull = prereq::hull_cli();
    let vmm = prereq::vmm();
    let dir = test_dir();
    let missing = dir.path().join("no-such-vmlinux");
    let initramfs = dir.path().join("initramfs.cpio");
    std::fs::write(&initramfs, b"").expect("writing a placeholder initramfs");
    let run_dir = dir.path().join("run");
    let mut cmd = Command::new(hull);
    cmd.arg("boot")
        .arg("--kernel")
        .arg(&missing)
        .arg("--initramfs")
        .arg(&initramfs)
        .arg("--vmm")
        .arg(&vmm)
        .env("HULL_RUN_DIR", &run_dir);
    let done = child::run(cmd, &dir.path().join("hull.stderr"), REJECT_TIMEOUT);
    assert!(
        !done.status.success(),
        "hull boot with a missing kernel succeeded"
    );
    for name in ["kernel", &*missing.to_string_lossy(), "--kernel"] {
        assert!(
            done.stderr.contains(name),
            "hull boot: stderr does not name {name:?}:\n{}",
            done.stderr
        );
    }
    assert!(!done.stderr.contains("panicked"), "{}", done.stderr);
    leaks::assert_clean(dir.path());
    assert!(
        hull_tests::dir_entries(&run_dir).is_empty(),
        "hull boot left state in {}: {:?}",
        run_dir.display(),
        hull_tests::dir_entries(&run_dir)
    );
}
