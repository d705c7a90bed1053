//! The container's network, inside the guest: the VM's one network
//! interface (virtio-net) moves into the container's network namespace and
//! takes the name, MAC, MTU, addresses and routes the host's network plugin
//! gave the veth it stands for (see sandbox/src/network.rs on the host);
//! loopback comes up. Spoken in rtnetlink directly: the guest has no `ip`,
//! and each process started here costs hundreds of milliseconds.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use hull_protocol::agent_api::agent::NetworkInterface;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("the guest has no network interface to give (is one in a container already?)")]
    NoInterface,
    #[error("{what}")]
    Netlink {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("entering the container's network namespace")]
    Enter(#[source] io::Error),
    #[error("answering 127.0.0.11:53 in the container's network namespace")]
    DnsRelay(#[source] io::Error),
}

/// What the guest's interface becomes (the veth's settings on the host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addresses: Vec<(Ipv4Addr, u8)>,
    pub routes: Vec<Route>,
}

/// An IPv4 route: (destination and prefix length, `None` for the default;
/// gateway, `None` for a route on the link).
pub type Route = (Option<(Ipv4Addr, u8)>, Option<Ipv4Addr>);

/// Parses `02:42:ac:11:00:02`.
pub fn parse_mac(text: &str) -> Result<[u8; 6], NetworkError> {
    let bad = || NetworkError::Invalid {
        field: "interface.mac",
        reason: format!("{text:?} is not a MAC address like 02:42:ac:11:00:02"),
    };
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() || mac[0] & 1 != 0 {
        return Err(bad());
    }
    Ok(mac)
}

/// Checks what the host sent before anything is changed.
pub fn validate(iface: &Interface) -> Result<(), NetworkError> {
    let invalid = |field, reason: String| NetworkError::Invalid { field, reason };
    let name_ok = !iface.name.is_empty()
        && iface.name.len() < libc::IFNAMSIZ
        && iface.name != "lo"
        && iface
            .name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"/:%".contains(&b));
    if !name_ok {
        return Err(invalid(
            "interface.name",
            format!("{:?} is not an interface name", iface.name),
        ));
    }
    if !(68..=65535).contains(&iface.mtu) {
        return Err(invalid(
            "interface.mtu",
            format!("{} is not between 68 and 65535", iface.mtu),
        ));
    }
    for (addr, len) in &iface.addresses {
        if *len > 32 {
            return Err(invalid(
                "interface.addresses",
                format!("{addr}/{len}: the prefix is longer than 32"),
            ));
        }
    }
    for (dst, _) in &iface.routes {
        if let Some((addr, len)) = dst {
            if *len > 32 {
                return Err(invalid(
                    "interface.routes",
                    format!("{addr}/{len}: the prefix is longer than 32"),
                ));
            }
        }
    }
    Ok(())
}

/// The wire's interface, checked and typed.
pub fn interface_of(wire: &NetworkInterface) -> Result<Interface, NetworkError> {
    use NetworkError::Invalid;
    let ip = |field, text: &str| {
        text.parse::<std::net::Ipv4Addr>().map_err(|_| Invalid {
            field,
            reason: format!("{text:?} is not an IPv4 address"),
        })
    };
    let prefix = |field, len: u32| {
        u8::try_from(len).ok().filter(|l| *l <= 32).ok_or(Invalid {
            field,
            reason: format!("prefix length {len} is more than 32"),
        })
    };
    let addresses = wire
        .addresses
        .iter()
        .map(|a| {
            Ok((
                ip("interface.addresses", &a.address)?,
                prefix("interface.addresses", a.prefix_length)?,
            ))
        })
        .collect::<Result<_, NetworkError>>()?;
    let routes = wire
        .routes
        .iter()
        .map(|r| {
            let destination = if r.destination.is_empty() {
                None
            } else {
                Some((
                    ip("interface.routes", &r.destination)?,
                    prefix("interface.routes", r.prefix_length)?,
                ))
            };
            let gateway = if r.gateway.is_empty() {
                None
            } else {
                Some(ip("interface.routes", &r.gateway)?)
            };
            Ok((destination, gateway))
        })
        .collect::<Result<_, NetworkError>>()?;
    Ok(Interface {
        name: wire.name.clone(),
        mac: parse_mac(&wire.mac)?,
        mtu: wire.mtu,
        addresses,
        routes,
    })
}

