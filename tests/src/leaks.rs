//! What a test checks at its end: no process it started still runs, and no
//! socket or state directory is left. Each test keeps everything it creates
//! under its own temporary directory, so "left behind" means "under that
//! directory", and "still running" means "a process whose command line
//! names that directory" (or, for a VMM, whose `--config` file does: the
//! shim starts `hull-vmm --config <state dir>/vmm.json`).

use std::fs::{DirEntry, FileType};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::poll::try_poll_until;

/// Processes other than this one whose command line contains `dir`, or
/// whose `--config FILE` contains it.
pub fn processes_mentioning(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let config = config_file_of(&cmdline).unwrap_or_default();
            (contains(&cmdline, needle) || contains(&config, needle))
                .then(|| (pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
        })
        .collect()
}

/// The arguments of process `pid` (empty when it is gone).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The content of the file a `--config FILE` argument names, if any.
fn config_file_of(cmdline: &[u8]) -> Option<Vec<u8>> {
    let mut args = cmdline.split(|b| *b == 0);
    args.find(|arg| *arg == b"--config")?;
    let path = std::str::from_utf8(args.next()?).ok()?;
    std::fs::read(path).ok()
}

/// The VM config of `hull-vmm` process `pid` (its `--config` file), if it
/// was started with one and still runs.
pub fn vmm_config(pid: u32) -> Option<hull_protocol::vmm_config::VmConfig> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    serde_json::from_slice(&config_file_of(&cmdline)?).ok()
}

pub fn process_args(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

/// The command name of process `pid` (`/proc/PID/comm`: the executable's
/// name, cut at 15 bytes), or `None` when it is gone.
pub fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|comm| comm.trim_end().to_owned())
}

/// Whether process `pid` still exists (a zombie counts until reaped).
pub fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Fail if any process still names `dir` on its command line. A process
/// that is exiting gets a moment to finish.
pub fn assert_no_process_mentions(dir: &Path) {
    let gone = try_poll_until(Duration::from_secs(2), Duration::from_millis(50), || {
        let left = processes_mentioning(dir);
        if left.is_empty() {
            Ok(())
        } else {
            Err(left)
        }
    });
    if let Err(left) = gone {
        panic!("processes left running by the test: {left:?}");
    }
}

/// Every non-directory entry at any depth under `dir` that `keep` accepts.
pub fn files_under(dir: &Path, keep: impl Fn(&DirEntry, FileType) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            match entry.file_type() {
                Ok(t) if t.is_dir() => todo.push(entry.path()),
                Ok(t) if keep(&entry, t) => found.push(entry.path()),
                _ => {}
            }
        }
    }
    found
}

/// Unix sockets anywhere under `dir`.
pub fn sockets_under(dir: &Path) -> Vec<PathBuf> {
    files_under(dir, |_, t| t.is_socket())
}

/// Fail if a socket file is left under `dir`.
pub fn assert_no_sockets(dir: &Path) {
    let left = sockets_under(dir);
    assert!(left.is_empty(), "socket files left behind: {left:?}");
}

/// Fail if `path` still exists.
pub fn assert_gone(path: &Path, what: &str) {
    assert!(
        !path.exists(),
        "{what} {} was left behind: {:?}",
        path.display(),
        crate::dir_entries(path)
    );
}

/// The checks every test ends with: no process naming `dir` runs and no
/// socket is left under it.
pub fn assert_clean(dir: &Path) {
    assert_no_process_mentions(dir);
    assert_no_sockets(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_naming_the_directory_is_found_and_a_socket_too() {
        let dir = crate::test_dir();
        let marker = dir.path().join("marker");
        std::fs::write(&marker, b"").unwrap();
        let mut child = std::process::Command::new("tail")
            .arg("-f")
            .arg(&marker)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting tail -f");
        // The parent of a vfork-style spawn resumes before the child's new
        // command line is in place: give it a moment.
        let found = try_poll_until(Duration::from_secs(5), Duration::from_millis(10), || {
            let found = processes_mentioning(dir.path());
            if found.is_empty() {
                Err(found)
            } else {
                Ok(found)
            }
        })
        .unwrap_or_else(|none| none);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, child.id());
        assert!(processes_mentioning(dir.path()).is_empty());

        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(sub.join("s.sock")).unwrap();
        assert_eq!(sockets_under(dir.path()), [sub.join("s.sock")]);
    }
}
