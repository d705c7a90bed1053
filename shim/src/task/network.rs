//! A container's network, from the shim's side: the sandbox's network
//! namespace, held open from Create to Delete, and what is wired in it.
//!
//! Network plugins fill the namespace between Create and Start: Docker's
//! libnetwork through its createRuntime hook, `ctr run --cni` after Create
//! returns (through `/proc/<task pid>/ns/net`), the CRI before either (the
//! pod's namespace, joined by path). So the wiring happens at Start: the
//! interface found there is wired to the VM's tap (see
//! [`hull_sandbox::network`]) and the guest agent gives its settings to
//! the container's interface. Without one the container has loopback only.
//! When Docker's resolv.conf names its embedded DNS (127.0.0.11), the
//! guest's queries are relayed to it (see [`super::dns`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hull_protocol::agent_api::agent::{
    ConfigureNetworkRequest, IpAddress, IpRoute, NetworkInterface,
};
use hull_sandbox::network::{self, Plugged};
use hull_sandbox::vm::RPC_TIMEOUT;

use hull_protocol::agent_api::agent_ttrpc::AgentClient;

use super::agent_err;
use super::dns::DnsRelay;
use crate::error::ShimError;

pub struct SandboxNetwork {
    netns: File,
    /// What Start wired, taken off again at Delete.
    wired: Mutex<Option<Plugged>>,
    /// The container's resolv.conf names Docker's embedded DNS.
    embedded_dns: bool,
    /// The relay to it, while the container lives.
    relay: Mutex<Option<DnsRelay>>,
}

impl SandboxNetwork {
    /// The network namespace of the sandbox process `host_pid` (the
    /// jailer's supervisor lives in it), opened to be held.
    pub fn open_of(host_pid: u32) -> Result<File, ShimError> {
        let path = PathBuf::from(format!("/proc/{host_pid}/ns/net"));
        File::open(&path).map_err(|source| ShimError::Io {
            what: format!("opening the sandbox's network namespace {}", path.display()),
            source,
        })
    }

    /// Holds `netns` while the container lives, whoever made it.
    pub fn new(netns: File, embedded_dns: bool) -> Self {
        SandboxNetwork {
            netns,
            wired: Mutex::new(None),
            embedded_dns,
            relay: Mutex::new(None),
        }
    }

    /// Wires what a plugin put into the namespace and has the agent set up
    /// the container's side (loopback only when there is nothing).
    pub async fn plug(
        &self,
        id: &str,
        agent: &AgentClient,
        vsock_path: &Path,
        state_dir: &Path,
    ) -> Result<(), ShimError> {
        let netns = self.netns.try_clone().map_err(|source| ShimError::Io {
            what: "duplicating the network namespace file".into(),
            source,
        })?;
        let found = tokio::task::spawn_blocking(move || {
            let plugged = network::plugged(&netns)?;
            if let Some(plugged) = &plugged {
                network::wire(&netns, plugged)?;
            }
            Ok::<_, network::NetworkError>(plugged)
        })
        .await
        .map_err(|e| ShimError::Io {
            what: "wiring the network".into(),
            source: std::io::Error::other(e),
        })??;
        match &found {
            Some(plugged) => {
                log::info!(
                    "{id}: {} ({}, {:?}) wired to the VM's tap",
                    plugged.name,
                    plugged.mac,
                    plugged.addresses
                );
                if !plugged.left_out.is_empty() {
                    log::warn!(
                        "{id}: interfaces {:?} are not given to the guest: a sandbox has one \
                         network interface, {}",
                        plugged.left_out,
                        plugged.name
                    );
                }
            }
            None => log::info!("{id}: no network interface in the sandbox: loopback only"),
        }
        *self.wired.lock().expect("network poisoned") = found.clone();
        let forward_dns = self.embedded_dns && found.is_some();
        if forward_dns {
            let io = |what: &str| {
                let what = format!("{what} for Docker's embedded DNS");
                move |source| ShimError::Io { what, source }
            };
            let netns = self
                .netns
                .try_clone()
                .map_err(io("duplicating the namespace"))?;
            let relay = DnsRelay::start(vsock_path, state_dir, netns)
                .map_err(io("listening for the guest's queries"))?;
            *self.relay.lock().expect("network poisoned") = Some(relay);
            log::info!("{id}: the guest's DNS queries relayed to Docker's embedded DNS");
        }
        let request = ConfigureNetworkRequest {
            container_id: id.to_owned(),
            interface: found.as_ref().map(wire_interface).into(),
            forward_dns,
            ..Default::default()
        };
        let ctx = ttrpc::context::with_timeout(RPC_TIMEOUT.as_nanos() as i64);
        agent
            .configure_network(ctx, &request)
            .await
            .map_err(agent_err("ConfigureNetwork"))?;
        Ok(())
    }

