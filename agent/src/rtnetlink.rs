//! rtnetlink spoken by hand (linux/rtnetlink.h): the few messages the
//! agent sends to configure a container's interface, and a NETLINK_ROUTE
//! socket that sends one request at a time and waits for its verdict. The
//! guest has no `ip`, and a process started there costs hundreds of
//! milliseconds.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_HDRLEN: usize = 16;

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

pub(crate) fn nul_terminated(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

/// Appends one attribute (struct rtattr + payload, padded to 4 bytes).
pub(crate) fn push_attr(msg: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    msg.extend_from_slice(&(len as u16).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(payload);
    msg.resize(align4(msg.len()), 0);
}

/// struct ifinfomsg.
pub(crate) fn link_message(index: i32, flags: u32, change: u32) -> Vec<u8> {
    let mut msg = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
    msg.extend_from_slice(&index.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&change.to_ne_bytes());
    msg
}

/// struct ifaddrmsg and its attributes. An IPv6 address is marked
/// `IFA_F_NODAD`: usable at once, with no duplicate address detection
/// (which would hold it tentative for a second or more).
pub(crate) fn address_message(index: i32, addr: IpAddr, prefix_len: u8) -> Vec<u8> {
    let (family, flags) = match addr {
        IpAddr::V4(_) => (libc::AF_INET, 0),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IFA_F_NODAD),
    };
    // ifa_flags holds the low 8 bits, IFA_FLAGS all 32.
    let mut msg = vec![
        family as u8,
        prefix_len,
        flags as u8,
        libc::RT_SCOPE_UNIVERSE,
    ];
    msg.extend_from_slice(&(index as u32).to_ne_bytes());
    let octets = octets(addr);
    push_attr(&mut msg, libc::IFA_LOCAL, &octets);
    push_attr(&mut msg, libc::IFA_ADDRESS, &octets);
    if let IpAddr::V4(addr) = addr {
        if prefix_len < 31 {
            let host_bits = u32::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
            let broadcast = Ipv4Addr::from(u32::from(addr) | host_bits);
            push_attr(&mut msg, libc::IFA_BROADCAST, &broadcast.octets());
        }
    }
    if flags != 0 {
        push_attr(&mut msg, libc::IFA_FLAGS, &flags.to_ne_bytes());
    }
    msg
}

/// struct rtmsg and its attributes, for a route in the main table to
/// `destination` (prefix length 0: the default route), via `gateway` or
/// on the link. Both are of one family (the caller checked).
pub(crate) fn route_message(
    index: i32,
    destination: (IpAddr, u8),
    gateway: Option<IpAddr>,
) -> Vec<u8> {
    let (dst, dst_len) = destination;
    let family = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // IPv6 routes are always of universe scope (as `ip -6 route` sends).
    let scope = if gateway.is_some() || dst.is_ipv6() {
        libc::RT_SCOPE_UNIVERSE
    } else {
        libc::RT_SCOPE_LINK
    };
    let mut msg = vec![
        family as u8,
        dst_len,
        0,
        0,
        libc::RT_TABLE_MAIN,
        libc::RTPROT_BOOT,
        scope,
        libc::RTN_UNICAST,
    ];
    msg.extend_from_slice(&0u32.to_ne_bytes());
    if dst_len > 0 {
        push_attr(&mut msg, libc::RTA_DST, &octets(dst));
    }
    if let Some(gateway) = gateway {
        push_attr(&mut msg, libc::RTA_GATEWAY, &octets(gateway));
    }
    push_attr(&mut msg, libc::RTA_OIF, &(index as u32).to_ne_bytes());
    msg
}

/// An address in network byte order, 4 or 16 bytes.
fn octets(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A NETLINK_ROUTE socket that sends one request at a time and waits for
/// its acknowledgement.
pub(crate) struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub(crate) fn open() -> io::Result<Self> {
        // SAFETY: socket() with constant arguments; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Netlink { fd, seq: 0 })
    }

    /// Sends `body` as a message of `kind` with NLM_F_REQUEST | NLM_F_ACK
    /// and `flags`; returns the kernel's verdict.
    pub(crate) fn request(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
        self.seq += 1;
        let len = NLMSG_HDRLEN + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        let flags = flags | (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: sends `msg.len()` bytes of a live buffer to the kernel
        // (a zero destination: an unbound netlink socket talks to it).
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        self.wait_ack()
    }

    fn wait_ack(&self) -> io::Result<()> {
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: receives into a live buffer of `buf.len()` bytes.
            let got =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if got < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut rest = &buf[..got as usize];
            while rest.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
                let seq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
                if len < NLMSG_HDRLEN || len > rest.len() {
                    return Err(io::Error::other("a malformed netlink answer"));
                }
                if kind == libc::NLMSG_ERROR as u16 && seq == self.seq && len >= NLMSG_HDRLEN + 4 {
                    let error = i32::from_ne_bytes(
                        rest[NLMSG_HDRLEN..NLMSG_HDRLEN + 4]
                            .try_into()
                            .expect("4 bytes"),
                    );
                    return if error == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-error))
                    };
                }
                rest = &rest[align4(len).min(rest.len())..];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_message_has_local_address_and_broadcast() {
        let msg = address_message(2, "172.17.0.2".parse().unwrap(), 16);
        // ifaddrmsg (8) + three 8-byte attributes.
        assert_eq!(msg.len(), 8 + 3 * 8);
        assert_eq!(msg[1], 16);
        assert_eq!(msg[2], 0, "no flags on an IPv4 address");
        assert_eq!(&msg[msg.len() - 4..], &[172, 17, 255, 255]);
    }

    #[test]
    fn an_ipv6_address_message_skips_duplicate_address_detection() {
        let msg = address_message(2, "fd00::2".parse().unwrap(), 64);
        // ifaddrmsg (8) + IFA_LOCAL and IFA_ADDRESS (20 each) + IFA_FLAGS (8).
        assert_eq!(msg.len(), 8 + 2 * 20 + 8);
        assert_eq!(msg[0], libc::AF_INET6 as u8);
        assert_eq!(msg[1], 64);
        assert_eq!(u32::from(msg[2]), libc::IFA_F_NODAD);
        assert_eq!(
            &msg[12..28],
            &"fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(&msg[msg.len() - 4..], &libc::IFA_F_NODAD.to_ne_bytes());
    }

    #[test]
    fn a_default_route_has_no_destination_attribute() {
        let v4 = route_message(
            2,
            ("0.0.0.0".parse().unwrap(), 0),
            Some("10.0.0.1".parse().unwrap()),
        );
        // rtmsg (12) + RTA_GATEWAY (8) + RTA_OIF (8).
        assert_eq!(v4.len(), 12 + 8 + 8);
        assert_eq!(v4[0], libc::AF_INET as u8);
        let v6 = route_message(
            2,
            ("::".parse().unwrap(), 0),
            Some("fd00::1".parse().unwrap()),
        );
        // rtmsg (12) + RTA_GATEWAY (20) + RTA_OIF (8).
        assert_eq!(v6.len(), 12 + 20 + 8);
        assert_eq!(
            (v6[0], v6[1], v6[6]),
            (libc::AF_INET6 as u8, 0, libc::RT_SCOPE_UNIVERSE)
        );
        let on_link = route_message(2, ("fd01::".parse().unwrap(), 64), None);
        // rtmsg (12) + RTA_DST (20) + RTA_OIF (8).
        assert_eq!(on_link.len(), 12 + 20 + 8);
        assert_eq!(on_link[6], libc::RT_SCOPE_UNIVERSE);
    }
}
