//! The container's network, inside the guest: the VM's one network
//! interface (virtio-net) moves into the container's network namespace and
//! takes the name, MAC, MTU, addresses and routes the host's network plugin
//! gave the veth it stands for (see sandbox/src/network.rs on the host);
//! loopback comes up. Spoken in rtnetlink directly ([`crate::rtnetlink`]).

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use hull_protocol::agent_api::agent::NetworkInterface;

use crate::rtnetlink::{
    address_message, link_message, nul_terminated, push_attr, route_message, Netlink,
};

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
