//! Seccomp filters for `hull-vmm`'s threads, compiled with `seccompiler`
//! from the lists in [`filters`] and installed before the first guest
//! instruction runs: each vCPU thread installs its own filter before its
//! first `KVM_RUN`, and the main thread installs its filter right after it
//! has spawned the vCPU threads (a thread inherits its creator's filter, so
//! the vCPUs must not inherit the main one on top of theirs).
//!
//! Installing a filter also sets `no_new_privs`. A syscall outside the list
//! kills the whole process ([`SeccompMode::Enforce`], the default) or is
//! allowed and logged by the kernel ([`SeccompMode::Log`], for debugging:
//! `dmesg` shows `audit: type=1326 ... syscall=N`).

pub mod filters;

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use filters::Allow;

pub use hull_protocol::vmm_config::SeccompMode;

/// Which thread a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    Main,
    Vcpu,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the {thread:?} thread's seccomp filter")]
    Build {
        thread: ThreadKind,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("a vCPU thread ended before reporting its seccomp filter")]
    ThreadGone,
    #[error("installing the {thread:?} thread's seccomp filter")]
    Install {
        thread: ThreadKind,
        #[source]
        source: seccompiler::Error,
    },
}

/// The compiled filters, built once before any thread needs one.
#[derive(Debug, Clone)]
pub struct Filters {
    main: BpfProgram,
    vcpu: BpfProgram,
}

impl Filters {
    pub fn compile(mode: SeccompMode) -> Result<Self, SeccompError> {
        Ok(Self {
            main: compile(ThreadKind::Main, filters::MAIN, mode)?,
            vcpu: compile(ThreadKind::Vcpu, filters::VCPU, mode)?,
        })
    }

    /// Installs `thread`'s filter on the calling thread, for good.
    pub fn install(&self, thread: ThreadKind) -> Result<(), SeccompError> {
        let program = match thread {
            ThreadKind::Main => &self.main,
            ThreadKind::Vcpu => &self.vcpu,
        };
        seccompiler::apply_filter(program)
            .map_err(|source| SeccompError::Install { thread, source })
    }
}

fn compile(
    thread: ThreadKind,
    list: &[Allow],
    mode: SeccompMode,
) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build { thread, source };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for allow in filters::allowed(list) {
        match allow {
            Allow::Always(nr) => {
                rules.insert(*nr, Vec::new());
            }
            Allow::ArgIn {
                syscall,
                arg,
                values,
            } => {
                for value in *values {
                    let condition = SeccompCondition::new(
                        *arg,
                        SeccompCmpArgLen::Dword,
                        SeccompCmpOp::Eq,
                        *value,
                    )
                    .map_err(build)?;
                    rules
                        .entry(*syscall)
                        .or_default()
                        .push(SeccompRule::new(vec![condition]).map_err(build)?);
                }
            }
        }
    }
    let mismatch = match mode {
        SeccompMode::Enforce => SeccompAction::KillProcess,
        SeccompMode::Log => SeccompAction::Log,
    };
    let filter = SeccompFilter::new(
        rules,
        mismatch,
        SeccompAction::Allow,
        std::env::consts::ARCH.try_into().map_err(build)?,
    )
    .map_err(build)?;
    filter.try_into().map_err(build)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_filters_compile_in_both_modes() {
        for mode in [SeccompMode::Enforce, SeccompMode::Log] {
            let filters = Filters::compile(mode).expect("filters compile");
            assert!(!filters.main.is_empty() && !filters.vcpu.is_empty());
        }
    }

    /// A forked child installs the vCPU filter and calls a syscall outside
    /// it: the kernel kills it with SIGSYS. Needs no KVM.
    #[test]
    fn a_forbidden_syscall_kills_the_process() {
        let filters = Filters::compile(SeccompMode::Enforce).unwrap();
        // SAFETY: the child only calls async-signal-safe functions and
        // syscalls (the filter was compiled before the fork) and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            if filters.install(ThreadKind::Vcpu).is_err() {
                // SAFETY: _exit in the forked child.
                unsafe { libc::_exit(10) };
            }
            // Allowed: the child is still alive after it.
            // SAFETY: getpid has no preconditions.
            unsafe { libc::getpid() };
            // Not allowed for a vCPU thread: a socket of any kind.
            // SAFETY: plain syscall; the result is not used.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            // SAFETY: _exit in the forked child.
            unsafe { libc::_exit(11) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child, status is a valid pointer.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "the child was not killed by SIGSYS: status {status:#x}"
        );
    }
}