/// Brings loopback up in `netns` and, given one, moves the guest's network
/// interface there and sets it up as `iface` says. Runs on a thread of its
/// own, which alone enters the namespace.
pub fn configure(netns: File, iface: Option<Interface>) -> Result<(), NetworkError> {
    if let Some(iface) = &iface {
        validate(iface)?;
    }
    std::thread::spawn(move || configure_in_thread(&netns, iface.as_ref()))
        .join()
        .unwrap_or_else(|_| {
            Err(NetworkError::Enter(io::Error::other(
                "the network thread panicked",
            )))
        })
}

fn configure_in_thread(netns: &File, iface: Option<&Interface>) -> Result<(), NetworkError> {
    let nic = match iface {
        Some(_) => Some(guest_nic()?),
        None => None,
    };
    if let Some(index) = nic {
        let mut root = Netlink::open().map_err(netlink("opening rtnetlink"))?;
        let mut msg = link_message(index, 0, 0);
        push_attr(
            &mut msg,
            libc::IFLA_NET_NS_FD,
            &netns.as_raw_fd().to_ne_bytes(),
        );
        root.request(libc::RTM_NEWLINK, 0, &msg).map_err(netlink(
            "moving the interface into the container's namespace",
        ))?;
    }
    // SAFETY: setns with an open namespace descriptor; only this thread,
    // which ends with this function, changes namespace.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NetworkError::Enter(io::Error::last_os_error()));
    }
    let mut nl = Netlink::open().map_err(netlink("opening rtnetlink in the namespace"))?;
    let up = libc::IFF_UP as u32;
    nl.request(libc::RTM_NEWLINK, 0, &link_message(LOOPBACK_INDEX, up, up))
        .map_err(netlink("bringing loopback up"))?;
    let (Some(iface), Some(index)) = (iface, nic) else {
        return Ok(());
    };
    let mut msg = link_message(index, 0, 0);
    push_attr(&mut msg, libc::IFLA_IFNAME, &nul_terminated(&iface.name));
    push_attr(&mut msg, libc::IFLA_ADDRESS, &iface.mac);
    push_attr(&mut msg, libc::IFLA_MTU, &iface.mtu.to_ne_bytes());
    nl.request(libc::RTM_NEWLINK, 0, &msg)
        .map_err(netlink(format!("naming the interface {}", iface.name)))?;
    nl.request(libc::RTM_NEWLINK, 0, &link_message(index, up, up))
        .map_err(netlink(format!("bringing {} up", iface.name)))?;
    let create = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    for (addr, len) in &iface.addresses {
        nl.request(
            libc::RTM_NEWADDR,
            create,
            &address_message(index, *addr, *len),
        )
        .map_err(netlink(format!("adding {addr}/{len}")))?;
    }
    for (dst, gateway) in &iface.routes {
        nl.request(
            libc::RTM_NEWROUTE,
            create,
            &route_message(index, *dst, *gateway),
        )
        .map_err(netlink(format!("adding the route {dst:?} via {gateway:?}")))?;
    }
    Ok(())
}

fn netlink(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Netlink { what, source }
}

/// Loopback is the first device of every network namespace.
const LOOPBACK_INDEX: i32 = 1;

/// The index of the guest's Ethernet interface in this thread's namespace
/// (the VM has one network device).
fn guest_nic() -> Result<i32, NetworkError> {
    let entries = std::fs::read_dir("/sys/class/net").map_err(netlink("listing /sys/class/net"))?;
    for entry in entries.flatten() {
        let dir = entry.path();
        let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        // ARPHRD_ETHER
        if read("type").trim() == "1" {
            if let Ok(index) = read("ifindex").trim().parse() {
                return Ok(index);
            }
        }
    }
    Err(NetworkError::NoInterface)
}

