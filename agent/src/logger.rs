//! The agent's logger: one line per record, to the kernel log or stderr.
//!
//! As PID 1 the agent logs to `/dev/kmsg` once `/dev` is mounted: a record
//! there costs one `write`, lands in the kernel's ring buffer with a
//! timestamp, and reaches the serial console only at error level (the guest
//! runs with `quiet`), so routine lines cost no port I/O. Before that, and
//! outside the guest, records go to stderr (the console for PID 1).
//! The kernel rate-limits `/dev/kmsg` writers, so the agent logs little:
//! one line per event worth knowing, never per request.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The longest line written; `/dev/kmsg` rejects records over ~1 KiB.
const MAX_LINE: usize = 900;

enum Sink {
    Stderr,
    Kmsg(File),
}

struct AgentLogger {
    sink: Mutex<Sink>,
}

// The `log` facade needs one global logger; this is the agent's only static.
static LOGGER: AgentLogger = AgentLogger {
    sink: Mutex::new(Sink::Stderr),
};

/// Installs the logger, writing to stderr. Calling it twice is harmless.
pub fn init() {
    // Fails only if a logger is already set, which is then the one in use.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(LevelFilter::Info);
}

/// Sends every later record to `/dev/kmsg` (PID 1, after `/dev` is mounted).
pub fn use_kmsg() -> io::Result<()> {
    let kmsg = OpenOptions::new().write(true).open("/dev/kmsg")?;
    let mut sink = LOGGER
        .sink
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    *sink = Sink::Kmsg(kmsg);
    Ok(())
}

/// Own records from info up; other crates' (ttrpc) from warn up.
fn enabled(metadata: &Metadata<'_>) -> bool {
    let limit = if metadata.target().starts_with("hull_agent") {
        Level::Info
    } else {
        Level::Warn
    };
    metadata.level() <= limit
}

/// The syslog priority `/dev/kmsg` reads from a `<N>` prefix.
fn kmsg_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Formats one record as exactly one line, at most [`MAX_LINE`] bytes.
fn format_line(kmsg: bool, level: Level, target: &str, message: &str) -> String {
    let mut line = if kmsg {
        format!("<{}>hull-agent: ", kmsg_priority(level))
    } else {
        format!("hull-agent: {level}: ")
    };
    if !target.starts_with("hull_agent") {
        line.push_str(target);
        line.push_str(": ");
    }
    line.extend(message.chars().map(|c| if c == '\n' { ' ' } else { c }));
    if line.len() > MAX_LINE {
        let mut end = MAX_LINE;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line.push('\n');
    line
}

impl Log for AgentLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        let mut sink = self
            .sink
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        // A failed log write has nowhere to be reported; it is dropped.
        let _ = match &mut *sink {
            Sink::Kmsg(kmsg) => kmsg
                .write_all(format_line(true, record.level(), record.target(), &message).as_bytes()),
            Sink::Stderr => io::stderr().write_all(
                format_line(false, record.level(), record.target(), &message).as_bytes(),
            ),
        };
    }

    fn flush(&self) {}
}

/// "error: cause: root cause", one line for a log or a status message.
pub use hull_protocol::error_chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmsg_lines_carry_the_priority() {
        assert_eq!(
            format_line(true, Level::Error, "hull_agent::init", "mount /proc failed"),
            "<3>hull-agent: mount /proc failed\n"
        );
        assert_eq!(
            format_line(true, Level::Info, "hull_agent", "serving"),
            "<6>hull-agent: serving\n"
        );
    }

    #[test]
    fn foreign_targets_are_named_and_lines_stay_single() {
        assert_eq!(
            format_line(false, Level::Warn, "ttrpc::server", "a\nb"),
            "hull-agent: WARN: ttrpc::server: a b\n"
        );
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let line = format_line(true, Level::Info, "hull_agent", &"é".repeat(1000));
        assert!(line.len() <= MAX_LINE + 1);
        assert!(line.ends_with('\n'));
        assert_eq!(line.lines().count(), 1);
    }

    #[test]
    fn other_crates_log_only_warnings() {
        let info = Metadata::builder()
            .level(Level::Info)
            .target("ttrpc")
            .build();
        let warn = Metadata::builder()
            .level(Level::Warn)
            .target("ttrpc")
            .build();
        let own = Metadata::builder()
            .level(Level::Info)
            .target("hull_agent::rpc")
            .build();
        assert!(!enabled(&info));
        assert!(enabled(&warn));
        assert!(enabled(&own));
    }
}