    /// Takes the redirect off the plugin's interface: the namespace may
    /// outlive the sandbox (a pod's, Docker's). The tap went with the VMM.
    pub fn unplug(&self, id: &str) {
        self.relay.lock().expect("network poisoned").take();
        let Some(plugged) = self.wired.lock().expect("network poisoned").take() else {
            return;
        };
        if let Err(err) = network::unwire(&self.netns, &plugged) {
            log::warn!(
                "{id}: taking the redirect off {}: {}",
                plugged.name,
                hull_protocol::error_chain(&err)
            );
        }
    }
}

fn wire_interface(plugged: &Plugged) -> NetworkInterface {
    NetworkInterface {
        name: plugged.name.clone(),
        mac: plugged.mac.clone(),
        mtu: plugged.mtu,
        addresses: plugged
            .addresses
            .iter()
            .map(|(addr, len)| IpAddress {
                address: addr.to_string(),
                prefix_length: u32::from(*len),
                ..Default::default()
            })
            .collect(),
        routes: plugged
            .routes
            .iter()
            .map(|route| IpRoute {
                destination: route.destination.0.to_string(),
                prefix_length: u32::from(route.destination.1),
                gateway: route.gateway.map_or(String::new(), |gw| gw.to_string()),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// A process that only sits in the sandbox's network namespace (a new one,
/// or the one at a path) so that hooks, which name a namespace by a pid,
/// can run before the VM exists.
pub struct Placeholder {
    child: std::process::Child,
}

impl Placeholder {
    pub fn start(netns: Option<&Path>) -> Result<Self, ShimError> {
        use std::os::fd::OwnedFd;
        use std::os::unix::process::CommandExt;
        let target: Option<OwnedFd> = match netns {
            Some(path) => Some(
                File::open(path)
                    .map_err(|source| ShimError::Io {
                        what: format!("opening the network namespace {}", path.display()),
                        source,
                    })?
                    .into(),
            ),
            None => None,
        };
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("infinity")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: between fork and exec the closure calls only setns or
        // unshare (see enter_before_exec), which are async-signal-safe.
        unsafe {
            cmd.pre_exec(network::enter_before_exec(target));
        }
        let child = cmd.spawn().map_err(|source| ShimError::Io {
            what: "starting the network namespace's placeholder (sleep)".into(),
            source,
        })?;
        Ok(Placeholder { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its namespace, opened to be held.
    pub fn netns(&self) -> Result<File, ShimError> {
        SandboxNetwork::open_of(self.pid())
    }
}

impl Drop for Placeholder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_sandbox::network::Route;

    #[test]
    fn a_dual_stack_interface_goes_to_the_agent_as_text() {
        let plugged = Plugged {
            name: "eth0".into(),
            mac: "02:42:ac:11:00:02".into(),
            mtu: 1500,
            addresses: vec![
                ("172.17.0.2".parse().unwrap(), 16),
                ("fd00::2".parse().unwrap(), 64),
            ],
            routes: vec![
                Route {
                    destination: ("0.0.0.0".parse().unwrap(), 0),
                    gateway: Some("172.17.0.1".parse().unwrap()),
                },
                Route {
                    destination: ("::".parse().unwrap(), 0),
                    gateway: Some("fd00::1".parse().unwrap()),
                },
                Route {
                    destination: ("fd02::".parse().unwrap(), 64),
                    gateway: None,
                },
            ],
            left_out: Vec::new(),
        };
        let wire = wire_interface(&plugged);
        let addresses: Vec<_> = wire
            .addresses
            .iter()
            .map(|a| format!("{}/{}", a.address, a.prefix_length))
            .collect();
        assert_eq!(addresses, ["172.17.0.2/16", "fd00::2/64"]);
        let routes: Vec<_> = wire
            .routes
            .iter()
            .map(|r| format!("{}/{} via {:?}", r.destination, r.prefix_length, r.gateway))
            .collect();
        assert_eq!(
            routes,
            [
                "0.0.0.0/0 via \"172.17.0.1\"",
                "::/0 via \"fd00::1\"",
                "fd02::/64 via \"\""
            ]
        );
    }
}
