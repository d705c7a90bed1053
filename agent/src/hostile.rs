//! A hostile agent, for hull's own tests only: built with the
//! `hostile-test` feature (never by `agent/build.sh`'s default), it answers
//! like the real agent except that it lies where the host must not believe
//! it (issue 9, finding 4):
//! - `GetOOMEvent` answers at once, forever, alternating an OOM kill in a
//!   container that is not the sandbox's (its id carrying a newline and a
//!   forged containerd log record) with one in the sandbox's own container.
//!
//! The host side (the shim) must publish only the own container's events,
//! at most one a second, and escape what the guest wrote in its log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What a hostile guest hopes lands in containerd's log as a record of its own.
pub const FORGED_RECORD: &str = "level=error msg=\"forged by the guest\"";

/// How often the hostile agent reports an OOM kill.
const OOM_INTERVAL: Duration = Duration::from_millis(20);

/// Counts the answers, to alternate them. Test-only code, one per agent.
static ANSWERS: AtomicU64 = AtomicU64::new(0);

/// The next forged OOM event's container id ("" means the sandbox's own).
pub async fn oom_event() -> String {
    tokio::time::sleep(OOM_INTERVAL).await;
    if ANSWERS.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
        format!("victim\n{FORGED_RECORD}")
    } else {
        String::new()
    }
}
