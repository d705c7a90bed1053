//! virtio-net (virtio 1.2, section 5.1) on a tap.
//!
//! One RX and one TX queue, the MAC and the link status in config space,
//! used-ring interrupts suppressed with `VIRTIO_RING_F_EVENT_IDX`. Frames
//! move between the tap and the descriptor chains as they are, the 12-byte
//! `virtio_net_hdr_v1` in front: the host never parses a guest's packet.
//!
//! Checksum and TCP segmentation offloads both ways (`CSUM`, `HOST_TSO4/6`,
//! `GUEST_CSUM`, `GUEST_TSO4/6`): the header's checksum and GSO fields pass
//! through untouched, the host kernel's tap checks them as it checks any
//! vnet header, and the tap's `TUNSETOFFLOAD` follows what the driver
//! accepted. With `GUEST_TSO*` and without mergeable RX buffers, Linux posts
//! "big" RX chains (a 64 KiB frame fits one chain), so the RX path stays one
//! frame per chain. Mergeable RX buffers are not offered: they save guest
//! memory for small frames, which a microVM with one NIC does not need.
//!
//! [`tap`] opens and checks the tap (the only ioctls, before seccomp);
//! [`frame`] copies frames in and out of chains (every guest-controlled
//! check); `device` runs the queues on the event loop.

mod device;
pub mod frame;
pub mod tap;

pub use device::{Net, NetError, FEATURES, QUEUE_SIZE, RXQ, TXQ};
pub use hull_protocol::vmm_config::{NetConfig, TapConfig};
pub use tap::TapError;

/// `struct virtio_net_hdr_v1`: the header before every frame, both ways
/// (VERSION_1 without mergeable buffers still has `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;
/// The largest frame with its header either way: a 64 KiB IP packet, its
/// Ethernet header and the virtio-net header (Firecracker's bound too).
pub const MAX_FRAME_LEN: usize = 65562;

/// A random locally administered unicast MAC (`02:xx:xx:xx:xx:xx`), for a
/// VM whose config gives none; the guest agent sets the real one.
pub fn random_mac() -> std::io::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut filled = 1;
    while filled < mac.len() {
        let rest = &mut mac[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`,
        // which is valid for writes of that length.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        filled += n as usize;
    }
    mac[0] = 0x02;
    Ok(mac)
}

/// `02:00:5e:10:00:01`: six two-digit hex bytes, a unicast address.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().unwrap_or_default();
        if part.len() != 2 {
            return Err(format!("{text:?} is not a MAC address (xx:xx:xx:xx:xx:xx)"));
        }
        *byte = u8::from_str_radix(part, 16)
            .map_err(|_| format!("{text:?} is not a MAC address (xx:xx:xx:xx:xx:xx)"))?;
    }
    if parts.next().is_some() {
        return Err(format!("{text:?} is not a MAC address (xx:xx:xx:xx:xx:xx)"));
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "{text} is a multicast address; a NIC needs a unicast one"
        ));
    }
    Ok(mac)
}

/// `02:00:5e:10:00:01`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_macs_are_local_unicast_and_differ() {
        let a = random_mac().unwrap();
        let b = random_mac().unwrap();
        assert_eq!(a[0], 0x02);
        assert_ne!(a, b);
        assert_eq!(
            format_mac(&[2, 0xab, 0, 1, 0x10, 0xff]),
            "02:ab:00:01:10:ff"
        );
        assert_eq!(
            parse_mac("02:ab:CD:00:10:ff"),
            Ok([0x02, 0xab, 0xcd, 0x00, 0x10, 0xff])
        );
        assert_eq!(parse_mac(&format_mac(&a)), Ok(a));
    }
}
