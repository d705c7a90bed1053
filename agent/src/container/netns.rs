//! A network namespace made ahead of time for the next container.
//!
//! Creating a network namespace is one of the dearest steps of a
//! container's creation in an emulated guest (about 0.5 s on nested PVM:
//! the kernel registers a loopback device and its sysctl tables), and a
//! container asks for a new one almost always. The agent, as PID 1, makes
//! one before it serves (so it is in a VM template's snapshot, made once
//! for every clone) and gives it to the next container that asks for a new
//! network namespace: libcontainer then joins it (`setns`) instead of
//! creating it. The namespace is new and empty (loopback down, as a fresh
//! one is); nothing else ever joined it. Its bind mount stays until the
//! container is removed (libcontainer validates the spec's namespace path
//! again on every exec), then the namespace goes with the container's
//! processes. A second container in the same guest creates its own as
//! before.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};
use rustix::mount::UnmountFlags;

/// The namespace, bind-mounted on a file so it outlives its maker.
#[derive(Debug)]
pub struct SpareNetns {
    path: PathBuf,
}

/// Makes the spare at `path`: this process enters a new network namespace,
/// pins it on `path` and goes back to its own. The agent is
/// single-threaded, so nothing else runs in the new namespace meanwhile.
pub fn make(path: &Path) -> io::Result<SpareNetns> {
    let own = File::open("/proc/self/ns/net")?;
    File::create(path)?;
    // SAFETY: unshare takes no pointers; it only moves this thread into a
    // new network namespace, which `back` below leaves again.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let err = io::Error::last_os_error();
        let _ = std::fs::remove_file(path);
        return Err(err);
    }
    let pinned = rustix::mount::mount_bind("/proc/self/ns/net", path);
    // SAFETY: setns with a namespace file descriptor this function owns;
    // it takes no pointers.
    let back = unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWNET) };
    if back != 0 {
        // The agent talks over vsock, which no network namespace confines,
        // so it goes on working; say so, loudly.
        log::error!(
            "the agent could not return to its network namespace: {}",
            io::Error::last_os_error()
        );
    }
    match pinned {
        Ok(()) => Ok(SpareNetns {
            path: path.to_owned(),
        }),
        Err(errno) => {
            let _ = std::fs::remove_file(path);
            Err(errno.into())
        }
    }
}

impl SpareNetns {
    /// Gives the namespace to `spec` if it asks for a new network
    /// namespace (one without a path); returns whether it did. The spare
    /// must then live as long as the container: dropping it unmounts it.
    pub fn offer(&self, spec: &mut Spec) -> bool {
        let Some(linux) = spec.linux_mut().as_mut() else {
            return false;
        };
        let Some(namespaces) = linux.namespaces_mut().as_mut() else {
            return false;
        };
        let wanted = namespaces
            .iter_mut()
            .find(|ns| ns.typ() == LinuxNamespaceType::Network && ns.path().is_none());
        match wanted {
            Some(ns) => {
                let mut given = LinuxNamespace::default();
                given.set_typ(LinuxNamespaceType::Network);
                given.set_path(Some(self.path.clone()));
                *ns = given;
                true
            }
            None => false,
        }
    }
}

/// Dropping the spare drops the agent's hold on the namespace.
impl Drop for SpareNetns {
    fn drop(&mut self) {
        if let Err(errno) = rustix::mount::unmount(&self.path, UnmountFlags::DETACH) {
            log::warn!("cannot unmount {}: {errno}", self.path.display());
        }
        if let Err(err) = std::fs::remove_file(&self.path) {
            log::warn!("cannot remove {}: {err}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, SpecBuilder};

    fn spec_with(namespaces: Vec<LinuxNamespace>) -> Spec {
        SpecBuilder::default()
            .linux(
                LinuxBuilder::default()
                    .namespaces(namespaces)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    fn ns(typ: LinuxNamespaceType, path: Option<&str>) -> LinuxNamespace {
        let mut ns = LinuxNamespace::default();
        ns.set_typ(typ);
        ns.set_path(path.map(PathBuf::from));
        ns
    }

    #[test]
    fn only_a_new_network_namespace_is_replaced() {
        let spare = SpareNetns {
            path: "/run/hull/netns-spare".into(),
        };
        let mut spec = spec_with(vec![
            ns(LinuxNamespaceType::Pid, None),
            ns(LinuxNamespaceType::Network, None),
        ]);
        assert!(spare.offer(&mut spec));
        let namespaces = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert_eq!(namespaces[0], ns(LinuxNamespaceType::Pid, None));
        assert_eq!(
            namespaces[1],
            ns(LinuxNamespaceType::Network, Some("/run/hull/netns-spare"))
        );

        let joined = ns(LinuxNamespaceType::Network, Some("/proc/7/ns/net"));
        let mut spec = spec_with(vec![joined.clone()]);
        assert!(!spare.offer(&mut spec), "a namespace to join stays");
        assert_eq!(
            spec.linux()
                .as_ref()
                .unwrap()
                .namespaces()
                .as_ref()
                .unwrap()[0],
            joined
        );
        let mut spec = spec_with(vec![ns(LinuxNamespaceType::Pid, None)]);
        assert!(!spare.offer(&mut spec), "no network namespace asked for");
    }
}
