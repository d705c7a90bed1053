//! The container's network, inside the guest: the VM's one network
//! interface (virtio-net) moves into the container's network namespace and
//! takes the name, MAC, MTU, addresses and routes the host's network plugin
//! gave the veth it stands for (see sandbox/src/network.rs on the host);
//! loopback comes up. Addresses and routes may be IPv4 or IPv6; IPv6
//! addresses skip duplicate address detection (the plugin chose them, and
//! DAD would keep them unusable for a second), the link-local one comes
//! from the guest's kernel. Spoken in rtnetlink directly
//! ([`crate::rtnetlink`]).

use std::fs::File;
use std::io;
use std::net::IpAddr;
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
    /// IPv4 and IPv6 addresses with their prefix lengths.
    pub addresses: Vec<(IpAddr, u8)>,
    pub routes: Vec<Route>,
}

/// A route through the interface, IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The destination network and its prefix length; `0.0.0.0/0` or
    /// `::/0` is the default route.
    pub destination: (IpAddr, u8),
    /// `None`: a route on the link.
    pub gateway: Option<IpAddr>,
}

/// The longest prefix `addr`'s family has.
fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// Whether `addr` has no bits set past its first `len`.
fn is_network(addr: IpAddr, len: u8) -> bool {
    let (bits, width) = match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    };
    let host_bits = u32::from(width - len.min(width));
    host_bits == 0 || bits & (u128::MAX >> (128 - host_bits)) == 0
}

/// Why `addr` cannot be an interface's address, if it cannot.
fn unusable_address(addr: IpAddr) -> Option<&'static str> {
    if addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() {
        return Some("it is unspecified, loopback or multicast");
    }
    match addr {
        IpAddr::V4(a) if a.is_broadcast() => Some("it is the broadcast address"),
        // fe80::/10: the guest's kernel makes the interface's own from its MAC.
        IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 => {
            Some("link-local addresses come from the guest's kernel")
        }
        _ => None,
    }
}

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
    for &(addr, len) in &iface.addresses {
        if len > max_prefix(addr) {
            return Err(invalid(
                "interface.addresses",
                format!(
                    "{addr}/{len}: the prefix is longer than {}",
                    max_prefix(addr)
                ),
            ));
        }
        if let Some(why) = unusable_address(addr) {
            return Err(invalid("interface.addresses", format!("{addr}: {why}")));
        }
    }
    for route in &iface.routes {
        let (dst, len) = route.destination;
        if len > max_prefix(dst) {
            return Err(invalid(
                "interface.routes.destination",
                format!("{dst}/{len}: the prefix is longer than {}", max_prefix(dst)),
            ));
        }
        if !is_network(dst, len) {
            return Err(invalid(
                "interface.routes.destination",
                format!("{dst}/{len}: bits are set past the prefix"),
            ));
        }
        if let Some(gateway) = route.gateway {
            if gateway.is_ipv4() != dst.is_ipv4() {
                return Err(invalid(
                    "interface.routes.gateway",
                    format!("{gateway} is not of the family of the destination {dst}/{len}"),
                ));
            }
            if gateway.is_unspecified() || gateway.is_multicast() {
                return Err(invalid(
                    "interface.routes.gateway",
                    format!("{gateway} is unspecified or multicast"),
                ));
            }
        }
    }
    Ok(())
}

