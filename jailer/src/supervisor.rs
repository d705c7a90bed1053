//! The jailer's two processes. The parent forks the child into a new PID
//! namespace and stays outside as a supervisor: it forwards SIGTERM, SIGINT
//! and SIGHUP to the VMM, waits for it, and reports how it ended. The child
//! joins the cgroup, enters new mount/IPC/UTS namespaces (the network
//! namespace is the supervisor's: see [`crate::network`]), builds the
//! jail, drops privileges and execs the VMM; a set-up failure travels back
//! to the parent through a close-on-exec pipe.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use crate::jail::Plan;
use crate::network;
use crate::{privileges, Args};
use hull_jailer::cgroup::SandboxCgroup;
use hull_protocol::error_chain;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("{what}")]
    Os {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up the jail: {0}")]
    Setup(String),
    #[error(transparent)]
    Network(#[from] network::NetworkError),
}

fn os(what: &'static str) -> SupervisorError {
    SupervisorError::Os {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// How the jailed VMM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Exited(u8),
    Signaled(i32),
}

impl Ended {
    /// End this process the same way, so whoever started the jailer sees
    /// what the VMM did (an exit code, or death by a signal such as SIGSYS).
    pub fn mirror(self) -> ExitCode {
        match self {
            Ended::Exited(code) => ExitCode::from(code),
            Ended::Signaled(signal) => {
                let no_core = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                // SAFETY: resetting a signal to its default action, then
                // raising it on ourselves; plain syscalls with valid values.
                unsafe {
                    libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                    libc::signal(signal, libc::SIG_DFL);
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, signal);
                    libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                    libc::raise(signal);
                }
                ExitCode::from(128 + signal as u8)
            }
        }
    }
}

const FORWARDED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
    }
    set
}

pub fn spawn_and_wait(
    args: &Args,
    plan: &Plan,
    cgroup: &SandboxCgroup,
) -> Result<Ended, SupervisorError> {
    // Decided before forking: everything the child needs, allocated.
    let exec = CString::new(args.exec_file.as_os_str().as_bytes())
        .map_err(|_| SupervisorError::Setup("--exec-file contains a NUL byte".into()))?;
    let mut argv = vec![exec.clone()];
    for arg in &args.vmm_args {
        argv.push(CString::new(arg.as_str()).map_err(|_| {
            SupervisorError::Setup(format!("VMM argument {arg:?} contains a NUL byte"))
        })?);
    }
    // The supervisor itself enters the sandbox's network namespace: its
    // pid is the one the shim reports, through which network plugins find
    // the namespace. The tap's file goes to the VMM only.
    network::enter(args.netns.as_deref())?;
    let tap = args
        .tap
        .as_deref()
        .map(|name| network::make_tap(name, plan.uid()))
        .transpose()?;
    if let Some(tap) = &tap {
        argv.push(c"--tap-fd".into());
        argv.push(CString::new(tap.as_raw_fd().to_string()).expect("digits only"));
    }
    let last_cap = privileges::last_capability();
    let namespaces = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;

    let mut all = FORWARDED.to_vec();
    all.push(libc::SIGCHLD);
    let blocked = signal_set(&all);
    let mut previous = signal_set(&[]);
    // SAFETY: valid sigsets; the process is single-threaded.
    if unsafe { libc::sigprocmask(libc::SIG_BLOCK, &blocked, &mut previous) } != 0 {
        return Err(os("blocking signals"));
    }
    // Set-up errors travel child -> parent; the lifeline's write end stays
    // with the parent only, so the child sees it hang up if the parent dies.
    let (mut report_rx, report_tx) = pipe()?;
    let (lifeline, lifeline_tx) = pipe()?;
    // SAFETY: unshare(CLONE_NEWPID) only affects children created later.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(os("creating the PID namespace"));
    }
    // SAFETY: the jailer is single-threaded, so the child may run any code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os("fork"));
    }
    if pid == 0 {
        drop(report_rx);
        drop(lifeline_tx);
        let setup = ChildSetup {
            namespaces,
            last_cap,
            signals: previous,
            lifeline,
            exec,
            argv,
        };
        let error = child(plan, cgroup, &setup);
        let mut report = report_tx;
        let _ = report.write_all(error.as_bytes());
        // SAFETY: leaving the forked child without running the parent's
        // destructors or atexit handlers.
        unsafe { libc::_exit(2) };
    }
    drop(report_tx);
    drop(lifeline);
    drop(tap);
    let mut setup_error = String::new();
    let _ = report_rx.read_to_string(&mut setup_error);
    let ended = wait_forwarding(pid, &blocked)?;
    drop(lifeline_tx);
    if !setup_error.is_empty() {
        return Err(SupervisorError::Setup(setup_error));
    }
    Ok(ended)
}

