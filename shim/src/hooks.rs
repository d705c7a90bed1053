//! OCI hooks that belong to the host: `createRuntime` (and the deprecated
//! `prestart`, same moment) run in the runtime's namespaces once the
//! container's namespaces exist. For hull that is the sandbox's network
//! namespace, made before the VM with a placeholder process in it whose pid
//! the state names (see the shim's `early_network`). Docker plugs its
//! networks this way (`libnetwork-setkey`). Hooks meant
//! for the container's own namespaces (`createContainer`, `startContainer`)
//! would run inside the guest, where the host's binaries are not: they are
//! refused by the policy rather than silently skipped (see
//! [`refuse_guest_hooks`]); `poststart`/`poststop` run on the host too,
//! their failures logged as the runtime spec says.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hull_sandbox::spec::Spec;
use oci_spec::runtime::Hook;

/// How long a hook without its own timeout may take.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{stage} hook {path}: {reason}")]
    Failed {
        stage: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "{stage} hooks run in the container's namespaces, which are inside the VM where \
         {path} does not exist; hull does not run them"
    )]
    InGuest { stage: &'static str, path: PathBuf },
}

/// The stages hull runs on the host, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `prestart` then `createRuntime`: once the sandbox's network
    /// namespace exists, before the VM.
    Created,
    Poststart,
    Poststop,
}

/// Refuses a spec whose hooks must run inside the container.
pub fn refuse_guest_hooks(spec: &Spec) -> Result<(), HookError> {
    let Some(hooks) = spec.hooks() else {
        return Ok(());
    };
    for (stage, list) in [
        ("createContainer", hooks.create_container()),
        ("startContainer", hooks.start_container()),
    ] {
        if let Some(hook) = list.as_ref().and_then(|l| l.first()) {
            return Err(HookError::InGuest {
                stage,
                path: hook.path().clone(),
            });
        }
    }
    Ok(())
}

/// The hooks of `stage` in `spec`, with their stage names.
pub fn of_stage(spec: &Spec, stage: Stage) -> Vec<(&'static str, Hook)> {
    let Some(hooks) = spec.hooks() else {
        return Vec::new();
    };
    #[allow(deprecated)]
    let lists = match stage {
        Stage::Created => vec![
            ("prestart", hooks.prestart().clone()),
            ("createRuntime", hooks.create_runtime().clone()),
        ],
        Stage::Poststart => vec![("poststart", hooks.poststart().clone())],
        Stage::Poststop => vec![("poststop", hooks.poststop().clone())],
    };
    lists
        .into_iter()
        .flat_map(|(name, list)| list.unwrap_or_default().into_iter().map(move |h| (name, h)))
        .collect()
}

/// Runs `hooks` one after the other with the container's state on stdin;
/// the first failure stops them.
pub fn run(
    hooks: &[(&'static str, Hook)],
    id: &str,
    bundle: &Path,
    pid: u32,
    status: &str,
) -> Result<(), HookError> {
    let state = serde_json::json!({
        "ociVersion": "1.0.2",
        "id": id,
        "status": status,
        "pid": pid,
        "bundle": bundle,
        "annotations": {},
    })
    .to_string();
    for (stage, hook) in hooks {
        run_one(stage, hook, &state)?;
    }
    Ok(())
}

fn run_one(stage: &'static str, hook: &Hook, state: &str) -> Result<(), HookError> {
    let fail = |reason: String| HookError::Failed {
        stage,
        path: hook.path().clone(),
        reason,
    };
    let mut cmd = Command::new(hook.path());
    let args = hook.args().clone().unwrap_or_default();
    // args[0] is argv[0], as in execv.
    if let Some((argv0, rest)) = args.split_first() {
        std::os::unix::process::CommandExt::arg0(&mut cmd, argv0);
        cmd.args(rest);
    }
    cmd.env_clear();
    for pair in hook.env().clone().unwrap_or_default() {
        if let Some((key, value)) = pair.split_once('=') {
            cmd.env(key, value);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook may exit without reading its state.
        let _ = stdin.write_all(state.as_bytes());
    }
    let timeout = hook
        .timeout()
        .and_then(|t| u64::try_from(t).ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let begun = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                return Err(fail(format!("{status}: {}", stderr.trim())));
            }
            Ok(None) if begun.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("did not finish within {timeout:?}")));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(fail(format!("waiting for it: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(hooks: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "hooks": hooks,
        }))
        .unwrap()
    }

    #[test]
    fn a_hook_reads_the_state_with_the_sandbox_pid() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("state");
        let spec = spec(serde_json::json!({
            "createRuntime": [{
                "path": "/bin/sh",
                "args": ["sh", "-c", format!("cat > {}", out.display())],
            }],
        }));
        let hooks = of_stage(&spec, Stage::Created);
        run(&hooks, "c1", Path::new("/b"), 4242, "created").unwrap();
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
        assert_eq!(state["pid"], 4242);
        assert_eq!(state["id"], "c1");
    }

    #[test]
    fn a_failing_or_slow_hook_fails_the_stage_naming_it() {
        let spec = spec(serde_json::json!({
            "prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 3"]}],
            "createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "5"], "timeout": 1}],
        }));
        let hooks = of_stage(&spec, Stage::Created);
        let err = run(&hooks, "c1", Path::new("/b"), 1, "created").unwrap_err();
        assert!(err.to_string().contains("prestart hook /bin/sh"), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
        let err = run(&hooks[1..], "c1", Path::new("/b"), 1, "created").unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
    }

    #[test]
    fn hooks_for_the_container_s_namespaces_are_refused() {
        let spec = spec(serde_json::json!({
            "startContainer": [{"path": "/usr/bin/nvidia-hook"}],
        }));
        let err = refuse_guest_hooks(&spec).unwrap_err();
        assert!(err.to_string().contains("startContainer"), "{err}");
    }
}
