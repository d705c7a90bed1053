//! What the agent does first as PID 1: the kernel filesystems, the
//! hostname, and stdio on the console.
//!
//! Each step is one or two syscalls (~150 µs each in the guest) and none is
//! fatal: a failure is returned for the caller to log, and the agent goes on
//! to serve its API, which is how the host learns what went wrong.
//! The syscalls sit behind [`InitSyscalls`] so the sequence is tested
//! without root; [`Kernel`] is the real thing.

use std::ffi::CStr;
use std::io;

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::MountFlags;
use thiserror::Error;

/// One filesystem the guest needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MountFlags,
    pub data: &'static CStr,
    /// The mount point lives on a filesystem mounted just before (devtmpfs)
    /// rather than in the initramfs, so it is created first.
    pub create_target: bool,
}

const NOSUID_NODEV_NOEXEC: MountFlags = MountFlags::NOSUID
    .union(MountFlags::NODEV)
    .union(MountFlags::NOEXEC);

/// The guest's filesystems, in mount order. `/dev`, `/proc`, `/sys` and
/// `/run` are directories of the initramfs; `/dev/pts` and `/dev/shm` are
/// made on the devtmpfs. cgroup2 may be missing (no kernel support, no
/// `/sys/fs/cgroup`): that is reported, and cgroup v1 is not mounted yet.
pub const MOUNTS: &[MountSpec] = &[
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MountFlags::NOSUID,
        data: c"mode=0755",
        create_target: false,
    },
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: c"",
        create_target: false,
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: c"",
        create_target: false,
    },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MountFlags::NOSUID.union(MountFlags::NOEXEC),
        data: c"newinstance,ptmxmode=0666,mode=0620,gid=5",
        create_target: true,
    },
    MountSpec {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MountFlags::NOSUID.union(MountFlags::NODEV),
        data: c"mode=1777",
        create_target: true,
    },
    MountSpec {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MountFlags::NOSUID.union(MountFlags::NODEV),
        data: c"mode=0755",
        create_target: false,
    },
    MountSpec {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: c"",
        create_target: false,
    },
];

/// The syscalls init set-up makes.
pub trait InitSyscalls {
    fn mount(&self, spec: &MountSpec) -> Result<(), Errno>;
    fn mkdir(&self, path: &str) -> Result<(), Errno>;
    fn sethostname(&self, name: &str) -> Result<(), Errno>;
}

/// The running kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct Kernel;

impl InitSyscalls for Kernel {
    fn mount(&self, spec: &MountSpec) -> Result<(), Errno> {
        let data = if spec.data.is_empty() {
            None
        } else {
            Some(spec.data)
        };
        rustix::mount::mount(spec.source, spec.target, spec.fstype, spec.flags, data)
    }

    fn mkdir(&self, path: &str) -> Result<(), Errno> {
        rustix::fs::mkdir(path, Mode::from_raw_mode(0o755))
    }

    fn sethostname(&self, name: &str) -> Result<(), Errno> {
        rustix::system::sethostname(name.as_bytes())
    }
}

/// A step of the set-up that failed; the agent logs it and goes on.
#[derive(Debug, Error)]
pub enum InitError {
    #[error("cannot create mount point {path}")]
    MountPoint {
        path: &'static str,
        #[source]
        errno: Errno,
    },
    #[error("cannot mount {fstype} on {target}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        #[source]
        errno: Errno,
    },
    #[error("cannot set the hostname to {hostname:?}")]
    Hostname {
        hostname: String,
        #[source]
        errno: Errno,
    },
    #[error("cannot put stdio on /dev/console")]
    Console(#[source] io::Error),
}

/// What [`setup`] did.
#[derive(Debug, Default)]
pub struct InitReport {
    /// Mount points now mounted (including ones found already mounted).
    pub mounted: Vec<&'static str>,
    pub errors: Vec<InitError>,
}

/// Mounts [`MOUNTS`] in order and sets the hostname.
pub fn setup(sys: &impl InitSyscalls, hostname: &str) -> InitReport {
    let mut report = InitReport::default();
    for spec in MOUNTS {
        if spec.create_target {
            match sys.mkdir(spec.target) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(errno) => {
                    report.errors.push(InitError::MountPoint {
                        path: spec.target,
                        errno,
                    });
                    continue;
                }
            }
        }
        match sys.mount(spec) {
            // EBUSY: already mounted there (e.g. by the kernel); keep it.
            Ok(()) | Err(Errno::BUSY) => report.mounted.push(spec.target),
            Err(errno) => report.errors.push(InitError::Mount {
                fstype: spec.fstype,
                target: spec.target,
                errno,
            }),
        }
    }
    if let Err(errno) = sys.sethostname(hostname) {
        report.errors.push(InitError::Hostname {
            hostname: hostname.to_owned(),
            errno,
        });
    }
    report
}

