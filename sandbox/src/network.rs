//! The host side of a sandbox's network, Kata's "tcfilter" model: the
//! container's network plugin (Docker's libnetwork, a CNI plugin) puts a
//! veth into the sandbox's network namespace and gives it the container's
//! address; hull moves every frame between that veth and the VM's tap with
//! two tc redirects (ingress qdisc + mirred), and the guest's interface
//! takes the veth's MAC, MTU, IPv4 and IPv6 addresses and routes.
//! Plugins, Docker's NAT rules and port publishing work unchanged, and
//! nothing on the host parses the guest's packets.
//!
//! Everything here runs `ip` and `tc` (iproute2) inside the namespace, by
//! an open namespace file: the namespace may have no name (CNI through
//! `/proc/<pid>/ns/net`) and outlives nothing the shim does not hold.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use serde_json::Value;

use crate::vmm_process::TAP_NAME;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("running `{command}` in the sandbox's network namespace")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` in the sandbox's network namespace failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("reading what `{command}` printed")]
    Output {
        command: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The interface a network plugin put into the namespace, as the guest's
/// interface must look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugged {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    /// Addresses with their prefix lengths, IPv4 then IPv6. No link-local
    /// one: the guest's kernel makes its own from the (same) MAC.
    pub addresses: Vec<(IpAddr, u8)>,
    /// Routes through the interface, IPv4 then IPv6, other than the ones
    /// the kernel makes for its addresses and links.
    pub routes: Vec<Route>,
    /// Other interfaces with addresses in the namespace: the VM has one
    /// NIC, so they do not reach the guest (the shim says so).
    pub left_out: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The destination and its prefix length; `0.0.0.0/0` or `::/0` is the
    /// default route.
    pub destination: (IpAddr, u8),
    /// `None`: a route on the link.
    pub gateway: Option<IpAddr>,
}

/// What a child runs between fork and exec to enter a network namespace:
/// `target`, or a new one when `None`. It calls only setns or unshare,
/// which are async-signal-safe: give it to `pre_exec`.
pub fn enter_before_exec(
    target: Option<std::os::fd::OwnedFd>,
) -> impl FnMut() -> std::io::Result<()> + Send + Sync + 'static {
    move || {
        let done = match &target {
            // SAFETY: setns with a descriptor the closure owns; no pointers.
            Some(fd) => unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) },
            // SAFETY: unshare with a namespace flag only.
            None => unsafe { libc::unshare(libc::CLONE_NEWNET) },
        };
        if done == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// `program args...` inside the namespace `netns`; its stdout.
fn run_in(netns: BorrowedFd<'_>, program: &str, args: &[&str]) -> Result<String, NetworkError> {
    let command = format!("{program} {}", args.join(" "));
    let fd = netns.as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(args);
    // SAFETY: between fork and exec the closure calls only setns, which is
    // async-signal-safe, on a descriptor the caller keeps open throughout.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let output = cmd.output().map_err(|source| NetworkError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !output.status.success() {
        return Err(NetworkError::Failed {
            command,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn json_of(netns: BorrowedFd<'_>, args: &[&str]) -> Result<Value, NetworkError> {
    let text = run_in(netns, "ip", args)?;
    serde_json::from_str(&text).map_err(|source| NetworkError::Output {
        command: format!("ip {}", args.join(" ")),
        source,
    })
}

/// The interface a plugin put into `netns`: the Ethernet interface (not
/// hull's tap) with an address (IPv4, or IPv6 other than link-local),
/// preferring the one the default route goes through. `None`: the namespace
/// has only loopback (`--network none`) or nothing with an address yet.
pub fn plugged(netns: &File) -> Result<Option<Plugged>, NetworkError> {
    let fd = netns.as_fd();
    let addrs = json_of(fd, &["-j", "address", "show"])?;
    let routes = json_of(fd, &["-j", "-4", "route", "show"])?;
    let routes6 = json_of(fd, &["-j", "-6", "route", "show"])?;
    Ok(choose(&addrs, &routes, &routes6))
}

/// [`plugged`] on `ip -j address show`, `ip -j -4 route show` and
/// `ip -j -6 route show`.
fn choose(addrs: &Value, routes: &Value, routes6: &Value) -> Option<Plugged> {
    let routes = routes.as_array().cloned().unwrap_or_default();
    let routes6 = routes6.as_array().cloned().unwrap_or_default();
    let default_dev = routes
        .iter()
        .chain(&routes6)
        .find(|r| r["dst"] == "default")
        .and_then(|r| r["dev"].as_str())
        .map(str::to_owned);
    let mut candidates: Vec<Plugged> = addrs
        .as_array()?
        .iter()
        .filter(|link| link["link_type"] == "ether" && link["ifname"] != TAP_NAME)
        .filter_map(|link| {
            let name = link["ifname"].as_str()?.to_owned();
            let info = link["addr_info"].as_array()?;
            let addresses: Vec<(IpAddr, u8)> = addresses_of::<Ipv4Addr>(info, "inet")
                .chain(addresses_of::<Ipv6Addr>(info, "inet6"))
                .collect();
            if addresses.is_empty() {
                return None;
            }
            let routes = routes_of::<Ipv4Addr>(&routes, &name)
                .chain(routes_of::<Ipv6Addr>(&routes6, &name))
                .collect();
            Some(Plugged {
                routes,
                mac: link["address"].as_str()?.to_owned(),
                mtu: u32::try_from(link["mtu"].as_u64()?).ok()?,
                name,
                addresses,
                left_out: Vec::new(),
            })
        })
        .collect();
    let preferred = candidates
        .iter()
        .position(|p| Some(&p.name) == default_dev.as_ref())
        .unwrap_or(0);
    if candidates.is_empty() {
        return None;
    }
    let mut chosen = candidates.remove(preferred);
    chosen.left_out = candidates.into_iter().map(|p| p.name).collect();
    Some(chosen)
}

/// An address family as `ip -j` prints it: IPv4 or IPv6.
trait Family: std::str::FromStr + Into<IpAddr> {
    /// The unspecified address, the default route's destination.
    const ANY: Self;
    /// The longest prefix, a host route's when `ip` prints none.
    const BITS: u8;
}

impl Family for Ipv4Addr {
    const ANY: Self = Ipv4Addr::UNSPECIFIED;
    const BITS: u8 = 32;
}

impl Family for Ipv6Addr {
    const ANY: Self = Ipv6Addr::UNSPECIFIED;
    const BITS: u8 = 128;
}

/// The addresses of `family` ("inet", "inet6") in an interface's
/// `addr_info`, less link-local ones (the guest's kernel makes its own).
fn addresses_of<'a, A: Family>(
    info: &'a [Value],
    family: &'a str,
) -> impl Iterator<Item = (IpAddr, u8)> + 'a {
    info.iter()
        .filter(move |a| a["family"] == family && a["scope"] != "link")
        .filter_map(|a| {
            let ip: A = a["local"].as_str()?.parse().ok()?;
            Some((ip.into(), u8::try_from(a["prefixlen"].as_u64()?).ok()?))
        })
}

/// The routes of one family through `dev`, less those the kernel made
/// (for an address, a link's fe80::/64) and any but unicast ones.
fn routes_of<'a, A: Family>(routes: &'a [Value], dev: &'a str) -> impl Iterator<Item = Route> + 'a {
    routes
        .iter()
        .filter(move |r| {
            r["dev"] == dev
                && r["protocol"] != "kernel"
                && (r["type"].is_null() || r["type"] == "unicast")
        })
        .filter_map(|r| {
            let dst = r["dst"].as_str()?;
            let destination = if dst == "default" {
                (A::ANY.into(), 0)
            } else {
                let (ip, len) = match dst.split_once('/') {
                    Some((ip, len)) => (ip, len.parse().ok()?),
                    None => (dst, A::BITS),
                };
                if len > A::BITS {
                    return None;
                }
                (ip.parse::<A>().ok()?.into(), len)
            };
            if destination == (IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 64)
                || destination.0.is_multicast()
            {
                return None;
            }
            let gateway = match r["gateway"].as_str() {
                Some(gw) => Some(gw.parse::<A>().ok()?.into()),
                None => None,
            };
            Some(Route {
                destination,
                gateway,
            })
        })
}

/// Both directions between `plugged` and the tap: whatever arrives on one
/// leaves by the other, before the namespace's own stack sees it. The tap
/// takes the interface's MTU.
pub fn wire(netns: &File, plugged: &Plugged) -> Result<(), NetworkError> {
    let fd = netns.as_fd();
    let mtu = plugged.mtu.to_string();
    run_in(fd, "ip", &["link", "set", TAP_NAME, "mtu", &mtu, "up"])?;
    // The namespace's own loopback: Docker's embedded DNS answers on it
    // (the guest's queries are relayed there, see the shim's dns.rs).
    run_in(fd, "ip", &["link", "set", "lo", "up"])?;
    for (from, to) in [(plugged.name.as_str(), TAP_NAME), (TAP_NAME, &plugged.name)] {
        run_in(fd, "tc", &["qdisc", "add", "dev", from, "ingress"])?;
        run_in(
            fd,
            "tc",
            &[
                "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match",
                "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
            ],
        )?;
    }
    Ok(())
}

/// Takes the redirect off `plugged` (the tap's side goes with the tap).
/// For a namespace that outlives the sandbox (a pod's, a named one).
pub fn unwire(netns: &File, plugged: &Plugged) -> Result<(), NetworkError> {
    let fd = netns.as_fd();
    run_in(fd, "tc", &["qdisc", "del", "dev", &plugged.name, "ingress"]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The ingress qdiscs in `netns`, one line each.
    fn ingress_qdiscs(netns: &File) -> Result<Vec<String>, NetworkError> {
        let fd = netns.as_fd();
        let text = run_in(fd, "tc", &["qdisc", "show"])?;
        Ok(text
            .lines()
            .filter(|l| l.contains("ingress"))
            .map(str::to_owned)
            .collect())
    }

    fn docker_bridge() -> (Value, Value, Value) {
        let addrs = json!([
            {"ifindex": 1, "ifname": "lo", "link_type": "loopback", "address": "00:00:00:00:00:00",
             "mtu": 65536, "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
            {"ifindex": 2, "ifname": "tap0_hull", "link_type": "ether", "address": "aa:bb:cc:dd:ee:ff",
             "mtu": 1500, "addr_info": []},
            {"ifindex": 7, "ifname": "eth0", "link_type": "ether", "address": "02:42:ac:11:00:02",
             "mtu": 1500, "addr_info": [
                {"family": "inet", "local": "172.17.0.2", "prefixlen": 16, "scope": "global"},
                {"family": "inet6", "local": "fe80::42:acff:fe11:2", "prefixlen": 64, "scope": "link"},
                {"family": "inet6", "local": "fd00::2", "prefixlen": 64, "scope": "global"}]}
        ]);
        let routes = json!([
            {"dst": "default", "gateway": "172.17.0.1", "dev": "eth0"},
            {"dst": "172.17.0.0/16", "dev": "eth0", "protocol": "kernel", "scope": "link",
             "prefsrc": "172.17.0.2"},
            {"dst": "10.9.0.0/24", "gateway": "172.17.0.254", "dev": "eth0"}
        ]);
        // As `ip -j -6 route show` prints them (iproute2 6.x).
        let routes6 = json!([
            {"dst": "fd00::/64", "dev": "eth0", "protocol": "kernel", "metric": 256, "flags": [],
             "pref": "medium"},
            {"dst": "fd01::/64", "gateway": "fd00::ff", "dev": "eth0", "protocol": "static",
             "metric": 1024, "flags": [], "pref": "medium"},
            {"dst": "fd02::5", "dev": "eth0", "metric": 1024, "flags": [], "pref": "medium"},
            {"dst": "fe80::/64", "dev": "eth0", "protocol": "kernel", "metric": 256, "flags": [],
             "pref": "medium"},
            {"dst": "fe80::/64", "dev": "eth0", "metric": 1024, "flags": [], "pref": "medium"},
            {"type": "multicast", "dst": "ff00::/8", "dev": "eth0", "metric": 256, "flags": [],
             "pref": "medium"},
            {"dst": "ff05::/16", "dev": "eth0", "metric": 1024, "flags": [], "pref": "medium"},
            {"type": "unreachable", "dst": "fd09::/64", "dev": "lo", "metric": 1024, "flags": [],
             "pref": "medium"},
            {"dst": "default", "gateway": "fd00::1", "dev": "eth0", "metric": 1024, "flags": [],
             "pref": "medium"}
        ]);
        (addrs, routes, routes6)
    }

    fn route(dst: &str, len: u8, gateway: Option<&str>) -> Route {
        Route {
            destination: (dst.parse().unwrap(), len),
            gateway: gateway.map(|gw| gw.parse().unwrap()),
        }
    }

    #[test]
    fn docker_s_veth_is_found_with_its_addresses_and_routes() {
        let (addrs, routes, routes6) = docker_bridge();
        let plugged = choose(&addrs, &routes, &routes6).expect("eth0");
        assert_eq!(plugged.name, "eth0");
        assert_eq!(plugged.mac, "02:42:ac:11:00:02");
        assert_eq!(plugged.mtu, 1500);
        // Not the link-local fe80::42:acff:fe11:2.
        assert_eq!(
            plugged.addresses,
            vec![
                ("172.17.0.2".parse().unwrap(), 16),
                ("fd00::2".parse().unwrap(), 64)
            ]
        );
        // Not the kernel's (fd00::/64, fe80::/64), multicast or unreachable
        // ones; a bare address is a host route.
        assert_eq!(
            plugged.routes,
            vec![
                route("0.0.0.0", 0, Some("172.17.0.1")),
                route("10.9.0.0", 24, Some("172.17.0.254")),
                route("fd01::", 64, Some("fd00::ff")),
                route("fd02::5", 128, None),
                route("::", 0, Some("fd00::1")),
            ]
        );
    }

    #[test]
    fn an_interface_with_only_ipv6_is_plugged_and_its_default_route_wins() {
        let addrs = json!([
            {"ifname": "eth0", "link_type": "ether", "address": "02:00:00:00:00:01", "mtu": 1500,
             "addr_info": [{"family": "inet", "local": "10.1.0.2", "prefixlen": 24}]},
            {"ifname": "eth1", "link_type": "ether", "address": "02:00:00:00:00:02", "mtu": 1500,
             "addr_info": [
                {"family": "inet6", "local": "fe80::2", "prefixlen": 64, "scope": "link"},
                {"family": "inet6", "local": "2001:db8::2", "prefixlen": 64, "scope": "global"}]}
        ]);
        let routes6 = json!([{"dst": "default", "gateway": "fe80::1", "dev": "eth1"}]);
        let plugged = choose(&addrs, &json!([]), &routes6).expect("eth1");
        assert_eq!(plugged.name, "eth1");
        assert_eq!(
            plugged.addresses,
            vec![("2001:db8::2".parse().unwrap(), 64)]
        );
        assert_eq!(plugged.routes, vec![route("::", 0, Some("fe80::1"))]);
        // Only a link-local address is no address.
        let local_only = json!([addrs[1].clone()]);
        let mut local_only = local_only;
        local_only[0]["addr_info"].as_array_mut().unwrap().pop();
        assert_eq!(choose(&local_only, &json!([]), &routes6), None);
    }

    #[test]
    fn loopback_and_the_tap_alone_are_no_network() {
        let (addrs, _, _) = docker_bridge();
        let only_lo_and_tap = Value::Array(addrs.as_array().unwrap()[..2].to_vec());
        assert_eq!(choose(&only_lo_and_tap, &json!([]), &json!([])), None);
    }

    #[test]
    fn the_default_route_s_interface_wins() {
        let addrs = json!([
            {"ifname": "eth0", "link_type": "ether", "address": "02:00:00:00:00:01", "mtu": 1500,
             "addr_info": [{"family": "inet", "local": "10.1.0.2", "prefixlen": 24}]},
            {"ifname": "eth1", "link_type": "ether", "address": "02:00:00:00:00:02", "mtu": 9000,
             "addr_info": [{"family": "inet", "local": "10.2.0.2", "prefixlen": 24}]}
        ]);
        let routes = json!([{"dst": "default", "gateway": "10.2.0.1", "dev": "eth1"}]);
        let chosen = choose(&addrs, &routes, &json!([])).unwrap();
        assert_eq!(chosen.name, "eth1");
        assert_eq!(chosen.left_out, ["eth0"], "the other one is named");
    }

    /// Needs root: a real namespace with a veth and a tap, wired and
    /// unwired with the real `ip` and `tc`.
    #[test]
    fn a_veth_and_the_tap_are_wired_and_unwired() {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert!(
            euid == 0,
            "this test needs root (it makes a network namespace, a veth and a tap)"
        );
        let netns = std::thread::spawn(|| {
            // SAFETY: unshare with a namespace flag only, in this thread.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            File::open("/proc/thread-self/ns/net").unwrap()
        })
        .join()
        .unwrap();
        let fd = netns.as_fd();
        run_in(
            fd,
            "ip",
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
            ],
        )
        .unwrap();
        run_in(fd, "ip", &["tuntap", "add", "dev", TAP_NAME, "mode", "tap"]).unwrap();
        run_in(fd, "ip", &["address", "add", "10.4.0.2/24", "dev", "eth0"]).unwrap();
        run_in(fd, "ip", &["link", "set", "eth0", "up"]).unwrap();
        run_in(fd, "ip", &["route", "add", "default", "via", "10.4.0.1"]).unwrap();
        run_in(
            fd,
            "ip",
            &["-6", "address", "add", "fd04::2/64", "dev", "eth0", "nodad"],
        )
        .unwrap();
        run_in(
            fd,
            "ip",
            &["-6", "route", "add", "default", "via", "fd04::1"],
        )
        .unwrap();
        let plugged = plugged(&netns).unwrap().expect("eth0");
        assert_eq!(
            plugged.addresses,
            vec![
                ("10.4.0.2".parse().unwrap(), 24),
                ("fd04::2".parse().unwrap(), 64)
            ]
        );
        assert_eq!(
            plugged.routes,
            vec![
                Route {
                    destination: ("0.0.0.0".parse().unwrap(), 0),
                    gateway: Some("10.4.0.1".parse().unwrap())
                },
                Route {
                    destination: ("::".parse().unwrap(), 0),
                    gateway: Some("fd04::1".parse().unwrap())
                },
            ]
        );
        wire(&netns, &plugged).unwrap();
        assert_eq!(ingress_qdiscs(&netns).unwrap().len(), 2);
        let filters = run_in(fd, "tc", &["filter", "show", "dev", "eth0", "ingress"]).unwrap();
        assert!(
            filters.contains("Egress Redirect to device tap0_hull"),
            "{filters}"
        );
        unwire(&netns, &plugged).unwrap();
        let left = ingress_qdiscs(&netns).unwrap();
        assert!(left.iter().all(|l| l.contains(TAP_NAME)), "{left:?}");
    }
}
