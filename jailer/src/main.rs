//! `hull-jailer`: start `hull-vmm` (or any static or dynamic binary) with
//! as little as possible. Firecracker's jailer is the model; this is its own
//! implementation, and it never links the VMM.
//!
//! ```text
//! hull-jailer --id ID --exec-file /usr/local/bin/hull-vmm --run-dir DIR
//!     [--uid U --gid G] [--ro PATH]... [--rw PATH]... [--socket PATH]...
//!     [--netns PATH] [--tap NAME]
//!     [--memory-bytes N] [--pids-max N] [--cpu-quota-us Q --cpu-period-us P]
//!     -- VMM ARGS...
//! ```
//!
//! Every path keeps its host name inside the jail, so the VMM's arguments
//! need no rewriting: the jail root (a tmpfs, read-only once built) holds
//! `/dev/kvm`, the files given with `--ro`/`--rw` bind-mounted at their own
//! paths, the run directory (sockets, logs) and, for a dynamically linked
//! binary, the system library directories, read-only.
//!
//! Order of events: the host cgroup is made and sized; the process enters
//! the sandbox's network namespace (`--netns`, else a new one), makes the
//! tap there (`--tap`), moves into new mount, PID, IPC and UTS namespaces
//! and forks. The supervisor stays in the sandbox's network namespace, so
//! its pid names that namespace to whoever plugs a network into it (CNI,
//! Docker's libnetwork). The child
//! (PID 1 of the new namespace) joins the cgroup, builds the jail,
//! `pivot_root`s into it, sets rlimits, drops to the unprivileged uid/gid
//! with every capability and the bounding set cleared and `no_new_privs`
//! set, and execs the VMM. The parent stays outside as a supervisor: it
//! forwards SIGTERM/SIGINT, waits, removes the cgroup and the jail
//! directory, and ends the way the VMM ended (same exit code or signal).
//!
//! Must not depend on the VMM, the shim or the agent.

mod jail;
mod network;
mod privileges;
mod supervisor;
mod uid_pool;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use hull_jailer::cgroup;

/// Start hull-vmm in a jail (see the crate documentation).
#[derive(Parser, Debug)]
#[command(version)]
pub struct Args {
    /// The sandbox id: names the cgroup and the default uid.
    #[arg(long)]
    pub id: String,
    /// The binary to run jailed.
    #[arg(long)]
    pub exec_file: PathBuf,
    /// The directory for the VMM's sockets and logs; the jail root is
    /// built in `<run-dir>/jail`. Made owned by the jail's uid.
    #[arg(long)]
    pub run_dir: PathBuf,
    /// The uid the VMM runs as; by default one derived from the id, in a
    /// range no system account uses.
    #[arg(long)]
    pub uid: Option<u32>,
    /// The gid; by default the same number as the uid.
    #[arg(long)]
    pub gid: Option<u32>,
    /// A file bind-mounted read-only at its own path (kernel, initramfs,
    /// read-only disks), or a block device given its own read-only node.
    /// Repeatable.
    #[arg(long = "ro")]
    pub read_only: Vec<PathBuf>,
    /// A file bind-mounted read-write and handed to the jail's uid
    /// (writable disks), or a block device given its own node owned by
    /// the jail's uid (the host's node is left as it is). Repeatable.
    #[arg(long = "rw")]
    pub read_write: Vec<PathBuf>,
    /// A Unix socket the VMM connects to (a vhost-user backend's, such as
    /// virtiofsd's), bind-mounted at its own path and handed to the jail's
    /// uid. Repeatable.
    #[arg(long = "socket")]
    pub sockets: Vec<PathBuf>,
    /// The network namespace the sandbox lives in (a bind-mounted
    /// namespace file, e.g. a CNI or CRI netns); by default a new, empty
    /// one.
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Make a tap device of this name in the sandbox's network namespace
    /// and give the VMM its open file as `--tap-fd N` (the VMM needs no
    /// /dev/net/tun, and the tap goes when the VMM's file closes).
    #[arg(long, value_parser = tap_name)]
    pub tap: Option<String>,
    /// memory limit of the host cgroup (guest RAM plus VMM overhead).
    #[arg(long)]
    pub memory_bytes: Option<u64>,
    /// pids limit of the host cgroup.
    #[arg(long)]
    pub pids_max: Option<u64>,
    #[arg(long, requires = "cpu_period_us")]
    pub cpu_quota_us: Option<u64>,
    #[arg(long, requires = "cpu_quota_us")]
    pub cpu_period_us: Option<u64>,
    /// The host cgroup's parent (relative to each hierarchy's root).
    #[arg(long, default_value = cgroup::DEFAULT_PARENT)]
    pub cgroup_parent: String,
    /// The VMM's arguments.
    #[arg(last = true)]
    pub vmm_args: Vec<String>,
}

/// The first uid of the range default jail uids come from.
pub const DEFAULT_UID_BASE: u32 = 1_000_000_000;
/// How many uids the range holds.
pub const DEFAULT_UID_RANGE: u32 = 1 << 20;

impl Args {
    /// The uid derived from the id: where the search for a free default
    /// uid starts (see [`uid_pool`]).
    pub fn derived_uid(&self) -> u32 {
        DEFAULT_UID_BASE + fnv1a(self.id.as_bytes()) % DEFAULT_UID_RANGE
    }

    /// Leases the sandbox's uid: `--uid` exactly, or the first free one
    /// from the derived uid.
    fn lease_uid(&self) -> Result<uid_pool::UidLease, uid_pool::UidPoolError> {
        let dir = Path::new(uid_pool::LEASE_DIR);
        match self.uid {
            Some(uid) => uid_pool::UidLease::exact(dir, uid),
            None => uid_pool::UidLease::first_free(
                dir,
                self.derived_uid(),
                DEFAULT_UID_BASE,
                DEFAULT_UID_RANGE,
            ),
        }
    }
}

