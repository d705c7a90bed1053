//! The host side of a sandbox's network, Kata's "tcfilter" model: the
//! container's network plugin (Docker's libnetwork, a CNI plugin) puts a
//! veth into the sandbox's network namespace and gives it the container's
//! address; hull moves every frame between that veth and the VM's tap with
//! two tc redirects (ingress qdisc + mirred), and the guest's interface
//! takes the veth's MAC, MTU, addresses and routes. Plugins, Docker's NAT
//! rules and port publishing work unchanged, and nothing on the host parses
//! the guest's packets.
//!
//! Everything here runs `ip` and `tc` (iproute2) inside the namespace, by
//! an open namespace file: the namespace may have no name (CNI through
//! `/proc/<pid>/ns/net`) and outlives nothing the shim does not hold.

use std::fs::File;
use std::net::Ipv4Addr;
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
    /// IPv4 addresses with their prefix lengths.
    pub addresses: Vec<(Ipv4Addr, u8)>,
    /// IPv4 routes through the interface, other than the ones the kernel
    /// makes for its addresses.
    pub routes: Vec<Route>,
    /// IPv6 addresses the plugin gave; the guest kernel has no IPv6 (it
    /// costs boot time), so these are reported, not configured.
    pub ipv6_addresses: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The destination and its prefix length; `None` is the default route.
    pub destination: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
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
/// hull's tap) with an IPv4 address, preferring the one the default route
/// goes through. `None`: the namespace has only loopback (`--network
/// none`) or nothing with an address yet.
pub fn plugged(netns: &File) -> Result<Option<Plugged>, NetworkError> {
    let fd = netns.as_fd();
    let addrs = json_of(fd, &["-j", "address", "show"])?;
    let routes = json_of(fd, &["-j", "-4", "route", "show"])?;
    Ok(choose(&addrs, &routes))
}

/// [`plugged`] on `ip -j address show` and `ip -j -4 route show`.
fn choose(addrs: &Value, routes: &Value) -> Option<Plugged> {
    let routes = routes.as_array().cloned().unwrap_or_default();
    let default_dev = routes
        .iter()
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
            let addresses: Vec<(Ipv4Addr, u8)> = info
                .iter()
                .filter(|a| a["family"] == "inet")
                .filter_map(|a| {
                    let ip = a["local"].as_str()?.parse().ok()?;
                    Some((ip, u8::try_from(a["prefixlen"].as_u64()?).ok()?))
                })
                .collect();
            if addresses.is_empty() {
                return None;
            }
            let ipv6_addresses = info
                .iter()
                .filter(|a| a["family"] == "inet6" && a["scope"] != "link")
                .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"])))
                .collect();
            Some(Plugged {
                routes: routes_of(&routes, &name),
                mac: link["address"].as_str()?.to_owned(),
                mtu: u32::try_from(link["mtu"].as_u64()?).ok()?,
                name,
                addresses,
                ipv6_addresses,
            })
        })
        .collect();
    let preferred = candidates
        .iter()
        .position(|p| Some(&p.name) == default_dev.as_ref())
        .unwrap_or(0);
    (!candidates.is_empty()).then(|| candidates.swap_remove(preferred))
}

/// The routes through `dev`, less those the kernel made for an address.
fn routes_of(routes: &[Value], dev: &str) -> Vec<Route> {
    routes
        .iter()
        .filter(|r| r["dev"] == dev && r["protocol"] != "kernel")
        .filter_map(|r| {
            let dst = r["dst"].as_str()?;
            let destination = if dst == "default" {
                None
            } else {
                let (ip, len) = dst.split_once('/').unwrap_or((dst, "32"));
                Some((ip.parse().ok()?, len.parse().ok()?))
            };
            let gateway = match r["gateway"].as_str() {
                Some(gw) => Some(gw.parse().ok()?),
                None => None,
            };
            Some(Route {
                destination,
                gateway,
            })
        })
        .collect()
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

    fn docker_bridge() -> (Value, Value) {
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
        (addrs, routes)
    }

    #[test]
    fn docker_s_veth_is_found_with_its_addresses_and_routes() {
        let (addrs, routes) = docker_bridge();
        let plugged = choose(&addrs, &routes).expect("eth0");
        assert_eq!(plugged.name, "eth0");
        assert_eq!(plugged.mac, "02:42:ac:11:00:02");
        assert_eq!(plugged.mtu, 1500);
        assert_eq!(plugged.addresses, vec![("172.17.0.2".parse().unwrap(), 16)]);
        assert_eq!(plugged.ipv6_addresses, vec!["fd00::2/64".to_string()]);
        assert_eq!(
            plugged.routes,
            vec![
                Route {
                    destination: None,
                    gateway: Some("172.17.0.1".parse().unwrap())
                },
                Route {
                    destination: Some(("10.9.0.0".parse().unwrap(), 24)),
                    gateway: Some("172.17.0.254".parse().unwrap())
                },
            ]
        );
    }

    #[test]
    fn loopback_and_the_tap_alone_are_no_network() {
        let (addrs, _) = docker_bridge();
        let only_lo_and_tap = Value::Array(addrs.as_array().unwrap()[..2].to_vec());
        assert_eq!(choose(&only_lo_and_tap, &json!([])), None);
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
        assert_eq!(choose(&addrs, &routes).unwrap().name, "eth1");
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
        let plugged = plugged(&netns).unwrap().expect("eth0");
        assert_eq!(plugged.addresses, vec![("10.4.0.2".parse().unwrap(), 24)]);
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
