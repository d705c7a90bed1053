//! A private network namespace for one test: the test's thread moves into
//! it, so every daemon and tool it starts (containerd, dockerd, CNI
//! plugins, the shim and its sandboxes' namespaces) lives there. Bridges,
//! iptables rules and addresses the test makes go away with it; the host's
//! network is never touched.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use crate::poll::try_poll_until;

/// Moves the calling thread into a new network namespace with loopback up.
/// Everything the thread starts afterwards inherits it.
pub fn enter_private() {
    // SAFETY: unshare with a namespace flag only; it moves this thread.
    let done = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        done,
        0,
        "unshare(CLONE_NEWNET) failed: {} (the network tests need root)",
        std::io::Error::last_os_error()
    );
    let out = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .output()
        .expect("run ip");
    assert!(out.status.success(), "ip link set lo up: {out:?}");
}

/// `ip ARGS...` in the current thread's namespace: its stdout.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {out:?}", args.join(" "));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `GET /` over HTTP/1.0 from `addr`, retried until it answers or `within`
/// passes: the body, or the last error.
pub fn http_get(addr: SocketAddr, within: Duration) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut last = String::new();
    let got = try_poll_until(within, Duration::from_millis(250), || {
        let attempt = (|| {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok::<_, std::io::Error>(answer)
        })();
        match attempt {
            Ok(answer) if answer.starts_with("HTTP/1") => Ok(answer),
            Ok(answer) => {
                last = format!("not HTTP: {answer:?}");
                Err(())
            }
            Err(e) => {
                last = e.to_string();
                Err(())
            }
        }
    });
    got.map_err(|_| format!("no HTTP answer from {addr} within {within:?}: {last}"))
}