/// Puts stdin, stdout and stderr on `/dev/console` if the kernel could not.
///
/// The kernel opens `/dev/console` (from the initramfs) for init; when that
/// fails, Rust's runtime has put `/dev/null` (1,3) there instead, which
/// would lose the console. Costs one `fstat` when all is well. Returns
/// whether stdio was moved.
pub fn ensure_console_stdio() -> Result<bool, InitError> {
    let on_null = match rustix::fs::fstat(io::stdout()) {
        Ok(stat) => {
            FileType::from_raw_mode(stat.st_mode) == FileType::CharacterDevice
                && rustix::fs::major(stat.st_rdev) == 1
                && rustix::fs::minor(stat.st_rdev) == 3
        }
        Err(_) => true,
    };
    if !on_null {
        return Ok(false);
    }
    let console = rustix::fs::open(
        "/dev/console",
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| InitError::Console(errno.into()))?;
    let dup = |result: Result<(), Errno>| result.map_err(|errno| InitError::Console(errno.into()));
    dup(rustix::stdio::dup2_stdin(&console))?;
    dup(rustix::stdio::dup2_stdout(&console))?;
    dup(rustix::stdio::dup2_stderr(&console))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::*;

    /// Records the calls and fails the ones it is told to.
    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<String>>,
        failures: HashMap<String, Errno>,
    }

    impl Recorder {
        fn failing(failures: &[(&str, Errno)]) -> Self {
            Recorder {
                calls: RefCell::default(),
                failures: failures
                    .iter()
                    .map(|(call, errno)| (call.to_string(), *errno))
                    .collect(),
            }
        }

        fn call(&self, call: String) -> Result<(), Errno> {
            let result = self.failures.get(&call).map_or(Ok(()), |errno| Err(*errno));
            self.calls.borrow_mut().push(call);
            result
        }
    }

    impl InitSyscalls for Recorder {
        fn mount(&self, spec: &MountSpec) -> Result<(), Errno> {
            self.call(format!("mount {} {}", spec.fstype, spec.target))
        }
        fn mkdir(&self, path: &str) -> Result<(), Errno> {
            self.call(format!("mkdir {path}"))
        }
        fn sethostname(&self, name: &str) -> Result<(), Errno> {
            self.call(format!("sethostname {name}"))
        }
    }

    #[test]
    fn mounts_in_order_then_sets_the_hostname() {
        let sys = Recorder::default();
        let report = setup(&sys, "box");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(
            *sys.calls.borrow(),
            [
                "mount devtmpfs /dev",
                "mount proc /proc",
                "mount sysfs /sys",
                "mkdir /dev/pts",
                "mount devpts /dev/pts",
                "mkdir /dev/shm",
                "mount tmpfs /dev/shm",
                "mount tmpfs /run",
                "mount cgroup2 /sys/fs/cgroup",
                "sethostname box",
            ]
        );
        assert_eq!(report.mounted.len(), MOUNTS.len());
    }

    #[test]
    fn existing_mount_points_and_mounts_are_fine() {
        let sys = Recorder::failing(&[
            ("mkdir /dev/pts", Errno::EXIST),
            ("mount devtmpfs /dev", Errno::BUSY),
        ]);
        let report = setup(&sys, "box");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.mounted.len(), MOUNTS.len());
    }

    #[test]
    fn failures_are_reported_and_the_rest_goes_on() {
        let sys = Recorder::failing(&[
            ("mount cgroup2 /sys/fs/cgroup", Errno::NODEV),
            ("mkdir /dev/shm", Errno::ROFS),
            ("sethostname box", Errno::PERM),
        ]);
        let report = setup(&sys, "box");
        let calls = sys.calls.borrow();
        assert!(
            !calls.contains(&"mount tmpfs /dev/shm".to_string()),
            "{calls:?}"
        );
        assert!(calls.contains(&"mount tmpfs /run".to_string()), "{calls:?}");
        assert_eq!(report.mounted.len(), MOUNTS.len() - 2);
        let errors: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                "cannot create mount point /dev/shm",
                "cannot mount cgroup2 on /sys/fs/cgroup",
                "cannot set the hostname to \"box\"",
            ]
        );
        assert!(matches!(
            report.errors[1],
            InitError::Mount {
                errno: Errno::NODEV,
                ..
            }
        ));
    }

    #[test]
    fn devpts_gets_a_private_instance_with_an_open_ptmx() {
        let devpts = MOUNTS.iter().find(|spec| spec.fstype == "devpts").unwrap();
        let data = devpts.data.to_str().unwrap();
        assert!(data.contains("newinstance") && data.contains("ptmxmode=0666"));
    }
}
