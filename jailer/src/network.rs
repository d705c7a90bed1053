//! The sandbox's network namespace and its tap, set up by the supervisor
//! before it forks (so its own pid names the namespace to CNI plugins and
//! Docker's libnetwork, which plug the container's interface into it).
//!
//! The tap is made here, as root, in that namespace, and handed to the VMM
//! as an open file across exec: the unprivileged VMM needs neither
//! /dev/net/tun nor CAP_NET_ADMIN, and the tap is not persistent, so it
//! disappears with the last open file, that is with the VMM. It belongs
//! to the jail's uid, like everything else the VMM may use.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("opening the network namespace {path}")]
    OpenNetns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("joining the network namespace {path} (is it a network namespace file?)")]
    JoinNetns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating a network namespace")]
    NewNetns(#[source] io::Error),
    #[error("making the tap {name}: {what}")]
    Tap {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// TUNSETIFF = _IOW('T', 202, int).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// TUNSETOWNER = _IOW('T', 204, int).
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;

/// Moves this (single-threaded) process into `netns`, or into a new
/// network namespace when there is none.
pub fn enter(netns: Option<&Path>) -> Result<(), NetworkError> {
    match netns {
        Some(path) => {
            let file = File::open(path).map_err(|source| NetworkError::OpenNetns {
                path: path.into(),
                source,
            })?;
            // SAFETY: setns with an open descriptor; no pointers.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(NetworkError::JoinNetns {
                    path: path.into(),
                    source: io::Error::last_os_error(),
                });
            }
        }
        None => {
            // SAFETY: unshare with a namespace flag only.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(NetworkError::NewNetns(io::Error::last_os_error()));
            }
        }
    }
    Ok(())
}

/// An `ifreq` as TUNSETIFF and SIOC[GS]IFFLAGS read it: the name, then
/// the flags (a short), padded to the union's size.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: libc::c_short) -> Self {
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags,
            _pad: [0; 22],
        };
        // The name was checked to fit with its NUL (see main's tap_name).
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req
    }
}

/// Makes the tap `name` in the current network namespace (with the
/// virtio-net header, no packet information), owned by `owner` (the jail's
/// uid), and brings it up. The file is not close-on-exec: the VMM inherits
/// it.
pub fn make_tap(name: &str, owner: u32) -> Result<OwnedFd, NetworkError> {
    let err = |what| NetworkError::Tap {
        name: name.to_owned(),
        what,
        source: io::Error::last_os_error(),
    };
    // SAFETY: a NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(err("opening /dev/net/tun"));
    }
    // SAFETY: a new descriptor that nothing else owns.
    let tap = unsafe { OwnedFd::from_raw_fd(fd) };
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    let mut req = IfReq::new(name, flags);
    // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the call.
    if unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETIFF, &mut req) } != 0 {
        return Err(err(
            "TUNSETIFF (does an interface of that name exist already?)",
        ));
    }
    // SAFETY: TUNSETOWNER takes the uid by value; no pointers.
    if unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETOWNER, libc::c_ulong::from(owner)) } != 0 {
        return Err(err("TUNSETOWNER"));
    }
    set_up(name).map_err(|source| NetworkError::Tap {
        name: name.to_owned(),
        what: "bringing it up",
        source,
    })?;
    Ok(tap)
}

/// `ip link set NAME up`, by ioctl.
fn set_up(name: &str) -> io::Result<()> {
    // SAFETY: socket() with constant arguments; the result is checked.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    let mut req = IfReq::new(name, 0);
    // SAFETY: SIOCGIFFLAGS fills the ifreq, which outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    req.flags |= libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq, which outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (CAP_NET_ADMIN) and /dev/net/tun: runs in a thread of
    /// its own, in a new network namespace, so nothing outlives it.
    #[test]
    fn a_tap_is_made_up_and_goes_with_its_file() {
        assert!(
            is_root(),
            "this test needs root (it makes a tap in a new network namespace)"
        );
        std::thread::spawn(|| {
            enter(None).expect("a new network namespace");
            let tap = make_tap("tap0_test", 1_000_000_123).expect("the tap");
            let again = make_tap("tap0_test", 1_000_000_123);
            assert!(again.is_err(), "a second tap of the same name is refused");
            drop(tap);
            // Not persistent: the name is free once the file is closed.
            make_tap("tap0_test", 1_000_000_123).expect("the name is free again");
        })
        .join()
        .unwrap();
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }
}
