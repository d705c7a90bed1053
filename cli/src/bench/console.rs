//! Watching a guest console file (hull-vmm's `--console FILE`, QEMU's
//! `-serial file:FILE`) for a marker, the same way for both VMMs: the file
//! is read every [`POLL`] and the time of the first read that shows the
//! marker is taken.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often a console file is read: the resolution of a marker time.
pub const POLL: Duration = Duration::from_millis(5);

/// What a console file holds so far; read incrementally.
pub struct ConsoleFile {
    path: PathBuf,
    file: Option<File>,
    text: Vec<u8>,
}

impl ConsoleFile {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            text: Vec::new(),
        }
    }

    /// Read what was appended since the last call; true when `marker` is in
    /// the console (the file may not exist yet: then false).
    pub fn poll_for(&mut self, marker: &str) -> bool {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        let Some(file) = &mut self.file else {
            return false;
        };
        let from = self.text.len().saturating_sub(marker.len());
        if file.read_to_end(&mut self.text).is_err() {
            return false;
        }
        contains(&self.text[from..], marker.as_bytes())
    }

    /// The last `n` non-empty lines read so far.
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.text);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| l.to_string())
            .collect()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// A thread that watches a console file for a marker while something else
/// (an async boot) runs; stopped when dropped.
pub struct MarkerWatch {
    seen: Arc<(Mutex<Option<Instant>>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MarkerWatch {
    pub fn start(path: PathBuf, marker: String) -> Self {
        let seen = Arc::new((Mutex::new(None), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut console = ConsoleFile::new(path);
                while !stop.load(Ordering::Relaxed) {
                    if console.poll_for(&marker) {
                        let (at, changed) = &*seen;
                        *at.lock().expect("marker lock") = Some(Instant::now());
                        changed.notify_all();
                        return;
                    }
                    std::thread::sleep(POLL);
                }
            })
        };
        Self {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// When the marker was first seen, waiting up to `timeout` for it.
    pub fn wait(&self, timeout: Duration) -> Option<Instant> {
        let (at, changed) = &*self.seen;
        let guard = at.lock().expect("marker lock");
        let (guard, _) = changed
            .wait_timeout_while(guard, timeout, |at| at.is_none())
            .expect("marker lock");
        *guard
    }
}

impl Drop for MarkerWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_marker_split_across_two_reads_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut console = ConsoleFile::new(path.clone());
        assert!(!console.poll_for("hull-agent: serving"), "no file yet");
        let mut file = File::create(&path).unwrap();
        file.write_all(b"[    1.0] booting\nhull-agent: ser")
            .unwrap();
        assert!(!console.poll_for("hull-agent: serving"));
        file.write_all(b"ving the agent API\n").unwrap();
        assert!(console.poll_for("hull-agent: serving"));
        assert_eq!(
            console.last_lines(1),
            vec!["hull-agent: serving the agent API".to_string()]
        );
    }

    #[test]
    fn the_watch_sees_a_marker_written_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let watch = MarkerWatch::start(path.clone(), "ready".into());
        assert_eq!(watch.wait(Duration::from_millis(20)), None);
        std::fs::write(&path, "ready\n").unwrap();
        assert!(watch.wait(Duration::from_secs(5)).is_some());
    }
}
