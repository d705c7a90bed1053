//! The host side of virtio-net: a tap, opened by name or inherited open,
//! checked and set up for the device with the only ioctls the VMM makes on
//! it, all before seccomp is installed. The device itself only `read`s and
//! `write`s the fd (any fd: tests hand it a socket pair).

use std::ffi::c_int;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use hull_protocol::vmm_config::TapConfig;

use super::VNET_HDR_LEN;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("opening /dev/net/tun")]
    OpenTun(#[source] io::Error),
    #[error("attaching to tap {name} (TUNSETIFF)")]
    Attach {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("inherited fd {fd} is not open")]
    NotOpen {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("inherited fd {fd} is not a tun/tap device (TUNGETIFF failed)")]
    NotTun {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error(
        "inherited fd {fd} ({name}) has flags {flags:#x}: a tap made with \
         IFF_TAP | IFF_NO_PI | IFF_VNET_HDR is needed"
    )]
    WrongFlags { fd: RawFd, name: String, flags: u16 },
    #[error("setting up tap {name}: {what}")]
    Setup {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The flags a tap for this device has: Ethernet frames, no packet-info
/// prefix, a virtio-net header in front of every frame.
const TAP_FLAGS: c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
/// The frame-type bits of the flags (`IFF_TUN`, `IFF_TAP`).
const TYPE_MASK: c_int = 0x000f;

/// `struct ifreq` as TUNSETIFF and TUNGETIFF use it: the name and the
/// flags, padded to the kernel's 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str) -> Self {
        let mut req = Self {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        };
        // Validated by the config (shorter than IFNAMSIZ, no NUL).
        let len = name.len().min(libc::IFNAMSIZ - 1);
        req.name[..len].copy_from_slice(&name.as_bytes()[..len]);
        req
    }

    fn name(&self) -> String {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

/// The tap `config` names, ready for the device: non-blocking, a 12-byte
/// virtio-net header (`virtio_net_hdr_v1`), no offloads.
pub fn open(config: &TapConfig) -> Result<File, TapError> {
    match config {
        TapConfig::Name(name) => create(name).map(|(tap, _)| tap),
        TapConfig::Fd(fd) => from_inherited(*fd),
    }
}

/// Opens `/dev/net/tun` and attaches it to the tap `name` (which the kernel
/// makes if it does not exist and the caller has CAP_NET_ADMIN; `%d` in the
/// name picks a free number). Returns the tap and the name it got.
pub fn create(name: &str) -> Result<(File, String), TapError> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(TapError::OpenTun)?;
    let mut req = IfReq::new(name);
    req.flags = TAP_FLAGS as i16;
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is one
    // (name and flags at the kernel's offsets, 40 bytes) and lives across
    // the call.
    let ret = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if ret < 0 {
        return Err(TapError::Attach {
            name: name.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    let name = req.name();
    configure(&tun, &name)?;
    Ok((tun, name))
}

/// Takes over fd `fd`, which this process inherited, once it is checked to
/// be a tap with the flags the device needs.
pub fn from_inherited(fd: RawFd) -> Result<File, TapError> {
    // SAFETY: F_GETFD takes no argument and only reads the fd table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(TapError::NotOpen {
            fd,
            source: io::Error::last_os_error(),
        });
    }
    let mut req = IfReq::new("");
    // SAFETY: TUNGETIFF writes a `struct ifreq` into `req`, which is one
    // and lives across the call; on any other kind of fd the call fails
    // without writing.
    let ret = unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut req) };
    if ret < 0 {
        return Err(TapError::NotTun {
            fd,
            source: io::Error::last_os_error(),
        });
    }
    let flags = c_int::from(req.flags) & 0xffff;
    if flags & TYPE_MASK != libc::IFF_TAP || flags & TAP_FLAGS != TAP_FLAGS {
        return Err(TapError::WrongFlags {
            fd,
            name: req.name(),
            flags: flags as u16,
        });
    }
    // SAFETY: `fd` is open (F_GETFD above) and was inherited across exec for
    // this device: nothing else in the process owns it, and the builder
    // takes it once. Fds 0-2 are refused by the config's validation.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    configure(&file, &req.name())?;
    Ok(file)
}

