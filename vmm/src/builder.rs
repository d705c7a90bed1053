//! Assembling a microVM, top to bottom: KVM, memory, VM, kernel, initramfs,
//! devices, command line, boot structures, vCPUs, start.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::api::{ApiError, ApiServer};
use crate::arch::layout::{self, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};
use crate::arch::{cpuid, mptable, regs};
use crate::config::{Console, VmConfig};
use crate::devices::bus::{Bus, BusError};
use crate::devices::legacy::i8042::I8042;
use crate::devices::legacy::serial::{ConsoleSink, ConsoleTail, SerialConsole};
use crate::devices::legacy::IrqTrigger;
use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};
use crate::logger::ErrorChain;
use crate::machine::{stop_signals, Machine};
use crate::seccomp::{Filters, SeccompError, ThreadKind};
use crate::vstate::kvm::{HostKvm, Kvm, KvmError};
use crate::vstate::memory::{self, GuestMemoryMmap, MemoryError};
use crate::vstate::pvm::PVM_KERNEL_ARGS;
use crate::vstate::vcpu::{
    register_kick_signal, IoHandler, VcpuControl, VcpuError, VcpuRunContext,
};
use crate::vstate::vm::{Vm, VmError};

/// The command line every hull guest gets. `reboot=k`: reboot through the
/// i8042, which the VMM treats as shutdown; `panic=-1`: reboot at once on a
/// panic (the VMM tells the two apart from the console). The rest makes boot
/// cheaper where the guest kernel is slow to run (measured under nested PVM,
/// see guest-kernel/README.md): no page-attribute splitting (`rodata=off`),
/// no initrd freeing, no timer check, a page-granular per-CPU first chunk
/// instead of a 2 MiB one, kvm-clock kept as the clocksource (registering the
/// TSC would switch clocksources through stop_machine), and ramfs instead of
/// tmpfs for the initramfs root.
const BASE_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 rodata=off retain_initrd no_timer_check \
                            percpu_alloc=page clocksource=kvm-clock rootfstype=ramfs";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("cannot open {what} {path}")]
    Open {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the kernel {path} (an uncompressed ELF vmlinux is expected)")]
    Kernel {
        path: std::path::PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("loading the initramfs into guest memory")]
    Initramfs(#[source] vm_memory::GuestMemoryError),
    #[error(transparent)]
    Boot(#[from] regs::BootError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error("the kernel command line is invalid or longer than {CMDLINE_MAX_SIZE} bytes")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("writing the kernel command line to guest memory")]
    CmdlineWrite(#[source] linux_loader::loader::Error),
    #[error("drive {path}")]
    Block {
        path: std::path::PathBuf,
        #[source]
        source: BlockError,
    },
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error("virtio device setup")]
    Virtio(#[source] crate::devices::virtio::VirtioError),
    #[error("too many devices: no IRQ left after {0}")]
    OutOfIrqs(u32),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("creating {what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the event loop")]
    EventLoop(#[source] event_manager::Error),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> BuildError {
    move |source| BuildError::Io { what, source }
}

pub type EventLoop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// A built and started microVM, and the event loop that serves it.
pub struct RunningVm {
    pub machine: Arc<Mutex<Machine>>,
    pub event_loop: EventLoop,
    pub host: HostKvm,
}

/// How the binary runs a VM beyond its config: switches that are not part
/// of the VM.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Test trigger (hidden `--test-forbidden-syscall`): make a forbidden
    /// syscall once the seccomp filters are in.
    pub test_forbidden_syscall: bool,
}

/// Build the VM described by `config` and start its vCPUs. `config` must
/// have passed [`crate::config::validate`] (the binary does that before calling).
pub fn build_and_start(config: &VmConfig, options: RunOptions) -> Result<RunningVm, BuildError> {
    let signals = stop_signals().map_err(io("the signal fd"))?;
    register_kick_signal().map_err(|e| BuildError::Io {
        what: "the vCPU kick signal handler",
        source: e.into(),
    })?;

    // Compiled before anything else, so a bad list fails before any work.
    let filters = Filters::compile(config.seccomp)?;
    let kvm = Kvm::open()?;
    if kvm.host == HostKvm::NestedPvm {
        log::info!("nested PVM detected (kvm_pvm): applying the PVM guest workarounds");
    }
    let mem_size = u64::from(config.memory_mib) << 20;
    let regions: Vec<_> = layout::ram_regions(mem_size)
        .into_iter()
        .map(|(a, s)| (GuestAddress(a), s as usize))
        .collect();
    let mem = memory::create(&regions)?;
    let vm = Vm::new(&kvm, &mem)?;

    let kernel = load_kernel(&mem, config)?;
    let initrd = load_initramfs(&mem, config, mem_size, kernel.end)?;
    let mut cmdline = base_cmdline(config, kvm.host)?;

    let mut event_loop = EventLoop::new().map_err(BuildError::EventLoop)?;
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let console = Arc::new(Mutex::new(ConsoleTail::default()));
    let reset_evt = EventFd::new(EFD_NONBLOCK).map_err(io("the reset eventfd"))?;
    attach_legacy_devices(&vm, &mut pio, config, &console, &reset_evt)?;
    let mut virtio = VirtioSlots {
        vm: &vm,
        mem: &mem,
        mmio: &mut mmio,
        cmdline: &mut cmdline,
        event_loop: &mut event_loop,
        next: 0,
    };
    for drive in &config.drives {
        let block = Block::new(drive).map_err(|source| BuildError::Block {
            path: drive.path.clone(),
            source,
        })?;
        virtio.attach(Arc::new(Mutex::new(block)))?;
    }
    if let Some(vsock) = &config.vsock {
        virtio.attach(Arc::new(Mutex::new(Vsock::new(vsock)?)))?;
    }

    linux_loader::loader::load_cmdline(&mem, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(BuildError::CmdlineWrite)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(BuildError::Cmdline)?
        .as_bytes()
        .len();
    log::debug!(
        "kernel command line: {}",
        cmdline
            .as_cstring()
            .map_err(BuildError::Cmdline)?
            .to_string_lossy()
    );
    mptable::setup(&mem, config.vcpus)?;

    let supported_cpuid = kvm.supported_cpuid()?;
    let mut vcpus = Vec::new();
    for id in 0..config.vcpus {
        let vcpu = vm.create_vcpu(id)?;
        let mut cpuid = supported_cpuid.clone();
        cpuid::apply_template(&mut cpuid, id, config.vcpus);
        vcpu.configure(&cpuid)?;
        vcpus.push(vcpu);
    }
    // PVH when the kernel offers it (the ABI shared with QEMU and Cloud
    // Hypervisor), else the Linux 64-bit boot protocol at the ELF entry.
    let mut sregs = vcpus[0].sregs()?;
    let boot_regs = match kernel.pvh_entry {
        Some(entry) => {
            regs::setup_pvh_info(&mem, initrd)?;
            regs::setup_pvh_mode(&mem, &mut sregs)?;
            regs::pvh_regs(entry)
        }
        None => {
            regs::setup_zero_page(&mem, cmdline_len, initrd)?;
            regs::setup_long_mode(&mem, &mut sregs)?;
            regs::boot_regs(kernel.entry)
        }
    };
    vcpus[0].set_boot_state(&boot_regs, &sregs)?;

    let api = config
        .api_socket
        .as_deref()
        .map(ApiServer::bind)
        .transpose()?;
    let control = Arc::new(VcpuControl::default());
    let vcpu_exit_evt = EventFd::new(EFD_NONBLOCK).map_err(io("the vCPU exit eventfd"))?;
    let mut machine = Machine::new(
        control.clone(),
        console,
        reset_evt,
        vcpu_exit_evt.try_clone().map_err(io("an eventfd clone"))?,
        signals,
        api,
    );
    let pio: Arc<dyn IoHandler> = Arc::new(pio);
    let mmio: Arc<dyn IoHandler> = Arc::new(mmio);
    for vcpu in vcpus {
        let ctx = VcpuRunContext {
            pio: pio.clone(),
            mmio: mmio.clone(),
            mem: mem.clone(),
            control: control.clone(),
            pvm: kvm.host == HostKvm::NestedPvm,
        };
        let exit_evt = vcpu_exit_evt.try_clone().map_err(io("an eventfd clone"))?;
        let filters = filters.clone();
        let (installed_tx, installed) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{}", vcpu.id()))
            .spawn(move || {
                // The filter goes in before the first KVM_RUN.
                let filter = filters.install(ThreadKind::Vcpu);
                let ok = filter.is_ok();
                let _ = installed_tx.send(filter);
                if !ok {
                    return Ok(crate::vstate::vcpu::VcpuStop::Requested);
                }
                let result = vcpu.run(ctx);
                let _ = exit_evt.write(1);
                result
            })
            .map_err(io("a vCPU thread"))?;
        installed.recv().unwrap_or(Err(SeccompError::ThreadGone))?;
        machine.add_vcpu_thread(thread);
    }
    // After the vCPU threads exist: they must not inherit this filter.
    filters.install(ThreadKind::Main)?;
    if options.test_forbidden_syscall {
        forbidden_syscall_for_tests();
    }
    let machine = Arc::new(Mutex::new(machine));
    event_loop.add_subscriber(machine.clone());
    Ok(RunningVm {
        machine,
        event_loop,
        host: kvm.host,
    })
}

/// The test trigger `--test-forbidden-syscall`: once the filters are in,
/// open an Internet socket, which the main thread's list does not allow.
/// With the filter working the kernel kills the VMM here (SIGSYS); if the
/// call returns, the filter is missing and the VMM says so and exits.
fn forbidden_syscall_for_tests() {
    log::warn!("test trigger: calling socket(AF_INET), which seccomp forbids");
    // SAFETY: a plain syscall whose result is only inspected.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    log::error!("socket(AF_INET) returned {fd}: the seccomp filter did not stop it");
    std::process::exit(hull_protocol::vmm_api::exit_code::VMM_ERROR);
}

struct LoadedKernel {
    /// The 64-bit entry (ELF entry point, `startup_64`).
    entry: u64,
    /// The PVH entry, when the kernel has the Xen PVH ELF note.
    pvh_entry: Option<u64>,
    end: u64,
}

fn load_kernel(mem: &GuestMemoryMmap, config: &VmConfig) -> Result<LoadedKernel, BuildError> {
    let path = &config.kernel;
    let mut file = File::open(path).map_err(|source| BuildError::Open {
        what: "kernel",
        path: path.clone(),
        source,
    })?;
    // The Linux 64-bit boot protocol, at the ELF entry point (startup_64).
    // We do not take a PVH entry even when the kernel has one: it starts in
    // 32-bit mode and builds its own page tables, more emulated work here.
    let loaded =
        Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            BuildError::Kernel {
                path: path.clone(),
                source,
            }
        })?;
    let pvh_entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr.0),
        _ => None,
    };
    Ok(LoadedKernel {
        entry: loaded.kernel_load.0,
        pvh_entry,
        end: loaded.kernel_end,
    })
}

