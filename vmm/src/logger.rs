//! Logging for the whole crate: a minimal stderr logger (one line per record,
//! with the time since start, and a cap on how many lines a second can be
//! written so a guest that makes the VMM log in a loop cannot flood the
//! host's logs), [`ErrorChain`] to put an error and its causes on one line,
//! and [`LogLimiter`] for messages a guest can trigger at will.
//!
//! Every other module may use this one; it depends on none of them.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lines per second allowed before lines are dropped (and counted).
const MAX_LINES_PER_SECOND: u64 = 200;
/// Lines in all: a VMM's log is a file on the host, and the rate limit alone
/// lets a guest that runs for days fill the disk. Past this the VMM says so
/// once and logs nothing more.
const MAX_LINES: u64 = 100_000;

struct Logger {
    start: Instant,
    second: AtomicU64,
    lines: AtomicU64,
    dropped: AtomicU64,
    total: AtomicU64,
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
        match self.total.fetch_add(1, Ordering::Relaxed) {
            total if total < MAX_LINES => {}
            MAX_LINES => {
                let _ = writeln!(
                    std::io::stderr(),
                    "[hull-vmm {:>9.3}s WARN ] {MAX_LINES} log lines written: no more",
                    elapsed.as_secs_f64()
                );
                return;
            }
            _ => return,
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
        total: AtomicU64::new(0),
    });
    let _ = log::set_boxed_logger(logger);
    log::set_max_level(level);
}

/// `Display` for an error and its `source` chain on one line: "a: b: c".
///
/// A cause whose text is already in the line is left out: some errors
/// (linux-loader's among them) repeat their cause in their own message.
pub struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            source = cause.source();
        }
        f.pad(&line)
    }
}

/// Caps how many messages a guest can make the VMM log (bad register
/// accesses, malformed requests, refused connections): [`Self::PER_SECOND`]
/// a second, then one warning with how many were suppressed when the next
/// message comes in a later second.
#[derive(Debug)]
pub struct LogLimiter {
    /// Who is speaking, for the "suppressed" summary: `vsock`, `virtio-blk`.
    what: String,
    window: Instant,
    left: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub const PER_SECOND: u32 = 10;

    pub fn new(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            window: Instant::now(),
            left: Self::PER_SECOND,
            suppressed: 0,
        }
    }

    /// Whether the next message may be logged; counts it if not.
    pub fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }

    /// Log `args` as a warning unless the limit is reached.
    pub fn warn(&mut self, args: fmt::Arguments<'_>) {
        if self.allow() {
            log::warn!("{args}");
        }
    }

    fn allow_at(&mut self, now: Instant) -> bool {
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                log::warn!(
                    "{}: {} guest-triggered messages suppressed",
                    self.what,
                    self.suppressed
                );
            }
            self.window = now;
            self.left = Self::PER_SECOND;
            self.suppressed = 0;
        }
        if self.left > 0 {
            self.left -= 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Cause = Box<dyn std::error::Error + Send + Sync>;

    #[derive(Debug, thiserror::Error)]
    #[error("{message}")]
    struct Layer {
        message: &'static str,
        #[source]
        cause: Option<Cause>,
    }

    /// `messages[0]` caused by `messages[1]` ... caused by `root`.
    fn layers(messages: &[&'static str], root: Option<Cause>) -> Layer {
        let mut cause = root;
        for &message in messages.iter().rev() {
            cause = Some(Box::new(Layer { message, cause }));
        }
        let top = cause.expect("at least one layer");
        *top.downcast::<Layer>().expect("the top is a Layer")
    }

    #[test]
    fn error_chain_joins_causes() {
        let e = layers(
            &["starting the VM", "loading the kernel", "no such file"],
            None,
        );
        assert_eq!(
            ErrorChain(&e).to_string(),
            "starting the VM: loading the kernel: no such file"
        );
        assert_eq!(ErrorChain(&layers(&["alone"], None)).to_string(), "alone");
    }

    #[test]
    fn error_chain_skips_causes_already_in_the_message() {
        // linux-loader puts its cause into its own message and also returns
        // it from `source()`.
        let elf = linux_loader::loader::Error::Elf(
            linux_loader::loader::elf::Error::InvalidElfMagicNumber,
        );
        let e = layers(&["loading the kernel"], Some(Box::new(elf)));
        assert_eq!(
            ErrorChain(&e).to_string(),
            "loading the kernel: Kernel Loader: failed to load ELF kernel image: \
             Kernel Loader: Invalid Elf magic number"
        );
        // A cause after a skipped one is still printed.
        let e = layers(&["reading a: io error", "io error", "disk gone"], None);
        assert_eq!(ErrorChain(&e).to_string(), "reading a: io error: disk gone");
    }

    #[test]
    fn log_limiter_caps_a_burst() {
        let mut l = LogLimiter::new("test");
        let allowed = (0..100).filter(|_| l.allow()).count();
        assert_eq!(allowed, LogLimiter::PER_SECOND as usize);
        assert_eq!(l.suppressed, 100 - u64::from(LogLimiter::PER_SECOND));
    }

    #[test]
    fn log_limiter_opens_a_new_window_each_second() {
        let start = Instant::now();
        let mut l = LogLimiter::new("test");
        l.window = start;
        let burst = |l: &mut LogLimiter, at: Instant| (0..25).filter(|_| l.allow_at(at)).count();
        assert_eq!(burst(&mut l, start), 10);
        assert_eq!(l.suppressed, 15);
        // Still the same window just before the second is up.
        assert_eq!(burst(&mut l, start + Duration::from_millis(999)), 0);
        assert_eq!(l.suppressed, 40);
        // A new second: the count is reported and reset, the budget refilled.
        assert_eq!(burst(&mut l, start + Duration::from_secs(1)), 10);
        assert_eq!(l.suppressed, 15);
    }
}
