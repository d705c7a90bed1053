//! The real backend: needs root and virtiofsd (`HULL_VIRTIOFSD`, else
//! `virtiofsd` on PATH), and fails when either is missing.

use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::vstate::memory::GuestMemoryMmap;

/// Long enough for a loaded 2-core CI machine; a backend that never
/// answers still fails the test.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// virtiofsd serving `share` on `socket`, its stderr in `log`; killed on
/// drop.
struct Daemon(Child);

impl Daemon {
    fn start(share: &Path, socket: &Path, log: &Path) -> Self {
        let virtiofsd = std::env::var("HULL_VIRTIOFSD").unwrap_or_else(|_| "virtiofsd".into());
        let child = Command::new(&virtiofsd)
            .arg("--shared-dir")
            .arg(share)
            .arg("--socket-path")
            .arg(socket)
            .args(["--sandbox", "namespace", "--seccomp", "kill"])
            .args(["--cache", "auto"])
            .stderr(std::fs::File::create(log).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("this test needs root and virtiofsd ({virtiofsd}): {e}"));
        let mut daemon = Self(child);
        let deadline = Instant::now() + ANSWER_WITHIN;
        while !socket.exists() {
            if let Some(status) = daemon.0.try_wait().unwrap() {
                panic!("virtiofsd exited ({status}): {}", read(log));
            }
            assert!(Instant::now() < deadline, "no socket: {}", read(log));
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Waits for the backend to signal `call`.
fn called(call: &EventFd) -> bool {
    let mut fd = libc::pollfd {
        fd: call.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = ANSWER_WITHIN.as_millis() as i32;
    // SAFETY: one valid pollfd, borrowed for the call.
    let ready = unsafe { libc::poll(&mut fd, 1, ms) };
    ready == 1 && call.read().is_ok()
}

/// The handshake as the device does it, then a guest's FUSE_INIT put on
/// the shadow queue and kicked at once (no pause after the handshake: a
/// kick the backend reads before it enabled the ring would be lost).
#[test]
fn needs_root_virtiofsd_answers_through_the_shadow_queue() {
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("hello.txt"), "hi").unwrap();
    let (socket, log) = (dir.path().join("vfs.sock"), dir.path().join("log"));
    let mut daemon = Daemon::start(&share, &socket, &log);

    let mut backend = Backend::connect(&socket).expect("the handshake with virtiofsd");

    // In-header and init_in as a guest sends them, then room for the
    // answer.
    let guest = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let mut init = Vec::new();
    for v in [104u32, 26] {
        init.extend_from_slice(&v.to_le_bytes()); // len, opcode
    }
    init.extend_from_slice(&1u64.to_le_bytes()); // unique
    init.extend_from_slice(&[0u8; 24]); // nodeid, uid, gid, pid, extlen
    for v in [7u32, 31, 0, 0, 0] {
        init.extend_from_slice(&v.to_le_bytes()); // major, minor, ...
    }
    init.resize(104, 0);
    guest.write_slice(&init, GuestAddress(0x1000)).unwrap();
    let chain = [
        Descriptor::new(0x1000, 104, 0, 0),
        Descriptor::new(0x8000, 0x1000, VRING_DESC_F_WRITE as u16, 0),
    ];
    backend.queue.submit(&guest, 7, &chain).unwrap();
    backend.kick.write(1).unwrap();

    assert!(
        called(&backend.call),
        "virtiofsd did not signal the call eventfd within {ANSWER_WITHIN:?} (exited: {:?}): {}",
        daemon.0.try_wait(),
        read(&log)
    );
    let done = backend.queue.complete(Some(&guest)).unwrap();
    assert_eq!(done.len(), 1, "one answer: {done:?}");
    let (token, len) = done[0];
    assert_eq!(token, 7);
    let mut out = vec![0u8; len as usize];
    guest.read_slice(&mut out, GuestAddress(0x8000)).unwrap();
    let error = i32::from_le_bytes(out[4..8].try_into().unwrap());
    let major = u32::from_le_bytes(out[16..20].try_into().unwrap());
    assert_eq!((error, major), (0, 7), "FUSE_INIT's answer: {out:?}");
}
