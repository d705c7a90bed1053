//! One boot of the test guest (real kernel, hull-guest-probe as /init) that
//! exercises the devices from inside: a guest-initiated vsock connection to
//! a host listener, an ext4 read-write drive (/dev/vda) the guest reads and
//! writes, a read-only drive (/dev/vdb) the guest must fail to write, and
//! two processes whose AVX registers must survive switching between them.
//! Before those, the guest resets and re-activates every block and vsock
//! device (driver unbind and bind), so they run on re-activated devices;
//! the host knocks on the vsock device while it is reset, then connects
//! to a guest port through it, as the shim reaches the agent.
//! The results are checked on the host: what the listener received, the
//! probe's console lines, and the images themselves (debugfs, e2fsck).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hull_protocol::vmm_api::exit_code;
use hull_tests::child::Spawned;
use hull_tests::console::{probe_lines, tail};
use hull_tests::poll::try_poll_until;
use hull_tests::{ext4, leaks, prereq, test_dir};

/// The host port the probe connects to (`<uds>_5000` on the host).
const PROBE_PORT: u32 = 5000;
/// The guest port the probe listens on after resetting its devices.
const REBIND_PORT: u32 = 6000;
/// What the host sends there; the probe answers `echo <it>`.
const KNOCK_LINE: &str = "host-after-reset";
/// What the probe sends (its `vsock::HELLO`).
const PROBE_HELLO: &str = "hello from hull-guest-probe";
/// Boot (~50 s here with two drives) plus the checks, with margin.
const VM_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the host peer waits for the probe's line once connected.
const PEER_IO_TIMEOUT: Duration = Duration::from_secs(30);
const INPUT: &[u8] = b"hull block test: the quick brown fox\n";

/// The host end of the probe's vsock connection: listens on `<uds>_<port>`
/// until the probe connects or it is told to stop, reads one line, answers
/// with `reply`, and removes its socket file.
struct HostPeer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<String, String>>,
}

impl HostPeer {
    fn listen(uds: &Path, port: u32, reply: String) -> Self {
        let mut path = uds.as_os_str().to_owned();
        path.push(format!("_{port}"));
        let path = PathBuf::from(path);
        let listener =
            UnixListener::bind(&path).unwrap_or_else(|e| panic!("binding {}: {e}", path.display()));
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let result = serve_once(&listener, &stopped, &reply);
            drop(listener);
            let _ = std::fs::remove_file(&path);
            result
        });
        Self { stop, thread }
    }

    /// Stop waiting; what the probe sent, or why nothing was received.
    fn finish(self) -> Result<String, String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .unwrap_or_else(|_| Err("the host peer thread panicked".into()))
    }
}

