//! The VMM's seccomp allow-lists, one per thread kind: the whole review of
//! what `hull-vmm` may ask of the host kernel once the guest runs is this
//! file. Everything not listed kills the process (or, in `log` mode, is
//! allowed and logged by the kernel, to find a missing entry).
//!
//! Gathered by tracing the integration suites (boot, agent RPCs, block
//! reads/writes/flush, vsock both ways, pause/resume, SIGTERM, guest panic)
//! per thread, then trimmed to what the code needs after set-up: files,
//! sockets, KVM fds and guest memory all exist before the filters go in.
//! The tap of virtio-net too: it is opened and set up (TUNSETIFF,
//! TUNGETIFF, TUNSETVNETHDRSZ, TUNSETOFFLOAD) by the builder, and the
//! event loop then `read`s and `write`s it, one frame per call, and sets
//! its offloads (TUNSETOFFLOAD) when the guest's driver (re)activates it.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irq_level, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_translation, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave, KVMIO,
};

/// One syscall, allowed always or only with these argument values.
pub enum Allow {
    Always(i64),
    /// Allowed when argument `arg` equals one of `values` (e.g. `ioctl`
    /// requests, `socket` families).
    ArgIn {
        syscall: i64,
        arg: u8,
        values: &'static [u64],
    },
}

use Allow::{Always, ArgIn};

// The ioctl request encoding of <asm-generic/ioctl.h>.
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | ((KVMIO as u64) << 8) | nr
}
const fn io(nr: u64) -> u64 {
    ioc(0, nr, 0)
}
const fn iow(nr: u64, size: usize) -> u64 {
    ioc(1, nr, size)
}
const fn ior(nr: u64, size: usize) -> u64 {
    ioc(2, nr, size)
}
const fn iowr(nr: u64, size: usize) -> u64 {
    ioc(3, nr, size)
}

pub const KVM_RUN: u64 = io(0x80);
pub const KVM_IRQ_LINE: u64 = iow(0x61, std::mem::size_of::<kvm_irq_level>());
pub const KVM_GET_REGS: u64 = ior(0x81, std::mem::size_of::<kvm_regs>());
pub const KVM_SET_REGS: u64 = iow(0x82, std::mem::size_of::<kvm_regs>());
pub const KVM_GET_SREGS: u64 = ior(0x83, std::mem::size_of::<kvm_sregs>());
pub const KVM_SET_SREGS: u64 = iow(0x84, std::mem::size_of::<kvm_sregs>());
pub const KVM_TRANSLATE: u64 = iowr(0x85, std::mem::size_of::<kvm_translation>());
pub const KVM_GET_VCPU_EVENTS: u64 = ior(0x9f, std::mem::size_of::<kvm_vcpu_events>());
pub const KVM_SET_VCPU_EVENTS: u64 = iow(0xa0, std::mem::size_of::<kvm_vcpu_events>());
pub const KVM_GET_XSAVE: u64 = ior(0xa4, std::mem::size_of::<kvm_xsave>());
pub const KVM_SET_XSAVE: u64 = iow(0xa5, std::mem::size_of::<kvm_xsave>());
pub const KVM_GET_XCRS: u64 = ior(0xa6, std::mem::size_of::<kvm_xcrs>());
// A snapshot: each vCPU reads the rest of its state on its own thread, the
// event loop thread reads the VM-wide part.
pub const KVM_GET_MP_STATE: u64 = ior(0x98, std::mem::size_of::<kvm_mp_state>());
pub const KVM_GET_DEBUGREGS: u64 = ior(0xa1, std::mem::size_of::<kvm_debugregs>());
pub const KVM_GET_LAPIC: u64 = ior(0x8e, std::mem::size_of::<kvm_lapic_state>());
pub const KVM_GET_MSRS: u64 = iowr(0x88, std::mem::size_of::<kvm_msrs>());
pub const KVM_GET_PIT2: u64 = ior(0x9f, std::mem::size_of::<kvm_pit_state2>());
pub const KVM_GET_CLOCK: u64 = ior(0x7c, std::mem::size_of::<kvm_clock_data>());
pub const KVM_GET_IRQCHIP: u64 = iowr(0x62, std::mem::size_of::<kvm_irqchip>());
/// Non-blocking mode on accepted sockets.
const FIONBIO: u64 = libc::FIONBIO;
/// `_IOW('T', 208, unsigned int)`: the tap's offloads.
const TUNSETOFFLOAD: u64 = libc::TUNSETOFFLOAD;