fn load_initramfs(
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    mem_size: u64,
    kernel_end: u64,
) -> Result<Option<regs::InitrdPlacement>, BuildError> {
    let Some(path) = &config.initramfs else {
        return Ok(None);
    };
    let data = std::fs::read(path).map_err(|source| BuildError::Open {
        what: "initramfs",
        path: path.clone(),
        source,
    })?;
    let placement = regs::place_initrd(mem_size, kernel_end, data.len() as u64)?;
    mem.write_slice(&data, GuestAddress(placement.addr))
        .map_err(BuildError::Initramfs)?;
    Ok(Some(placement))
}

fn base_cmdline(config: &VmConfig, host: HostKvm) -> Result<Cmdline, BuildError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BuildError::Cmdline)?;
    cmdline
        .insert_str(BASE_CMDLINE)
        .map_err(BuildError::Cmdline)?;
    if !config.verbose_boot {
        cmdline.insert_str("quiet").map_err(BuildError::Cmdline)?;
    }
    if host == HostKvm::NestedPvm {
        for arg in PVM_KERNEL_ARGS {
            cmdline.insert_str(arg).map_err(BuildError::Cmdline)?;
        }
    }
    for arg in &config.kernel_args {
        cmdline.insert_str(arg).map_err(BuildError::Cmdline)?;
    }
    Ok(cmdline)
}

