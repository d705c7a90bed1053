//! Networking checks (H6): what a sandbox's network needs on the host, in
//! plain words. A sandbox's VM gets a tap in the sandbox's network
//! namespace, wired to the network plugin's veth with tc (ingress qdisc +
//! mirred redirect); Docker's bridge and published ports need iptables.

use std::path::Path;
use std::process::Command;

use super::{CheckResult, Verdict};

pub fn run() -> Vec<CheckResult> {
    vec![tun_device(), tc_redirect(), iptables()]
}

fn tun_device() -> CheckResult {
    let title = "tap devices (/dev/net/tun)";
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata("/dev/net/tun") {
        Ok(m) if m.file_type().is_char_device() => {
            CheckResult::new("H6.1", title, Verdict::Pass, "/dev/net/tun is there", "")
        }
        _ => CheckResult::new(
            "H6.1",
            title,
            Verdict::Fail,
            "/dev/net/tun is missing: no sandbox can get a network device",
            "load the tun module (modprobe tun) or use a kernel with CONFIG_TUN",
        ),
    }
}

/// Tries the redirect hull sets up, on a veth pair in a throwaway network
/// namespace (the host's is never touched).
fn tc_redirect() -> CheckResult {
    let title = "tc ingress and mirred redirect";
    let tried = std::thread::spawn(|| -> Result<(), String> {
        // SAFETY: unshare with a namespace flag only; it moves this
        // thread, which ends here, and the namespace goes with it.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "cannot make a network namespace: {}",
                std::io::Error::last_os_error()
            ));
        }
        let steps: [&[&str]; 3] = [
            &[
                "ip", "link", "add", "hchk0", "type", "veth", "peer", "name", "hchk1",
            ],
            &["tc", "qdisc", "add", "dev", "hchk0", "ingress"],
            &[
                "tc", "filter", "add", "dev", "hchk0", "parent", "ffff:", "protocol", "all", "u32",
                "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", "hchk1",
            ],
        ];
        for step in steps {
            let out = Command::new(step[0])
                .args(&step[1..])
                .output()
                .map_err(|e| format!("{}: {e}", step[0]))?;
            if !out.status.success() {
                return Err(format!(
                    "`{}` failed: {}",
                    step.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err("the check's thread panicked".into()));
    match tried {
        Ok(()) => CheckResult::new(
            "H6.2",
            title,
            Verdict::Pass,
            "a veth redirects to its peer (ingress qdisc, u32, mirred)",
            "",
        ),
        Err(reason) => CheckResult::new(
            "H6.2",
            title,
            Verdict::Warn,
            format!("containers with a network will not reach it: {reason}"),
            "install iproute2 and use a kernel with NET_SCH_INGRESS, NET_CLS_U32 and NET_ACT_MIRRED",
        ),
    }
}

fn iptables() -> CheckResult {
    let title = "iptables for Docker's bridge";
    let found = ["/usr/sbin/iptables", "/sbin/iptables", "/usr/bin/iptables"]
        .into_iter()
        .find(|p| Path::new(p).is_file());
    match found {
        Some(path) => CheckResult::new("H6.3", title, Verdict::Pass, path.to_string(), ""),
        None => CheckResult::new(
            "H6.3",
            title,
            Verdict::Warn,
            "iptables is not installed: Docker's default bridge and published ports (-p) will not work",
            "apt-get install iptables (./setup.sh does)",
        ),
    }
}