/// What every thread does: memory, locks, signals, logging, exit.
const COMMON: &[Allow] = &[
    Always(libc::SYS_read),
    Always(libc::SYS_write),
    Always(libc::SYS_writev),
    Always(libc::SYS_close),
    // Rust's std checks fds with F_GETFD before close in debug builds, and
    // sets O_NONBLOCK with F_GETFL/F_SETFL.
    Always(libc::SYS_fcntl),
    Always(libc::SYS_futex),
    Always(libc::SYS_mmap),
    Always(libc::SYS_munmap),
    Always(libc::SYS_mremap),
    Always(libc::SYS_madvise),
    Always(libc::SYS_brk),
    Always(libc::SYS_mprotect),
    Always(libc::SYS_rt_sigreturn),
    Always(libc::SYS_rt_sigprocmask),
    Always(libc::SYS_sigaltstack),
    Always(libc::SYS_clock_gettime),
    Always(libc::SYS_clock_nanosleep),
    Always(libc::SYS_nanosleep),
    Always(libc::SYS_sched_yield),
    Always(libc::SYS_getrandom),
    Always(libc::SYS_gettid),
    Always(libc::SYS_getpid),
    Always(libc::SYS_exit),
    Always(libc::SYS_exit_group),
];

/// The main thread: the event loop (devices, vsock muxer, control socket,
/// signals) and the stop sequence. virtio-net needs `read` and `write` on
/// its tap, `epoll_ctl` to watch it, and TUNSETOFFLOAD to match the tap's
/// offloads to what the guest's driver accepted (it changes only which
/// frames the kernel hands this tap's reader).
pub const MAIN: &[Allow] = &[
    Always(libc::SYS_epoll_wait),
    Always(libc::SYS_epoll_pwait),
    Always(libc::SYS_epoll_ctl),
    Always(libc::SYS_poll),
    Always(libc::SYS_ppoll),
    // vsock: host-initiated connections and the control socket are
    // accepted, guest-initiated ones dial `<uds>_<port>`; Unix sockets only.
    Always(libc::SYS_accept4),
    ArgIn {
        syscall: libc::SYS_socket,
        arg: 0,
        values: &[libc::AF_UNIX as u64],
    },
    Always(libc::SYS_connect),
    Always(libc::SYS_recvfrom),
    Always(libc::SYS_sendto),
    Always(libc::SYS_recvmsg),
    Always(libc::SYS_sendmsg),
    Always(libc::SYS_shutdown),
    // virtio-blk on its backing files.
    Always(libc::SYS_pread64),
    Always(libc::SYS_pwrite64),
    Always(libc::SYS_preadv),
    Always(libc::SYS_pwritev),
    Always(libc::SYS_lseek),
    Always(libc::SYS_fsync),
    Always(libc::SYS_fdatasync),
    // vsock connection timers, eventfds.
    Always(libc::SYS_timerfd_settime),
    Always(libc::SYS_timerfd_gettime),
    // Kicking vCPU threads out of KVM_RUN (pause, stop).
    Always(libc::SYS_tgkill),
    // The control socket's file is removed at exit.
    Always(libc::SYS_unlink),
    // Writing a snapshot into the file opened at start.
    Always(libc::SYS_ftruncate),
    ArgIn {
        syscall: libc::SYS_ioctl,
        arg: 1,
        values: &[
            KVM_IRQ_LINE,
            FIONBIO,
            KVM_GET_PIT2,
            KVM_GET_CLOCK,
            KVM_GET_IRQCHIP,
            TUNSETOFFLOAD,
        ],
    },
];

/// A vCPU thread: KVM_RUN and the exits it handles in place (port and MMIO
/// devices, PVM instruction fix-ups, interrupts raised by a device write).
pub const VCPU: &[Allow] = &[ArgIn {
    syscall: libc::SYS_ioctl,
    arg: 1,
    values: &[
        KVM_RUN,
        KVM_IRQ_LINE,
        KVM_GET_REGS,
        KVM_SET_REGS,
        KVM_GET_SREGS,
        KVM_SET_SREGS,
        KVM_GET_VCPU_EVENTS,
        KVM_SET_VCPU_EVENTS,
        KVM_TRANSLATE,
        // XSAVE/XRSTOR completed for a PVM guest (vstate::xstate).
        KVM_GET_XSAVE,
        KVM_SET_XSAVE,
        KVM_GET_XCRS,
        KVM_GET_MP_STATE,
        KVM_GET_DEBUGREGS,
        KVM_GET_LAPIC,
        KVM_GET_MSRS,
    ],
}];