fn attach_legacy_devices(
    vm: &Vm,
    pio: &mut Bus,
    config: &VmConfig,
    console: &Arc<Mutex<ConsoleTail>>,
    reset_evt: &EventFd,
) -> Result<(), BuildError> {
    let out: Option<Box<dyn Write + Send>> = match &config.console {
        Console::Off => None,
        Console::Stdout => Some(Box::new(std::io::stdout())),
        // The guest writes it: readable by the VMM's owner alone.
        Console::File(path) => Some(Box::new(private_file(path).map_err(|source| {
            BuildError::Open {
                what: "console file",
                path: path.clone(),
                source,
            }
        })?)),
    };
    let irq = IrqTrigger(vm.irq_line(layout::SERIAL_IRQ)?);
    let serial = SerialConsole::new(irq, ConsoleSink::new(out, console.clone()));
    pio.insert(
        Arc::new(Mutex::new(serial)),
        u64::from(layout::SERIAL_PORT),
        SerialConsole::PORT_LEN,
    )?;
    let i8042 = I8042::new(reset_evt.try_clone().map_err(io("an eventfd clone"))?);
    pio.insert(
        Arc::new(Mutex::new(i8042)),
        u64::from(layout::I8042_DATA_PORT),
        I8042::PORT_LEN,
    )?;
    Ok(())
}

