//! Shared-directory checks (H7): virtiofsd, which serves a sandbox's host
//! bind mounts to its guest, and the confinement hull runs it under, tried
//! for real: a share with nothing in it is started as a sandbox's would be
//! and its server process inspected (its own mount namespace, a seccomp
//! filter), then taken down.

use std::path::Path;
use std::process::Command;

use hull_sandbox::config::ShimConfig;
use hull_sandbox::share::Share;

use super::{CheckResult, Verdict};

const ID: &str = "H7.1";
const TITLE: &str = "virtiofsd (shared directories)";

pub fn run(config: &Path) -> Vec<CheckResult> {
    vec![virtiofsd(config)]
}

fn virtiofsd(config: &Path) -> CheckResult {
    let config = match ShimConfig::load(Some(config).filter(|c| c.exists())) {
        Ok(config) => config,
        Err(err) => {
            return CheckResult::new(
                ID,
                TITLE,
                Verdict::Fail,
                hull_protocol::error_chain(&err),
                "fix the config file",
            )
        }
    };
    let binary = &config.virtiofsd;
    let version = match Command::new(binary).arg("--version").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        _ => {
            return CheckResult::new(
                ID,
                TITLE,
                Verdict::Fail,
                format!(
                    "{} does not run: containers with volumes or bind mounts cannot start",
                    binary.display()
                ),
                "./setup.sh installs it (cargo install virtiofsd --version 1.13.2 --locked --root /usr/local)",
            )
        }
    };
    let Ok(dir) = tempfile::Builder::new()
        .prefix("hull-check-share")
        .tempdir()
    else {
        return CheckResult::new(
            ID,
            TITLE,
            Verdict::Warn,
            format!("{version}; no temporary directory to try it in"),
            "check /tmp",
        );
    };
    let mut share = match Share::start(binary, &dir.path().join("s"), &[]) {
        Ok(share) => share,
        Err(err) => {
            return CheckResult::new(
                ID,
                TITLE,
                Verdict::Fail,
                format!(
                    "{version} cannot start confined: {}",
                    hull_protocol::error_chain(&err)
                ),
                "virtiofsd's namespace sandbox needs root and user/mount/PID namespaces",
            )
        }
    };
    // In namespace mode virtiofsd forks: the server is the child, in its
    // own namespaces and under its seccomp filter.
    let parent = share.pid().unwrap_or_default();
    let pid = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        .ok()
        .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(parent);
    let own_mnt = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let our_mnt = std::fs::read_link("/proc/self/ns/mnt").ok();
    let seccomp = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Seccomp:").map(|v| v.trim().to_owned()))
        });
    let running = share.is_running();
    drop(share);
    let sandboxed = own_mnt.is_some() && own_mnt != our_mnt;
    let filtered = seccomp.as_deref() == Some("2");
    let detail = format!(
        "{version} at {}: sandbox namespace ({}), seccomp {} (kill on violation), \
         no file handles, no CAP_MKNOD",
        binary.display(),
        if sandboxed {
            "own mount namespace"
        } else {
            "NOT in its own mount namespace"
        },
        if filtered { "filter on" } else { "NOT on" },
    );
    if running && sandboxed && filtered {
        CheckResult::new(ID, TITLE, Verdict::Pass, detail, "")
    } else {
        CheckResult::new(
            ID,
            TITLE,
            Verdict::Fail,
            detail,
            "install virtiofsd 1.13.2 (./setup.sh); a build without seccomp support cannot be confined",
        )
    }
}