/// What the child needs, prepared before the fork.
struct ChildSetup {
    namespaces: libc::c_int,
    last_cap: u32,
    /// The signal mask to exec with.
    signals: libc::sigset_t,
    lifeline: std::fs::File,
    exec: CString,
    argv: Vec<CString>,
}

/// The child: returns only with a description of what failed.
fn child(plan: &Plan, cgroup: &SandboxCgroup, setup: &ChildSetup) -> String {
    let ChildSetup {
        namespaces,
        last_cap,
        signals,
        lifeline,
        exec,
        argv,
    } = setup;
    let (namespaces, last_cap) = (*namespaces, *last_cap);
    if let Err(e) = cgroup.join_self() {
        return error_chain(&e);
    }
    // SAFETY: unshare with namespace flags only.
    if unsafe { libc::unshare(namespaces) } != 0 {
        return format!("unshare: {}", std::io::Error::last_os_error());
    }
    let hostname = b"hull-vmm";
    // SAFETY: a valid buffer and its length.
    unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) };
    if let Err(e) = plan.enter() {
        return error_chain(&e);
    }
    if let Err(e) = privileges::drop_all(plan.uid(), plan.gid(), last_cap) {
        return error_chain(&e);
    }
    // If the supervisor dies (the shim SIGKILLs it), the VMM dies with it.
    // Set after the uid change, which would clear it; kept across exec.
    // SAFETY: prctl with constant arguments.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        return format!("PR_SET_PDEATHSIG: {}", std::io::Error::last_os_error());
    }
    if parent_gone(lifeline) {
        return "the supervisor died during set-up".into();
    }
    // SAFETY: restoring the signal mask the jailer started with.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, signals, std::ptr::null_mut()) };
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let env: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: NUL-terminated path and argument/environment arrays that
    // end in a null pointer and outlive the call.
    unsafe { libc::execve(exec.as_ptr(), argv_ptrs.as_ptr(), env.as_ptr()) };
    format!("exec {:?}: {}", exec, std::io::Error::last_os_error())
}

/// A close-on-exec pipe as (read end, write end).
fn pipe() -> Result<(std::fs::File, std::fs::File), SupervisorError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os("creating a pipe"));
    }
    // SAFETY: both descriptors are new and owned by nothing else.
    Ok(unsafe {
        (
            std::fs::File::from(OwnedFd::from_raw_fd(fds[0])),
            std::fs::File::from(OwnedFd::from_raw_fd(fds[1])),
        )
    })
}

/// Whether the lifeline's write end (held only by the parent) is closed:
/// the parent died before PR_SET_PDEATHSIG was in place.
fn parent_gone(lifeline: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    let mut poll = libc::pollfd {
        fd: lifeline.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready > 0 && poll.revents & libc::POLLHUP != 0
}

/// Waits for `pid`, forwarding the stop signals to it.
fn wait_forwarding(pid: libc::pid_t, blocked: &libc::sigset_t) -> Result<Ended, SupervisorError> {
    loop {
        let mut status = 0;
        // SAFETY: waiting for our own child with a valid status pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if waited == pid {
            if libc::WIFEXITED(status) {
                return Ok(Ended::Exited(libc::WEXITSTATUS(status) as u8));
            }
            if libc::WIFSIGNALED(status) {
                return Ok(Ended::Signaled(libc::WTERMSIG(status)));
            }
        } else if waited < 0 {
            return Err(os("waitpid"));
        }
        // SAFETY: siginfo_t is plain data written by sigwaitinfo.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: a valid set of blocked signals and an out pointer.
        let signal = unsafe { libc::sigwaitinfo(blocked, &mut info) };
        if FORWARDED.contains(&signal) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, signal) };
        }
    }
}
