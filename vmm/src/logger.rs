//! Logging for the whole crate: a minimal stderr logger (one line per record,
//! with the time since start, and a cap on how many lines a second can be
//! written so a guest that makes the VMM log in a loop cannot flood the
//! host's logs), [`ErrorChain`] to put an error and its causes on one line,
//! and [`guest_warn!`] and its siblings for messages a guest can trigger at
//! will: each call site may log [`LogLimiter::PER_SECOND`] lines a second.
//!
//! Device code logs only through those macros: `vmm/clippy.toml` forbids
//! the raw `log` macros and `devices` denies that lint (see `lib.rs`).
//!
//! Every other module may use this one; it depends on none of them.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
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

/// `Display` for an error and its `source` chain on one line: "a: b: c"
/// (causes already in the line left out), the text every hull process
/// writes.
pub use hull_protocol::ErrorChain;

/// Caps how many messages a guest can make the VMM log (bad register
/// accesses, malformed requests, refused connections): [`Self::PER_SECOND`]
/// a second, then one warning with how many were suppressed when the next
/// message comes in a later second. The [`guest_warn!`] family keeps one
/// per call site.
#[derive(Debug)]
pub struct LogLimiter {
    /// Who is speaking, for the "suppressed" summary: a call site.
    what: Cow<'static, str>,
    window: Instant,
    left: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub const PER_SECOND: u32 = 10;

    pub fn new(what: impl Into<Cow<'static, str>>) -> Self {
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

/// One call site of the [`guest_warn!`] family: where it is, and its own
/// [`LogLimiter`], made at the site's first message. The macros create it
/// as a `static` in their expansion; nothing else needs one.
#[derive(Debug)]
pub struct GuestLogSite {
    target: &'static str,
    file: &'static str,
    line: u32,
    limiter: Mutex<Option<LogLimiter>>,
}

impl GuestLogSite {
    pub const fn new(target: &'static str, file: &'static str, line: u32) -> Self {
        Self {
            target,
            file,
            line,
            limiter: Mutex::new(None),
        }
    }

    /// Log `args` at `level` unless the level is off or this site used up
    /// its lines for the current second; returns whether it was logged.
    pub fn log(&self, level: log::Level, args: fmt::Arguments<'_>) -> bool {
        if level > log::max_level() || !self.allow() {
            return false;
        }
        log::logger().log(
            &log::Record::builder()
                .level(level)
                .target(self.target)
                .file(Some(self.file))
                .line(Some(self.line))
                .module_path(Some(self.target))
                .args(args)
                .build(),
        );
        true
    }

    fn allow(&self) -> bool {
        // A panic while the lock was held left a whole limiter: keep it.
        let mut limiter = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
        limiter
            .get_or_insert_with(|| LogLimiter::new(format!("{}:{}", self.file, self.line)))
            .allow()
    }
}

/// Log at a level, rate-limited per call site: for anything a guest can
/// make the VMM say. Evaluates to whether the line was logged.
macro_rules! guest_log {
    ($level:expr, $($arg:tt)+) => {{
        static SITE: $crate::logger::GuestLogSite =
            $crate::logger::GuestLogSite::new(module_path!(), file!(), line!());
        SITE.log($level, format_args!($($arg)+))
    }};
}

/// `log::error!`, rate-limited per call site ([`guest_log!`]).
macro_rules! guest_error {
    ($($arg:tt)+) => {{
        $crate::logger::guest_log!(::log::Level::Error, $($arg)+);
    }};
}

/// `log::warn!`, rate-limited per call site ([`guest_log!`]).
macro_rules! guest_warn {
    ($($arg:tt)+) => {{
        $crate::logger::guest_log!(::log::Level::Warn, $($arg)+);
    }};
}

/// `log::info!`, rate-limited per call site ([`guest_log!`]).
macro_rules! guest_info {
    ($($arg:tt)+) => {{
        $crate::logger::guest_log!(::log::Level::Info, $($arg)+);
    }};
}

/// `log::debug!`, rate-limited per call site ([`guest_log!`]).
macro_rules! guest_debug {
    ($($arg:tt)+) => {{
        $crate::logger::guest_log!(::log::Level::Debug, $($arg)+);
    }};
}

pub(crate) use {guest_debug, guest_error, guest_info, guest_log, guest_warn};

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

    /// The same line, from one call site, however often it runs.
    fn one_site() -> bool {
        guest_log!(log::Level::Error, "logger test: one site")
    }

    #[test]
    fn guest_log_limits_each_call_site() {
        log::set_max_level(log::LevelFilter::Error);
        let per_second = LogLimiter::PER_SECOND as usize;
        // Well under a second: one window, whatever the machine's speed.
        let logged = (0..100).filter(|_| one_site()).count();
        assert_eq!(logged, per_second);
        // Another site has a budget of its own.
        let other = (0..100)
            .filter(|_| guest_log!(log::Level::Error, "logger test: other site"))
            .count();
        assert_eq!(other, per_second);
        // A level that is off costs no budget and logs nothing.
        let off = (0..100)
            .filter(|_| guest_log!(log::Level::Trace, "logger test: off"))
            .count();
        assert_eq!(off, 0);
    }
}