/// The tap as the device uses it: a 12-byte header, offloads off until a
/// driver accepts some (the kernel must hand it only complete, checksummed
/// frames till then), non-blocking.
fn configure(tap: &File, name: &str) -> Result<(), TapError> {
    let setup = |what| {
        let name = name.to_owned();
        move |source| TapError::Setup { name, what, source }
    };
    let hdr_len = VNET_HDR_LEN as c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which points
    // at `hdr_len` for the duration of the call.
    if unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
        return Err(setup("TUNSETVNETHDRSZ")(io::Error::last_os_error()));
    }
    set_offloads(tap, 0).map_err(setup("TUNSETOFFLOAD"))?;
    set_nonblocking(tap.as_raw_fd()).map_err(setup("O_NONBLOCK"))
}

/// The tap offloads (`TUN_F_*`) that match the virtio-net features a
/// driver accepted: checksum offload if it takes partial checksums, TCP
/// segments up to 64 KiB per IP version it takes them for (the kernel
/// needs checksum offload for those).
pub fn offloads_for(acked_features: u64) -> u32 {
    use virtio_bindings::virtio_net::{
        VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    };
    let has = |bit: u32| acked_features & (1 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    flags
}

/// Sets the tap's offloads (the one tap ioctl the running VMM makes; its
/// seccomp filter allows it).
pub fn set_offloads(tap: &File, flags: u32) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its flags by value; no memory is touched.
    if unsafe {
        libc::ioctl(
            tap.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(flags),
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets O_NONBLOCK on `fd` (shared with any other holder of the open file).
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL takes no argument and only reads the file's flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL with an int argument; only the file's flags change.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Runs `f` on a thread in a network namespace of its own, so the taps
    /// it makes vanish with it. Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN)
    /// and /dev/net/tun, and fails when they are missing.
    pub fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            // SAFETY: unshare(CLONE_NEWNET) moves only this thread into a new
            // network namespace; it touches no memory.
            let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                ret,
                0,
                "this test needs root: unshare(CLONE_NEWNET): {}",
                io::Error::last_os_error()
            );
            f()
        })
        .join()
        .expect("the netns thread panicked")
    }

    #[test]
    fn needs_root_a_tap_made_by_name_is_set_up_for_the_device() {
        in_fresh_netns(|| {
            let (tap, name) = create("hulltst%d").expect("needs root and /dev/net/tun");
            assert!(name.starts_with("hulltst"), "{name}");
            let mut hdr_len: c_int = 0;
            // SAFETY: TUNGETVNETHDRSZ writes one int to the pointer.
            let ret = unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNGETVNETHDRSZ, &mut hdr_len) };
            assert_eq!((ret, hdr_len), (0, VNET_HDR_LEN as c_int));
            // SAFETY: F_GETFL only reads the file's flags.
            let fl = unsafe { libc::fcntl(tap.as_raw_fd(), libc::F_GETFL) };
            assert_ne!(fl & libc::O_NONBLOCK, 0);
        });
    }

    #[test]
    fn needs_root_an_inherited_fd_must_be_a_vnet_tap() {
        in_fresh_netns(|| {
            let (tap, name) = create("hulltst%d").expect("needs root and /dev/net/tun");
            let fd = OwnedFd::from(tap);
            let raw = fd.as_raw_fd();
            std::mem::forget(fd);
            let taken = from_inherited(raw).expect("a vnet tap is taken");
            assert_eq!(taken.as_raw_fd(), raw);

            // A tap without IFF_VNET_HDR is refused, by name and flags.
            let tun = File::options()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .unwrap();
            let mut req = IfReq::new("hulltst%d");
            req.flags = (libc::IFF_TAP | libc::IFF_NO_PI) as i16;
            // SAFETY: as in `create`: `req` is an ifreq that outlives the call.
            let ret = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) };
            assert_eq!(ret, 0);
            let raw = OwnedFd::from(tun);
            let err = from_inherited(raw.as_raw_fd()).unwrap_err();
            assert!(
                matches!(&err, TapError::WrongFlags { name: n, .. } if n != &name),
                "{err:?}"
            );
            assert!(err.to_string().contains("IFF_VNET_HDR"), "{err}");

            // Not a tap at all.
            let file = tempfile::tempfile().unwrap();
            let err = from_inherited(file.as_raw_fd()).unwrap_err();
            assert!(matches!(err, TapError::NotTun { .. }), "{err:?}");
            // Not open.
            let err = from_inherited(9999).unwrap_err();
            assert!(matches!(err, TapError::NotOpen { fd: 9999, .. }), "{err:?}");
        });
    }
}
