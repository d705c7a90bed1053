//! A guest restored from a template snapshot becomes itself: the host's
//! time on the wall clock, and the host's entropy in the kernel's pool with
//! the CRNG reseeded from it (every clone starts with the template's pool).
//! The kernel's boot id is made from the CRNG on first read, so a clone
//! whose template never read it gets its own.

use std::os::fd::AsRawFd;

use hull_protocol::agent_api::agent::PrepareCloneRequest;

/// Bounds of the entropy the host hands over, in bytes.
pub const MIN_ENTROPY: usize = 32;
pub const MAX_ENTROPY: usize = 4096;
/// RNDADDENTROPY: _IOW('R', 0x03, int[2]).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// RNDRESEEDCRNG: _IO('R', 0x07).
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    #[error("entropy of {0} bytes: between {MIN_ENTROPY} and {MAX_ENTROPY} are needed")]
    Entropy(usize),
    #[error("realtime_ns {0} is before 2020 or not a time")]
    Time(i64),
    #[error("{what}")]
    Sys {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn sys(what: &'static str) -> impl FnOnce(std::io::Error) -> CloneError {
    move |source| CloneError::Sys { what, source }
}

/// 2020-01-01T00:00:00Z: no host that runs hull is before it.
const EARLIEST_NS: i64 = 1_577_836_800 * 1_000_000_000;

pub fn prepare(req: &PrepareCloneRequest) -> Result<(), CloneError> {
    let n = req.entropy.len();
    if !(MIN_ENTROPY..=MAX_ENTROPY).contains(&n) {
        return Err(CloneError::Entropy(n));
    }
    if req.realtime_ns < EARLIEST_NS {
        return Err(CloneError::Time(req.realtime_ns));
    }
    let time = libc::timespec {
        tv_sec: req.realtime_ns / 1_000_000_000,
        tv_nsec: req.realtime_ns % 1_000_000_000,
    };
    // SAFETY: a valid timespec, read by the call only.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &time) } != 0 {
        return Err(sys("setting CLOCK_REALTIME")(
            std::io::Error::last_os_error(),
        ));
    }
    add_entropy(&req.entropy)
}

/// Mixes `bytes` into the input pool, credited in full (they come from the
/// host's CRNG), then makes the CRNG reseed from the pool now.
fn add_entropy(bytes: &[u8]) -> Result<(), CloneError> {
    let urandom = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(sys("opening /dev/urandom"))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&((bytes.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(bytes.len() as i32).to_ne_bytes());
    info.extend_from_slice(bytes);
    // SAFETY: `info` is a rand_pool_info whose buf_size matches the bytes
    // that follow it; the kernel only reads it.
    if unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(sys("RNDADDENTROPY")(std::io::Error::last_os_error()));
    }
    // SAFETY: no argument; asks the kernel to reseed its CRNG.
    if unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(sys("RNDRESEEDCRNG")(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_requests_are_refused_before_touching_the_clock() {
        let req = |n: usize, t: i64| PrepareCloneRequest {
            realtime_ns: t,
            entropy: vec![7; n],
            ..Default::default()
        };
        let now = EARLIEST_NS + 1;
        assert!(matches!(prepare(&req(8, now)), Err(CloneError::Entropy(8))));
        assert!(matches!(
            prepare(&req(5000, now)),
            Err(CloneError::Entropy(5000))
        ));
        assert!(matches!(prepare(&req(32, 0)), Err(CloneError::Time(0))));
        assert!(matches!(prepare(&req(32, -1)), Err(CloneError::Time(-1))));
    }
}