/// The wire's interface, typed and checked ([`validate`]).
pub fn interface_of(wire: &NetworkInterface) -> Result<Interface, NetworkError> {
    use NetworkError::Invalid;
    let ip = |field, text: &str| {
        text.parse::<IpAddr>().map_err(|_| Invalid {
            field,
            reason: format!("{text:?} is not an IPv4 or IPv6 address"),
        })
    };
    // The family's own limit is checked in validate.
    let prefix = |field, len: u32| {
        u8::try_from(len).ok().filter(|l| *l <= 128).ok_or(Invalid {
            field,
            reason: format!("prefix length {len} is more than 128"),
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
            let destination = (
                ip("interface.routes.destination", &r.destination)?,
                prefix("interface.routes.prefix_length", r.prefix_length)?,
            );
            let gateway = if r.gateway.is_empty() {
                None
            } else {
                Some(ip("interface.routes.gateway", &r.gateway)?)
            };
            Ok(Route {
                destination,
                gateway,
            })
        })
        .collect::<Result<_, NetworkError>>()?;
    let iface = Interface {
        name: wire.name.clone(),
        mac: parse_mac(&wire.mac)?,
        mtu: wire.mtu,
        addresses,
        routes,
    };
    validate(&iface)?;
    Ok(iface)
}

/// Brings loopback up in `netns` and, given one, moves the guest's network
/// interface there and sets it up as `iface` says (checked already: it
/// comes from [`interface_of`]). Runs on a thread of its own, which alone
/// enters the namespace.
pub fn configure(netns: File, iface: Option<Interface>) -> Result<(), NetworkError> {
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
    match (iface, nic) {
        (Some(iface), Some(index)) => set_up(&mut nl, index, iface),
        _ => Ok(()),
    }
}

/// Gives the interface `index` (in `nl`'s namespace) `iface`'s name, MAC,
/// MTU, addresses and routes, and brings it up.
fn set_up(nl: &mut Netlink, index: i32, iface: &Interface) -> Result<(), NetworkError> {
    let up = libc::IFF_UP as u32;
    let mut msg = link_message(index, 0, 0);
    push_attr(&mut msg, libc::IFLA_IFNAME, &nul_terminated(&iface.name));
    push_attr(&mut msg, libc::IFLA_ADDRESS, &iface.mac);
    push_attr(&mut msg, libc::IFLA_MTU, &iface.mtu.to_ne_bytes());
    nl.request(libc::RTM_NEWLINK, 0, &msg)
        .map_err(netlink(format!("naming the interface {}", iface.name)))?;
    nl.request(libc::RTM_NEWLINK, 0, &link_message(index, up, up))
        .map_err(netlink(format!("bringing {} up", iface.name)))?;
    let create = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    // Addresses first: a route's gateway must be on a network they make.
    for &(addr, len) in &iface.addresses {
        nl.request(
            libc::RTM_NEWADDR,
            create,
            &address_message(index, addr, len),
        )
        .map_err(netlink(format!("adding {addr}/{len}")))?;
    }
    for route in &iface.routes {
        let (dst, len) = route.destination;
        let via = route
            .gateway
            .map_or(String::new(), |gw| format!(" via {gw}"));
        nl.request(
            libc::RTM_NEWROUTE,
            create,
            &route_message(index, route.destination, route.gateway),
        )
        .map_err(netlink(format!("adding the route {dst}/{len}{via}")))?;
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
            addresses: vec![
                ("172.17.0.2".parse().unwrap(), 16),
                ("fd00::2".parse().unwrap(), 64),
            ],
            routes: vec![
                route("0.0.0.0", 0, Some("172.17.0.1")),
                route("::", 0, Some("fd00::1")),
                route("fd01::", 64, Some("fd00::ff")),
                route("fd02::", 64, None),
            ],
        }
    }

    fn route(dst: &str, len: u8, gateway: Option<&str>) -> Route {
        Route {
            destination: (dst.parse().unwrap(), len),
            gateway: gateway.map(|gw| gw.parse().unwrap()),
        }
    }

    /// The field `iface`'s validation names.
    fn refused_field(iface: &Interface) -> String {
        match validate(iface).unwrap_err() {
            NetworkError::Invalid { field, .. } => field.to_owned(),
            other => panic!("not a validation error: {other}"),
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
    fn bad_ipv6_addresses_and_routes_are_refused_naming_the_field() {
        let with_address = |addr: &str, len: u8| {
            let mut iface = eth0();
            iface.addresses[1] = (addr.parse().unwrap(), len);
            refused_field(&iface)
        };
        // 129 bits; link-local (the kernel's own); multicast; unspecified.
        for (addr, len) in [("fd00::2", 129), ("fe80::2", 64), ("ff02::1", 8), ("::", 0)] {
            assert_eq!(
                with_address(addr, len),
                "interface.addresses",
                "{addr}/{len}"
            );
        }
        let with_route = |route: Route| {
            let mut iface = eth0();
            iface.routes.push(route);
            refused_field(&iface)
        };
        let cases = [
            (route("fd01::", 129, None), "interface.routes.destination"),
            (route("fd01::1", 64, None), "interface.routes.destination"),
            (
                route("::", 0, Some("172.17.0.1")),
                "interface.routes.gateway",
            ),
            (
                route("0.0.0.0", 0, Some("fd00::1")),
                "interface.routes.gateway",
            ),
            (route("::", 0, Some("ff02::2")), "interface.routes.gateway"),
        ];
        for (bad, field) in cases {
            assert_eq!(with_route(bad), field, "{bad:?}");
        }
    }

    #[test]
    fn the_wire_s_ipv6_addresses_and_routes_are_typed() {
        use hull_protocol::agent_api::agent::{IpAddress, IpRoute};
        let address = |text: &str, len| IpAddress {
            address: text.into(),
            prefix_length: len,
            ..Default::default()
        };
        let wire_route = |dst: &str, len, gateway: &str| IpRoute {
            destination: dst.into(),
            prefix_length: len,
            gateway: gateway.into(),
            ..Default::default()
        };
        let wire = NetworkInterface {
            name: "eth0".into(),
            mac: "02:42:ac:11:00:02".into(),
            mtu: 1500,
            addresses: vec![address("172.17.0.2", 16), address("fd00::2", 64)],
            routes: vec![
                wire_route("0.0.0.0", 0, "172.17.0.1"),
                wire_route("::", 0, "fd00::1"),
                wire_route("fd01::", 64, "fd00::ff"),
                wire_route("fd02::", 64, ""),
            ],
            ..Default::default()
        };
        assert_eq!(interface_of(&wire).unwrap(), eth0());
        let mut bad = wire.clone();
        bad.routes[1].gateway = "fd00::zz".into();
        let err = interface_of(&bad).unwrap_err().to_string();
        assert!(err.contains("interface.routes.gateway"), "{err}");
        let mut bad = wire.clone();
        bad.routes[0].destination = String::new();
        let err = interface_of(&bad).unwrap_err().to_string();
        assert!(err.contains("interface.routes.destination"), "{err}");
        let mut bad = wire;
        bad.addresses[1].prefix_length = 200;
        let err = interface_of(&bad).unwrap_err().to_string();
        assert!(err.contains("interface.addresses"), "{err}");
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
            // The peer up: the interface gets a carrier, and with it the
            // kernel's IPv6 link-local address.
            let status = std::process::Command::new("ip")
                .args(["link", "set", "vpeer", "up"])
                .status()
                .unwrap();
            assert!(status.success());
            // The rest as configure_in_thread does it, after the move.
            // SAFETY: setns with an open namespace descriptor, this thread only.
            let entered = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0);
            let mut nl = Netlink::open().unwrap();
            let index = index_of("vguest");
            let mut iface = eth0();
            iface.mtu = 1400;
            set_up(&mut nl, index, &iface).unwrap();
            let create = (libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
            let again = nl.request(
                libc::RTM_NEWADDR,
                create,
                &address_message(index, iface.addresses[0].0, 16),
            );
            assert_eq!(again.unwrap_err().raw_os_error(), Some(libc::EEXIST));
            let ip = |args: &[&str]| {
                let out = std::process::Command::new("ip")
                    .args(args)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "ip {args:?}: {out:?}");
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            let shown = ip(&["-o", "addr", "show", "eth0"]);
            assert!(
                shown.contains("inet 172.17.0.2/16 brd 172.17.255.255"),
                "{shown}"
            );
            // Usable at once: not tentative, no duplicate address detection.
            let v6 = shown
                .lines()
                .find(|l| l.contains("inet6 fd00::2/64"))
                .unwrap_or_else(|| panic!("no fd00::2/64: {shown}"));
            assert!(v6.contains("nodad") && !v6.contains("tentative"), "{v6}");
            let link = ip(&["-o", "link", "show", "eth0"]);
            assert!(
                link.contains("mtu 1400") && link.contains("02:42:ac:11:00:02"),
                "{link}"
            );
            let routes = ip(&["-4", "route"]);
            assert!(
                routes.contains("default via 172.17.0.1 dev eth0"),
                "{routes}"
            );
            let routes = ip(&["-6", "route"]);
            for expected in [
                "fd00::/64 dev eth0 proto kernel",
                "fd01::/64 via fd00::ff dev eth0 metric",
                "fd02::/64 dev eth0 metric",
                "default via fd00::1 dev eth0 metric",
            ] {
                assert!(routes.contains(expected), "{expected}: {routes}");
            }
            // The kernel's own link-local address, from the MAC.
            let local = ip(&["-6", "-o", "addr", "show", "eth0", "scope", "link"]);
            assert!(local.contains("fe80::42:acff:fe11:2/64"), "{local}");
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