/// Everything `thread` may call: [`COMMON`] plus its own list.
pub fn allowed(thread: &[Allow]) -> impl Iterator<Item = &Allow> {
    COMMON.iter().chain(thread)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // From <linux/kvm.h> on x86_64.
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_IRQ_LINE, 0x4008_ae61);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_SET_REGS, 0x4090_ae82);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(KVM_SET_SREGS, 0x4138_ae84);
        assert_eq!(KVM_TRANSLATE, 0xc018_ae85);
        assert_eq!(KVM_GET_VCPU_EVENTS, 0x8040_ae9f);
        assert_eq!(KVM_SET_VCPU_EVENTS, 0x4040_aea0);
        assert_eq!(KVM_GET_XSAVE, 0x9000_aea4);
        assert_eq!(KVM_GET_MP_STATE, 0x8004_ae98);
        assert_eq!(KVM_GET_DEBUGREGS, 0x8080_aea1);
        assert_eq!(KVM_GET_LAPIC, 0x8400_ae8e);
        assert_eq!(KVM_GET_MSRS, 0xc008_ae88);
        assert_eq!(KVM_GET_PIT2, 0x8070_ae9f);
        assert_eq!(KVM_GET_CLOCK, 0x8030_ae7c);
        assert_eq!(KVM_GET_IRQCHIP, 0xc208_ae62);
        assert_eq!(KVM_SET_XSAVE, 0x5000_aea5);
        assert_eq!(KVM_GET_XCRS, 0x8188_aea6);
    }

    fn allows(list: &[Allow], nr: i64) -> bool {
        allowed(list).any(|a| matches!(a, Always(n) if *n == nr))
    }

    #[test]
    fn the_net_device_may_only_change_its_taps_offloads() {
        // What the event loop does with the tap.
        for nr in [libc::SYS_read, libc::SYS_write, libc::SYS_epoll_ctl] {
            assert!(allows(MAIN, nr), "syscall {nr}");
        }
        // Vectored I/O on fds is not needed by any device.
        assert!(!allows(MAIN, libc::SYS_readv));
        let tun_ioctls = [
            libc::TUNSETIFF,
            libc::TUNGETIFF,
            libc::TUNSETVNETHDRSZ,
            libc::TUNSETPERSIST,
            libc::TUNSETOWNER,
            libc::TUNSETQUEUE,
            libc::TUNSETIFINDEX,
        ];
        assert!(allowed(MAIN).any(|a| matches!(
            a,
            ArgIn { syscall: libc::SYS_ioctl, values, .. } if values.contains(&TUNSETOFFLOAD)
        )));
        for list in [MAIN, VCPU] {
            for allow in allowed(list) {
                if let ArgIn {
                    syscall: libc::SYS_ioctl,
                    values,
                    ..
                } = allow
                {
                    for tun in tun_ioctls {
                        assert!(!values.contains(&{ tun }), "ioctl {tun:#x}");
                    }
                }
                assert!(!matches!(allow, Always(libc::SYS_ioctl)));
            }
        }
    }

    #[test]
    fn no_thread_may_exec_fork_or_open_files() {
        for list in [MAIN, VCPU] {
            for allow in allowed(list) {
                let nr = match allow {
                    Always(nr) => *nr,
                    ArgIn { syscall, .. } => *syscall,
                };
                for forbidden in [
                    libc::SYS_execve,
                    libc::SYS_execveat,
                    libc::SYS_clone,
                    libc::SYS_clone3,
                    libc::SYS_fork,
                    libc::SYS_vfork,
                    libc::SYS_open,
                    libc::SYS_openat,
                    libc::SYS_ptrace,
                    libc::SYS_mount,
                ] {
                    assert_ne!(nr, forbidden, "syscall {forbidden} must stay forbidden");
                }
            }
        }
    }
}
