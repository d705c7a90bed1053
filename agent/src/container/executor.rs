//! The last step before a container process execs its program: give it the
//! signal state a freshly started process has, then exec as libcontainer
//! does.
//!
//! Signals set to SIG_IGN and the blocked mask survive `execve`, and the
//! agent is a Rust program: the standard library ignores SIGPIPE at start
//! (so that the agent sees EPIPE instead of dying), and libcontainer forks
//! the container's processes from the agent. Without this reset every
//! container process would ignore SIGPIPE: `yes | head -n1` would end with
//! "write error: Broken pipe" and status 1 instead of being killed (141),
//! as it is under runc, whose init resets signals the same way.

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

/// libcontainer's executor, after resetting the signal dispositions and
/// the signal mask the agent passed on.
#[derive(Clone)]
pub struct GuestExecutor {
    inner: DefaultExecutor,
}

impl Default for GuestExecutor {
    fn default() -> Self {
        GuestExecutor {
            inner: DefaultExecutor {},
        }
    }
}

/// Every signal back to its default action (except the two that cannot be
/// changed), and none blocked.
fn reset_signals() -> Result<(), ExecutorError> {
    for signal in 1..libc::SIGRTMAX() {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL takes no handler; a signal number the kernel does
        // not know (glibc's reserved 32 and 33) fails with EINVAL, which is
        // harmless and ignored.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
    // SAFETY: an empty, initialised set; sigprocmask only reads it.
    let result = unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut())
    };
    if result != 0 {
        return Err(ExecutorError::Other(format!(
            "cannot unblock signals: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

impl Executor for GuestExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        reset_signals()?;
        self.inner.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        self.inner.validate(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_process_has_default_sigpipe_and_nothing_blocked() {
        // In a child, so the test process keeps its own signal state.
        // SAFETY: the child only calls async-signal-safe functions and
        // _exit()s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: as above, in the child.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_IGN);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGTERM);
                libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                let ok = reset_signals().is_ok();
                let pipe = libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_DFL;
                let mut now: libc::sigset_t = std::mem::zeroed();
                libc::sigprocmask(libc::SIG_BLOCK, std::ptr::null(), &mut now);
                let blocked = libc::sigismember(&now, libc::SIGTERM) == 1;
                libc::_exit(if ok && pipe && !blocked { 0 } else { 1 });
            }
        }
        let mut status = 0;
        // SAFETY: waiting for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{status:#x}"
        );
    }
}