/// A network interface name the kernel takes (1-15 bytes, no `/`, `:`,
/// whitespace or `%`: the jailer names one tap, never a pattern).
fn tap_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"/:%".contains(&b));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "{name:?} is not an interface name (1-15 printable characters, no '/', ':' or '%')"
        ))
    }
}

/// A small stable hash (FNV-1a), so the same id always gets the same uid.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[derive(Debug, thiserror::Error)]
pub enum JailerError {
    #[error("--id {0:?}: use 1-64 characters from [A-Za-z0-9_.-]")]
    BadId(String),
    #[error("--{flag} {path}: {reason}")]
    BadPath {
        flag: &'static str,
        path: PathBuf,
        reason: &'static str,
    },
    #[error("--uid/--gid 0: the VMM must not run as root")]
    RootUid,
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Jail(#[from] jail::JailError),
    #[error(transparent)]
    Supervisor(#[from] supervisor::SupervisorError),
    #[error(transparent)]
    Uid(#[from] uid_pool::UidPoolError),
}

fn validate(args: &Args) -> Result<(), JailerError> {
    let id_ok = !args.id.is_empty()
        && args.id.len() <= 64
        && args
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && args.id != "."
        && args.id != "..";
    if !id_ok {
        return Err(JailerError::BadId(args.id.clone()));
    }
    if args.uid == Some(0) || args.gid == Some(0) {
        return Err(JailerError::RootUid);
    }
    // Disks may be block devices (a snapshotter's volume); everything else
    // the VMM is given is a regular file or, for --run-dir, a directory.
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        File,
        Dir,
        Disk,
        Socket,
    }
    let check = |flag, path: &PathBuf, kind: Kind| {
        let bad = |reason| JailerError::BadPath {
            flag,
            path: path.clone(),
            reason,
        };
        if !path.is_absolute() {
            return Err(bad("not an absolute path"));
        }
        match std::fs::metadata(path) {
            Err(_) => Err(bad("does not exist")),
            Ok(m) if kind == Kind::Dir && !m.is_dir() => Err(bad("is not a directory")),
            Ok(m) if kind == Kind::File && !m.is_file() => Err(bad("is not a regular file")),
            Ok(m) if kind == Kind::Disk && !(m.is_file() || m.file_type().is_block_device()) => {
                Err(bad("is neither a regular file nor a block device"))
            }
            Ok(m) if kind == Kind::Socket && !m.file_type().is_socket() => {
                Err(bad("is not a Unix socket"))
            }
            Ok(_) => Ok(()),
        }
    };
    check("exec-file", &args.exec_file, Kind::File)?;
    check("run-dir", &args.run_dir, Kind::Dir)?;
    for path in &args.read_only {
        check("ro", path, Kind::Disk)?;
    }
    for path in &args.read_write {
        check("rw", path, Kind::Disk)?;
    }
    for path in &args.sockets {
        check("socket", path, Kind::Socket)?;
    }
    if let Some(netns) = &args.netns {
        // A namespace file is a regular file to stat; setns tells it apart.
        check("netns", netns, Kind::File)?;
    }
    Ok(())
}

fn run(args: &Args) -> Result<supervisor::Ended, JailerError> {
    validate(args)?;
    // Held until the VMM has ended: no other live sandbox gets this uid.
    let lease = args.lease_uid()?;
    let (uid, gid) = (lease.uid(), args.gid.unwrap_or(lease.uid()));
    let limits = cgroup::Limits {
        memory_bytes: args.memory_bytes,
        pids_max: args.pids_max,
        cpu: args.cpu_quota_us.zip(args.cpu_period_us),
    };
    let cgroups = cgroup::SandboxCgroup::create(&args.cgroup_parent, &args.id, &limits)?;
    let plan = jail::Plan::from_args(args, uid, gid)?;
    let ended = supervisor::spawn_and_wait(args, &plan, &cgroups);
    cgroups.remove();
    plan.remove();
    Ok(ended?)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(ended) => ended.mirror(),
        Err(err) => {
            eprintln!("hull-jailer: {}", hull_protocol::error_chain(&err));
            // 2, like hull-vmm's bad-config code: nothing was started.
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec![
            "hull-jailer",
            "--id",
            "box-1",
            "--exec-file",
            "/bin/sh",
            "--run-dir",
            "/tmp",
        ];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).expect("arguments parse")
    }

    #[test]
    fn default_uid_is_stable_unprivileged_and_per_id() {
        let a = args(&[]);
        assert_eq!(a.derived_uid(), args(&[]).derived_uid());
        assert!(a.derived_uid() >= DEFAULT_UID_BASE);
        let mut b = args(&[]);
        b.id = "box-2".into();
        assert_ne!(a.derived_uid(), b.derived_uid());
    }

    #[test]
    fn bad_input_names_what_is_wrong() {
        let mut a = args(&[]);
        a.id = "../escape".into();
        assert!(validate(&a).unwrap_err().to_string().contains("--id"));
        let a = args(&["--uid", "0"]);
        assert!(matches!(validate(&a), Err(JailerError::RootUid)));
        let a = args(&["--ro", "relative/vmlinux"]);
        let err = validate(&a).unwrap_err().to_string();
        assert!(
            err.contains("--ro relative/vmlinux") && err.contains("absolute"),
            "{err}"
        );
        let a = args(&["--rw", "/nonexistent/disk.img"]);
        let err = validate(&a).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        let mut a = args(&[]);
        a.run_dir = "/bin/sh".into();
        assert!(validate(&a)
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
    }
}
