//! Where a container's start goes: the shim marks each step of Create and
//! Start with the wall-clock time, and when the config names a
//! `phase_log`, appends them as one JSON line per container (`hull bench
//! start` reads them to account for every second of a start).

use std::io::Write;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The marks of one container's start, in order.
#[derive(Debug, Clone, Serialize)]
pub struct Phases {
    pub id: String,
    /// (step that just ended, nanoseconds since the epoch).
    pub marks: Vec<(&'static str, u128)>,
    #[serde(skip)]
    log: Option<PathBuf>,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl Phases {
    /// Starts with the mark `create`: the shim's Create began.
    pub fn begin(id: &str) -> Self {
        Phases {
            id: id.to_owned(),
            marks: vec![("create", now_ns())],
            log: None,
        }
    }

    pub fn mark(&mut self, step: &'static str) {
        self.marks.push((step, now_ns()));
    }

    /// Where [`Self::write`] appends (the config's `phase_log`).
    pub fn log_to(&mut self, log: Option<PathBuf>) {
        self.log = log;
    }

    /// Appends the marks as one JSON line, when there is a log; a failure
    /// only warns (the marks are for measuring, never for running).
    pub fn write(&self) {
        let Some(path) = &self.log else {
            return;
        };
        let mut line = serde_json::to_string(self).expect("marks always serialise");
        line.push('\n');
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            log::warn!("{}: writing the phase log {}: {e}", self.id, path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_append_as_one_json_line_each() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("phases.jsonl");
        for id in ["a", "b"] {
            let mut phases = Phases::begin(id);
            phases.mark("spec");
            phases.log_to(Some(log.clone()));
            phases.write();
        }
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["id"], "b");
        assert_eq!(lines[0]["marks"][1][0], "spec");
        assert!(
            lines[0]["marks"][1][1].as_u64().unwrap() >= lines[0]["marks"][0][1].as_u64().unwrap()
        );
        // No log: nothing written, no error.
        Phases::begin("c").write();
    }
}
