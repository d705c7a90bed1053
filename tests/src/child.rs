//! A process started by a test, never leaked: every wait is bounded, and
//! dropping the handle kills and reaps the process if it still runs (also
//! when the test panics).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::poll::try_poll_until;

/// How often a waiting test looks at the process.
const POLL: Duration = Duration::from_millis(20);

pub struct Spawned {
    child: Child,
    name: String,
    stdout: Option<PathBuf>,
    stderr: PathBuf,
    exit: Option<ExitStatus>,
}

/// How a process ended, and what it wrote.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// Empty unless stdout was captured ([`capture`]).
    pub stdout: String,
    pub stderr: String,
}

fn create(path: &Path) -> File {
    File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()))
}

impl Spawned {
    /// Start `cmd` with stdin and stdout on /dev/null and stderr in the
    /// file `stderr` (a file, not a pipe: a chatty process cannot block).
    pub fn start(cmd: Command, stderr: &Path) -> Self {
        Self::start_with(cmd, None, stderr)
    }

    fn start_with(mut cmd: Command, stdout: Option<&Path>, stderr: &Path) -> Self {
        let name = format!("{cmd:?}");
        let out = stdout.map_or_else(Stdio::null, |path| create(path).into());
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(create(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self {
            child,
            name,
            stdout: stdout.map(Path::to_path_buf),
            stderr: stderr.into(),
            exit: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has ended (it is then reaped).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Wait up to `timeout` for the process to end by itself.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        try_poll_until(timeout, POLL, || self.try_exit().ok_or(())).ok()
    }

    /// Wait up to `timeout`; fail the test (killing the process) if it is
    /// still running then.
    pub fn finish(mut self, timeout: Duration) -> Finished {
        match self.wait(timeout) {
            Some(status) => Finished {
                status,
                stdout: self
                    .stdout
                    .as_deref()
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .unwrap_or_default(),
                stderr: self.stderr_text(),
            },
            None => panic!(
                "{} did not exit within {timeout:?}; killed. stderr:\n{}",
                self.name,
                self.stderr_text()
            ),
        }
    }

    /// What the process wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Run `cmd` to completion within `timeout` (stderr kept in `stderr`).
pub fn run(cmd: Command, stderr: &Path, timeout: Duration) -> Finished {
    Spawned::start(cmd, stderr).finish(timeout)
}

/// Run `cmd` to completion within `timeout`, keeping its stdout and stderr
/// in `<scratch>/<name>.stdout` and `.stderr`.
pub fn capture(cmd: Command, scratch: &Path, name: &str, timeout: Duration) -> Finished {
    let stdout = scratch.join(format!("{name}.stdout"));
    let stderr = scratch.join(format!("{name}.stderr"));
    Spawned::start_with(cmd, Some(&stdout), &stderr).finish(timeout)
}