/// Hands out virtio-mmio windows and IRQs, and declares each device on the
/// kernel command line.
struct VirtioSlots<'a> {
    vm: &'a Vm,
    mem: &'a GuestMemoryMmap,
    mmio: &'a mut Bus,
    cmdline: &'a mut Cmdline,
    event_loop: &'a mut EventLoop,
    next: u32,
}

impl VirtioSlots<'_> {
    fn attach<D: VirtioDevice + MutEventSubscriber + 'static>(
        &mut self,
        device: Arc<Mutex<D>>,
    ) -> Result<(), BuildError> {
        let irq = layout::VIRTIO_IRQ_BASE + self.next;
        if irq > layout::IRQ_MAX {
            return Err(BuildError::OutOfIrqs(self.next));
        }
        let base = layout::VIRTIO_MMIO_START + u64::from(self.next) * layout::VIRTIO_MMIO_SIZE;
        let interrupt = Arc::new(VirtioInterrupt::new(self.vm.irq_line(irq)?));
        let transport = MmioTransport::new(device.clone(), self.mem.clone(), interrupt);
        self.mmio.insert(
            Arc::new(Mutex::new(transport)),
            base,
            layout::VIRTIO_MMIO_SIZE,
        )?;
        self.cmdline
            .add_virtio_mmio_device(layout::VIRTIO_MMIO_SIZE, GuestAddress(base), irq, None)
            .map_err(BuildError::Cmdline)?;
        self.event_loop.add_subscriber(device);
        self.next += 1;
        Ok(())
    }
}

/// Build, start and serve a VM until it ends; returns the exit code.
pub fn run(config: &VmConfig, options: RunOptions) -> i32 {
    let mut vm = match build_and_start(config, options) {
        Ok(vm) => vm,
        Err(e) => {
            log::error!("starting the VM: {}", ErrorChain(&e));
            return hull_protocol::vmm_api::exit_code::VMM_ERROR;
        }
    };
    while vm
        .machine
        .lock()
        .expect("machine poisoned")
        .outcome()
        .is_none()
    {
        if let Err(e) = vm.event_loop.run() {
            log::error!("event loop: {e}");
            break;
        }
    }
    let mut machine = vm.machine.lock().expect("machine poisoned");
    machine.stop_vcpus();
    let outcome = machine
        .outcome()
        .cloned()
        .unwrap_or(crate::machine::Outcome::VmmError(
            "event loop failed".into(),
        ));
    match &outcome {
        crate::machine::Outcome::GuestShutdown | crate::machine::Outcome::Requested => {
            log::info!("VM stopped: {outcome:?}")
        }
        other => {
            log::error!("VM stopped: {other:?}");
            for line in machine.console_tail() {
                log::error!("guest console: {line}");
            }
        }
    }
    outcome.exit_code()
}

/// Creates (or truncates) `path` readable and writable by its owner only.
fn private_file(path: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}