fn serve_once(listener: &UnixListener, stop: &AtomicBool, reply: &str) -> Result<String, String> {
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::SeqCst) {
                    return Err("the probe never connected".into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    let io = |e: std::io::Error| format!("talking to the probe: {e}");
    stream.set_nonblocking(false).map_err(io)?;
    stream.set_read_timeout(Some(PEER_IO_TIMEOUT)).map_err(io)?;
    stream
        .set_write_timeout(Some(PEER_IO_TIMEOUT))
        .map_err(io)?;
    let mut line = String::new();
    BufReader::new((&stream).take(256))
        .read_line(&mut line)
        .map_err(io)?;
    (&stream)
        .write_all(format!("{reply}\n").as_bytes())
        .map_err(io)?;
    Ok(line)
}

/// The host's side of the reset check, on a thread: while the probe's vsock
/// device is reset (`rebind vsock unbound` on the console) it knocks (a
/// hybrid-vsock `CONNECT` the VMM cannot deliver then); once the probe
/// listens again it connects to the guest port and exchanges a line, as
/// the shim reaches the agent. Returns the guest's answer.
fn knock_across_reset(
    uds: PathBuf,
    console: PathBuf,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<String, String>> {
    std::thread::spawn(move || {
        wait_console(&console, "rebind vsock unbound", &stop)?;
        if let Ok(mut knock) = UnixStream::connect(&uds) {
            let _ = knock.write_all(format!("CONNECT {REBIND_PORT}\n").as_bytes());
            let _ = knock.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = knock.read(&mut [0u8; 64]);
        }
        wait_console(
            &console,
            &format!("rebind listening port={REBIND_PORT}"),
            &stop,
        )?;
        // The probe says it listens just before it does: retry a refusal,
        // until the test gives up (then the error is final at once).
        try_poll_until(
            PEER_IO_TIMEOUT,
            Duration::from_millis(500),
            || match exchange_with_guest(&uds) {
                Ok(answer) => Ok(Ok(answer)),
                Err(e) if stop.load(Ordering::SeqCst) => Ok(Err(e)),
                Err(e) => Err(e),
            },
        )
        .and_then(|answer| answer)
        .map_err(|e| format!("connecting to guest port {REBIND_PORT} after the reset: {e}"))
    })
}

/// Wait until the console shows `marker` (or the test gives up).
fn wait_console(console: &Path, marker: &str, stop: &AtomicBool) -> Result<(), String> {
    while !stop.load(Ordering::SeqCst) {
        if std::fs::read_to_string(console).is_ok_and(|text| text.contains(marker)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("the probe never reported {marker:?}"))
}

/// Hybrid vsock: `CONNECT port`, `OK <host port>`, then one line each way.
fn exchange_with_guest(uds: &Path) -> Result<String, String> {
    let io = |e: std::io::Error| e.to_string();
    let mut stream = UnixStream::connect(uds).map_err(io)?;
    stream.set_read_timeout(Some(PEER_IO_TIMEOUT)).map_err(io)?;
    stream
        .write_all(format!("CONNECT {REBIND_PORT}\n").as_bytes())
        .map_err(io)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(io)?);
    let mut ok = String::new();
    reader.read_line(&mut ok).map_err(io)?;
    if !ok.starts_with("OK ") {
        return Err(format!("CONNECT answered {ok:?}"));
    }
    stream
        .write_all(format!("{KNOCK_LINE}\n").as_bytes())
        .map_err(io)?;
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(io)?;
    Ok(answer.trim_end().to_string())
}

/// What the probe writes to out.txt: the input reversed, then a marker.
fn expected_output(input: &[u8], dev: &str) -> Vec<u8> {
    let reversed: String = String::from_utf8_lossy(input)
        .trim_end()
        .chars()
        .rev()
        .collect();
    format!("{reversed}\nwritten by hull-guest-probe on /dev/{dev}\n").into_bytes()
}

#[test]
fn guest_vsock_and_block_kvm() {
    prereq::require_kvm();
    let (vmm_bin, kernel, initramfs) = (prereq::vmm(), prereq::kernel(), prereq::probe_initramfs());
    let dir = test_dir();
    let d = dir.path();
    let rw_image = ext4::make_image(d, "rw", 16, &[("in.txt", INPUT)]);
    let ro_image = ext4::make_image(d, "ro", 16, &[("in.txt", INPUT)]);
    let ro_before = std::fs::read(&ro_image).expect("reading the read-only image");
    let uds = d.join("v.sock");
    let console = d.join("console.log");
    let reply = format!("hull-test-reply-{}", std::process::id());
    let peer = HostPeer::listen(&uds, PROBE_PORT, reply.clone());
    let stop_knocking = Arc::new(AtomicBool::new(false));
    let knocker = knock_across_reset(uds.clone(), console.clone(), stop_knocking.clone());

    let mut cmd = Command::new(&vmm_bin);
    cmd.arg("--kernel")
        .arg(&kernel)
        .arg("--initramfs")
        .arg(&initramfs)
        .arg("--console")
        .arg(&console)
        .arg("--vsock-uds")
        .arg(&uds)
        .arg("--drive")
        .arg(&rw_image)
        .arg("--drive")
        .arg(format!("{},ro", ro_image.display()))
        .args(["--kernel-arg", "HULL_PROBE_BLK=1"])
        .args(["--kernel-arg", "HULL_PROBE_BLK_RO=1"])
        .args(["--kernel-arg", "HULL_PROBE_VECTORS=1"])
        .arg("--kernel-arg")
        .arg(format!("HULL_PROBE_REBIND_PORT={REBIND_PORT}"))
        .arg("--kernel-arg")
        .arg(format!("HULL_PROBE_VSOCK_PORT={PROBE_PORT}"));
    let started = Instant::now();
    let mut vm = Spawned::start(cmd, &d.join("vmm.stderr"));
    let status = vm.wait(VM_TIMEOUT);
    let console_text = std::fs::read_to_string(&console).unwrap_or_default();
    let context = format!(
        "VMM stderr:\n{}\nguest console (tail):\n{}",
        vm.stderr_text(),
        tail(&console_text, 30)
    );
    stop_knocking.store(true, Ordering::SeqCst);
    let knocked = knocker
        .join()
        .unwrap_or_else(|_| Err("the knocking thread panicked".into()));
    let Some(status) = status else {
        drop(vm);
        let _ = peer.finish();
        panic!("the probe VM did not exit within {VM_TIMEOUT:?} (killed); {context}");
    };
    eprintln!("probe VM ran {:?}", started.elapsed());
    let received = peer.finish();
    drop(vm);

    assert_eq!(
        status.code(),
        Some(exit_code::OK),
        "the probe VM ended with {status:?}; {context}"
    );
    assert_eq!(
        received.as_deref().map(str::trim_end),
        Ok(PROBE_HELLO),
        "the host listener on {}_{PROBE_PORT}; {context}",
        uds.display()
    );

    let lines = probe_lines(&console_text);
    let n = INPUT.len();
    // Every device was reset and re-activated before the checks below, and
    // the host reached the guest through the re-activated vsock device.
    assert_eq!(
        knocked.as_deref(),
        Ok(format!("echo {KNOCK_LINE}").as_str()),
        "the host's connection to the guest after its vsock reset; {context}"
    );
    let expected_start = [
        "start".to_string(),
        "rebind vsock unbound".to_string(),
        format!("rebind listening port={REBIND_PORT}"),
        format!("rebind ok blk=2 vsock=1 host={KNOCK_LINE:?}"),
        format!("vsock ok port={PROBE_PORT} reply={reply:?}"),
        format!("blk vda mount=rw read={n} write=ok"),
    ];
    assert!(
        lines.len() == 9 && lines[..6] == expected_start && lines[8] == "done",
        "probe report lines: expected {expected_start:?}, the vdb line, the vectors line, \"done\"; got {lines:?}; {context}"
    );
    // The guest kernel refuses the read-write mount of a drive the VMM
    // offers with VIRTIO_BLK_F_RO (EACCES or EROFS, by kernel version),
    // then the write on the read-only mount fails.
    let vdb = &lines[6];
    assert!(
        vdb.starts_with("blk vdb mount=ro rw_refused=")
            && vdb.ends_with(&format!(" read={n} write=EROFS")),
        "the read-only drive: expected a read-only mount and a refused write, got {vdb:?}"
    );

    // Two guest processes each keep their own AVX registers (ymm, or zmm
    // and the k masks) across 100 switches between them: the guest kernel
    // saves all the state the CPU lets user code use.
    let vectors = &lines[7];
    assert!(
        vectors.starts_with("vectors ok "),
        "vector registers across context switches: {vectors:?}; {context}"
    );

    assert_eq!(
        ext4::read_file(&rw_image, "/out.txt").map(|b| String::from_utf8_lossy(&b).into_owned()),
        Some(String::from_utf8_lossy(&expected_output(INPUT, "vda")).into_owned()),
        "out.txt on the read-write drive"
    );
    ext4::assert_consistent(&rw_image);
    assert!(
        std::fs::read(&ro_image).expect("reading the read-only image") == ro_before,
        "the read-only image changed"
    );

    leaks::assert_gone(&uds, "vsock socket");
    leaks::assert_clean(d);
}