// ---- rtnetlink messages, built by hand (linux/rtnetlink.h) ----

const NLMSG_HDRLEN: usize = 16;

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

fn nul_terminated(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

/// Appends one attribute (struct rtattr + payload, padded to 4 bytes).
fn push_attr(msg: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    msg.extend_from_slice(&(len as u16).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(payload);
    msg.resize(align4(msg.len()), 0);
}

/// struct ifinfomsg.
fn link_message(index: i32, flags: u32, change: u32) -> Vec<u8> {
    let mut msg = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
    msg.extend_from_slice(&index.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&change.to_ne_bytes());
    msg
}

/// struct ifaddrmsg and its attributes, for an IPv4 address.
fn address_message(index: i32, addr: Ipv4Addr, prefix_len: u8) -> Vec<u8> {
    let mut msg = vec![libc::AF_INET as u8, prefix_len, 0, libc::RT_SCOPE_UNIVERSE];
    msg.extend_from_slice(&(index as u32).to_ne_bytes());
    push_attr(&mut msg, libc::IFA_LOCAL, &addr.octets());
    push_attr(&mut msg, libc::IFA_ADDRESS, &addr.octets());
    if prefix_len < 31 {
        let host_bits = u32::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
        let broadcast = Ipv4Addr::from(u32::from(addr) | host_bits);
        push_attr(&mut msg, libc::IFA_BROADCAST, &broadcast.octets());
    }
    msg
}

/// struct rtmsg and its attributes, for an IPv4 route in the main table.
fn route_message(
    index: i32,
    destination: Option<(Ipv4Addr, u8)>,
    gateway: Option<Ipv4Addr>,
) -> Vec<u8> {
    let dst_len = destination.map_or(0, |(_, len)| len);
    let scope = if gateway.is_some() {
        libc::RT_SCOPE_UNIVERSE
    } else {
        libc::RT_SCOPE_LINK
    };
    let mut msg = vec![
        libc::AF_INET as u8,
        dst_len,
        0,
        0,
        libc::RT_TABLE_MAIN,
        libc::RTPROT_BOOT,
        scope,
        libc::RTN_UNICAST,
    ];
    msg.extend_from_slice(&0u32.to_ne_bytes());
    if let Some((dst, _)) = destination {
        push_attr(&mut msg, libc::RTA_DST, &dst.octets());
    }
    if let Some(gateway) = gateway {
        push_attr(&mut msg, libc::RTA_GATEWAY, &gateway.octets());
    }
    push_attr(&mut msg, libc::RTA_OIF, &(index as u32).to_ne_bytes());
    msg
}

/// A NETLINK_ROUTE socket that sends one request at a time and waits for
/// its acknowledgement.
struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    fn open() -> io::Result<Self> {
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
    fn request(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
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

    fn eth0() -> Interface {
        Interface {
            name: "eth0".into(),
            mac: parse_mac("02:42:ac:11:00:02").unwrap(),
            mtu: 1500,
            addresses: vec![("172.17.0.2".parse().unwrap(), 16)],
            routes: vec![(None, Some("172.17.0.1".parse().unwrap()))],
        }
    }

    #[test]
    fn macs_parse_and_multicast_ones_are_refused() {
        assert_eq!(
            parse_mac("02:42:ac:11:00:02").unwrap(),
            [2, 0x42, 0xac, 0x11, 0, 2]
        );
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "01:00:5e:00:00:01",
            "zz:42:ac:11:00:02",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_interfaces_are_refused_naming_the_field() {
        let mut iface = eth0();
        validate(&iface).unwrap();
        iface.name = "lo".into();
        assert!(validate(&iface)
            .unwrap_err()
            .to_string()
            .contains("interface.name"));
        let mut iface = eth0();
        iface.mtu = 20;
        assert!(validate(&iface)
            .unwrap_err()
            .to_string()
            .contains("interface.mtu"));
        let mut iface = eth0();
        iface.addresses[0].1 = 33;
        assert!(validate(&iface)
            .unwrap_err()
            .to_string()
            .contains("interface.addresses"));
    }

    #[test]
    fn an_address_message_has_local_address_and_broadcast() {
        let msg = address_message(2, "172.17.0.2".parse().unwrap(), 16);
        // ifaddrmsg (8) + three 8-byte attributes.
        assert_eq!(msg.len(), 8 + 3 * 8);
        assert_eq!(msg[1], 16);
        assert_eq!(&msg[msg.len() - 4..], &[172, 17, 255, 255]);
    }

    /// Needs root: moves a veth end into a new namespace and configures it
    /// there, as the agent does with the VM's interface in the guest.
    #[test]
    fn rtnetlink_requests_configure_an_interface() {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert!(euid == 0, "this test needs root");
        std::thread::spawn(|| {
            // SAFETY: unshare with a namespace flag only, in this thread.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            let target = std::thread::spawn(|| {
                // SAFETY: as above.
                assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
                File::open("/proc/thread-self/ns/net").unwrap()
            })
            .join()
            .unwrap();
            let mut nl = Netlink::open().unwrap();
            // A dummy-free way to get an Ethernet device: a veth pair.
            let status = std::process::Command::new("ip")
                .args([
                    "link", "add", "vguest", "type", "veth", "peer", "name", "vpeer",
                ])
                .status()
                .unwrap();
            assert!(status.success());
            let index = index_of("vguest");
            let mut msg = link_message(index, 0, 0);
            push_attr(
                &mut msg,
                libc::IFLA_NET_NS_FD,
                &target.as_raw_fd().to_ne_bytes(),
            );
            nl.request(libc::RTM_NEWLINK, 0, &msg).unwrap();
            // The rest as configure_in_thread does it, by name lookup.
            // SAFETY: setns with an open namespace descriptor, this thread only.
            let entered = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0);
            let mut nl = Netlink::open().unwrap();
            let index = index_of("vguest");
            let iface = eth0();
            let mut msg = link_message(index, 0, 0);
            push_attr(&mut msg, libc::IFLA_IFNAME, &nul_terminated(&iface.name));
            push_attr(&mut msg, libc::IFLA_ADDRESS, &iface.mac);
            push_attr(&mut msg, libc::IFLA_MTU, &1400u32.to_ne_bytes());
            nl.request(libc::RTM_NEWLINK, 0, &msg).unwrap();
            let up = libc::IFF_UP as u32;
            nl.request(libc::RTM_NEWLINK, 0, &link_message(index, up, up))
                .unwrap();
            let create = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
            nl.request(
                libc::RTM_NEWADDR,
                create,
                &address_message(index, iface.addresses[0].0, 16),
            )
            .unwrap();
            let again = nl.request(
                libc::RTM_NEWADDR,
                create,
                &address_message(index, iface.addresses[0].0, 16),
            );
            assert_eq!(again.unwrap_err().raw_os_error(), Some(libc::EEXIST));
            let shown = std::process::Command::new("ip")
                .args(["-o", "addr", "show", "eth0"])
                .output()
                .unwrap();
            let shown = String::from_utf8_lossy(&shown.stdout);
            assert!(
                shown.contains("inet 172.17.0.2/16 brd 172.17.255.255"),
                "{shown}"
            );
            let link = std::process::Command::new("ip")
                .args(["-o", "link", "show", "eth0"])
                .output()
                .unwrap();
            let link = String::from_utf8_lossy(&link.stdout);
            assert!(
                link.contains("mtu 1400") && link.contains("02:42:ac:11:00:02"),
                "{link}"
            );
        })
        .join()
        .unwrap();
    }

    fn index_of(name: &str) -> i32 {
        let name = std::ffi::CString::new(name).unwrap();
        // SAFETY: a NUL-terminated name.
        unsafe { libc::if_nametoindex(name.as_ptr()) as i32 }
    }
}
