//! Dropping everything before exec: rlimits, the capability bounding and
//! ambient sets, supplementary groups, root (to the jail's uid/gid, which
//! clears the permitted and effective sets), the inheritable set, and
//! `no_new_privs`. Runs in the child after `pivot_root`.

#[derive(Debug, thiserror::Error)]
#[error("{step}")]
pub struct PrivilegeError {
    step: &'static str,
    #[source]
    source: std::io::Error,
}

fn check(step: &'static str, rc: libc::c_long) -> Result<(), PrivilegeError> {
    if rc < 0 {
        Err(PrivilegeError {
            step,
            source: std::io::Error::last_os_error(),
        })
    } else {
        Ok(())
    }
}

/// File descriptors the VMM may hold: its sockets, vsock connections,
/// eventfds, disks; far below what a runaway leak would reach.
pub const NOFILE: u64 = 4096;

/// Processes and threads of the jail's uid (its own, see `uid_pool`): the
/// VMM's main thread, one per vCPU and a few helpers. An escaped guest
/// cannot fork-bomb the host from the VMM.
pub const NPROC: u64 = 64;

/// The highest capability number the running kernel knows; read before
/// `pivot_root`, while /proc is still there.
pub fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

pub fn drop_all(uid: u32, gid: u32, last_cap: u32) -> Result<(), PrivilegeError> {
    for (resource, limit) in [
        (libc::RLIMIT_NOFILE, NOFILE),
        (libc::RLIMIT_CORE, 0),
        (libc::RLIMIT_NPROC, NPROC),
    ] {
        let limit = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: setrlimit with a valid, initialised rlimit.
        let rc = unsafe { libc::setrlimit(resource, &limit) };
        check("setrlimit", rc.into())?;
    }
    for cap in 0..=last_cap {
        // SAFETY: prctl(PR_CAPBSET_DROP) takes a capability number.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        check("dropping the capability bounding set", rc.into())?;
    }
    let clear_all = libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong;
    // SAFETY: prctl with constant arguments.
    let rc = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, clear_all, 0, 0, 0) };
    check("clearing the ambient capabilities", rc.into())?;
    // SAFETY: an empty group list; the pointer is not read for size 0.
    let rc = unsafe { libc::setgroups(0, std::ptr::null()) };
    check("setgroups", rc.into())?;
    // SAFETY: plain id-setting syscalls (the process is single-threaded).
    let rc = unsafe { libc::setresgid(gid, gid, gid) };
    check("setresgid", rc.into())?;
    // SAFETY: as above; without PR_SET_KEEPCAPS this clears the permitted
    // and effective capability sets.
    let rc = unsafe { libc::setresuid(uid, uid, uid) };
    check("setresuid", rc.into())?;
    clear_inheritable()?;
    // SAFETY: prctl with constant arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check("setting no_new_privs", rc.into())
}

/// capset(2) with every set empty (version 3: two 32-bit words per set).
fn clear_inheritable() -> Result<(), PrivilegeError> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: a valid version-3 header and two data words, as capset wants.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    check("clearing the capability sets", rc)
}
