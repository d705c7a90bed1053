//! Bounded polling: the one loop the tests use to wait for something they
//! cannot be told about (a daemon answering, a process appearing or going,
//! a file left behind). Every wait has a limit; one that runs out says what
//! it waited for, for how long and, where the caller keeps it, what it saw
//! last.
//!
//! Async code waits with `tokio::time::timeout` around its own loop
//! instead (as [`crate::within`] does).

use std::time::{Duration, Instant};

/// Calls `poll` every `interval` until it returns `Some`, and returns that
/// value; fails the test, naming `what` and `timeout`, when `timeout`
/// passes first.
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut poll: impl FnMut() -> Option<T>,
) -> T {
    try_poll_until(timeout, interval, || poll().ok_or(()))
        .unwrap_or_else(|()| panic!("{what}: not within {timeout:?}"))
}

/// Calls `poll` every `interval` until it returns `Ok`, for at most
/// `timeout`; then its last `Err`, what it saw, for callers that report it
/// in their own words or carry on without.
pub fn try_poll_until<T, E>(
    timeout: Duration,
    interval: Duration,
    mut poll: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + timeout;
    loop {
        match poll() {
            Ok(value) => return Ok(value),
            Err(last) if Instant::now() >= deadline => return Err(last),
            Err(_) => std::thread::sleep(interval),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(1);

    #[test]
    fn returns_the_first_value_polled() {
        let mut calls = 0;
        let value = poll_until("the third call", Duration::from_secs(5), TICK, || {
            calls += 1;
            (calls == 3).then_some(calls * 10)
        });
        assert_eq!((value, calls), (30, 3));
    }

    #[test]
    fn an_expired_wait_gives_the_last_thing_seen() {
        let mut calls = 0;
        let started = Instant::now();
        let last = try_poll_until(Duration::from_millis(20), TICK, || -> Result<(), u32> {
            calls += 1;
            Err(calls)
        });
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert_eq!(last, Err(calls));
    }

    #[test]
    #[should_panic(expected = "the impossible: not within 10ms")]
    fn an_expired_wait_names_what_and_how_long() {
        poll_until("the impossible", Duration::from_millis(10), TICK, || {
            None::<()>
        });
    }
}
