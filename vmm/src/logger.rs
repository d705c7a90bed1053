//! A minimal stderr logger: one line per record, with the time since start,
//! and a cap on how many lines a second can be written so a guest that makes
//! the VMM log in a loop cannot flood the host's logs.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Lines per second allowed before lines are dropped (and counted).
const MAX_LINES_PER_SECOND: u64 = 200;

struct Logger {
    start: Instant,
    second: AtomicU64,
    lines: AtomicU64,
    dropped: AtomicU64,
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let elapsed = self.start.elapsed();
        let second = elapsed.as_secs();
        if self.second.swap(second, Ordering::Relaxed) != second {
            let dropped = self.dropped.swap(0, Ordering::Relaxed);
            self.lines.store(0, Ordering::Relaxed);
            if dropped > 0 {
                let _ = writeln!(
                    std::io::stderr(),
                    "[hull-vmm {:>9.3}s WARN ] {dropped} log lines dropped (rate limit)",
                    elapsed.as_secs_f64()
                );
            }
        }
        if self.lines.fetch_add(1, Ordering::Relaxed) >= MAX_LINES_PER_SECOND {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let _ = writeln!(
            std::io::stderr(),
            "[hull-vmm {:>9.3}s {:<5}] {}",
            elapsed.as_secs_f64(),
            record.level(),
            record.args()
        );
    }

    fn flush(&self) {}
}

/// Install the logger (once per process; later calls only change the level).
pub fn init(level: log::LevelFilter) {
    let logger = Box::new(Logger {
        start: Instant::now(),
        second: AtomicU64::new(0),
        lines: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
    });
    let _ = log::set_boxed_logger(logger);
    log::set_max_level(level);
}
