//! Assembling a microVM. [`build_and_start`] is the recipe and reads top to
//! bottom: the process, KVM, the VM and its memory, kernel and initramfs,
//! devices, vCPUs, boot structures, start; each step is a function below it.
//! [`RunningVm::serve`] then runs the VM to its end.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::{mpsc, Arc, Mutex};

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
use crate::devices::virtio::fs::{Backend, Fs, FsError};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::{self, tap, Net, NetConfig, NetError, TapError};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};
use crate::machine::{stop_signals, Machine, Outcome, VcpuThread};
use crate::seccomp::{Filters, SeccompError, ThreadKind};
use crate::snapshot::saver::Slot;
use crate::snapshot::Snapshot;
use crate::vstate::kvm::{HostKvm, Kvm, KvmError};
use crate::vstate::memory::{self, GuestMemoryMmap, MemoryError};
use crate::vstate::pvm::PVM_KERNEL_ARGS;
use crate::vstate::vcpu::{
    register_kick_signal, IoHandler, Vcpu, VcpuControl, VcpuError, VcpuRunContext, VcpuStop,
};
use crate::vstate::vm::{Vm, VmError};

mod restore;

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
    #[error("the network device's tap")]
    Tap(#[source] TapError),
    #[error("the network device")]
    Net(#[source] NetError),
    #[error("the shared-directory device (virtio-fs)")]
    Fs(#[source] FsError),
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
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> BuildError {
    move |source| BuildError::Io { what, source }
}

pub type EventLoop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Build the VM described by `config` and start its vCPUs. `config` must
/// have passed [`crate::config::validate`] (the binary does that before
/// calling). On return every thread of the VMM runs under its seccomp
/// filter, the calling one included.
pub fn build_and_start(config: &VmConfig) -> Result<RunningVm, BuildError> {
    let process = prepare_process(config)?;
    let kvm = open_kvm()?;
    let snapshot = restore::open_snapshot(config)?;
    let (mem, vm) = create_vm(&kvm, config, snapshot.as_ref())?;
    let mut cmdline = base_cmdline(config, kvm.host)?;
    let guest = match snapshot {
        None => Some(load_guest(&mem, config)?),
        Some(_) => None,
    };
    let devices = attach_devices(&vm, &mem, config, &mut cmdline)?;
    let vcpus = create_vcpus(&kvm, &vm, config.vcpus)?;
    match (&guest, &snapshot) {
        (Some((kernel, initrd)), _) => {
            configure_boot(&mem, &vcpus[0], kernel, *initrd, &cmdline, config.vcpus)?
        }
        (None, Some(snapshot)) => restore::restore_state(snapshot, &vm, &vcpus, &devices)?,
        (None, None) => unreachable!("a VM either boots or restores"),
    }
    let saver = restore::saver(config, &vm, &mem, &devices)?;
    let api = config
        .api_socket
        .as_deref()
        .map(ApiServer::bind)
        .transpose()?;
    let msrs_to_save = kvm.msrs_to_save()?;
    let shared = VcpuShared::new(devices.pio, devices.mmio, mem, kvm.host, msrs_to_save)?;
    let mut machine = Machine::new(
        shared.control.clone(),
        devices.console,
        devices.reset_evt,
        shared.exit_evt()?,
        process.signals,
        api,
    );
    machine.set_saver(saver);
    start_vcpus(vcpus, &shared, &process.filters, &mut machine)?;
    // After the vCPU threads exist: they must not inherit this filter.
    process.filters.install(ThreadKind::Main)?;
    Ok(RunningVm::new(devices.event_loop, machine))
}

/// What the process needs before any VM work.
struct Process {
    /// SIGTERM and SIGINT, for the event loop.
    signals: OwnedFd,
    filters: Filters,
}

/// Route the stop signals to a signalfd, install the vCPU kick handler, and
/// compile the seccomp filters: before any KVM work, so a bad list fails
/// before anything was done.
fn prepare_process(config: &VmConfig) -> Result<Process, BuildError> {
    let signals = stop_signals().map_err(io("the signal fd"))?;
    register_kick_signal().map_err(|e| BuildError::Io {
        what: "the vCPU kick signal handler",
        source: e.into(),
    })?;
    let filters = Filters::compile(config.seccomp)?;
    Ok(Process { signals, filters })
}

fn open_kvm() -> Result<Kvm, BuildError> {
    let kvm = Kvm::open()?;
    if kvm.host == HostKvm::NestedPvm {
        log::info!("nested PVM detected (kvm_pvm): applying the PVM guest workarounds");
    }
    Ok(kvm)
}

fn guest_mem_size(config: &VmConfig) -> u64 {
    u64::from(config.memory_mib) << 20
}

/// Guest memory, and the VM with that memory registered, its in-kernel
/// interrupt controllers and timer.
/// Guest memory comes from the snapshot file when the VM is restored.
fn create_vm(
    kvm: &Kvm,
    config: &VmConfig,
    snapshot: Option<&Snapshot>,
) -> Result<(GuestMemoryMmap, Arc<Vm>), BuildError> {
    let regions: Vec<_> = layout::ram_regions(guest_mem_size(config))
        .into_iter()
        .map(|(a, s)| (GuestAddress(a), s as usize))
        .collect();
    let mem = match snapshot {
        None => memory::create(&regions)?,
        Some(s) => memory::from_file(&regions, &s.file, s.header.memory_offset)?,
    };
    let vm = Vm::new(kvm, &mem)?;
    Ok((mem, Arc::new(vm)))
}

/// The kernel and the initramfs in guest memory, for a VM that boots.
fn load_guest(
    mem: &GuestMemoryMmap,
    config: &VmConfig,
) -> Result<(LoadedKernel, Option<regs::InitrdPlacement>), BuildError> {
    let kernel = load_kernel(mem, config)?;
    let initrd = load_initramfs(mem, config, kernel.end)?;
    Ok((kernel, initrd))
}

/// The vCPUs, each with the CPUID template and boot MSRs; none runs yet.
fn create_vcpus(kvm: &Kvm, vm: &Vm, count: u8) -> Result<Vec<Vcpu>, BuildError> {
    let supported_cpuid = kvm.supported_cpuid()?;
    (0..count)
        .map(|id| {
            let vcpu = vm.create_vcpu(id)?;
            let mut cpuid = supported_cpuid.clone();
            cpuid::apply_template(&mut cpuid, id, count);
            vcpu.configure(&cpuid)?;
            Ok(vcpu)
        })
        .collect()
}

/// Guest memory and the boot vCPU as the kernel expects them at its entry:
/// the command line and the MP table, then PVH when the kernel offers it
/// (the ABI shared with QEMU and Cloud Hypervisor), else the Linux 64-bit
/// boot protocol at the ELF entry, each with its boot structures, segments
/// and registers.
fn configure_boot(
    mem: &GuestMemoryMmap,
    boot_vcpu: &Vcpu,
    kernel: &LoadedKernel,
    initrd: Option<regs::InitrdPlacement>,
    cmdline: &Cmdline,
    vcpus: u8,
) -> Result<(), BuildError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(BuildError::CmdlineWrite)?;
    let cmdline = cmdline.as_cstring().map_err(BuildError::Cmdline)?;
    log::debug!("kernel command line: {}", cmdline.to_string_lossy());
    mptable::setup(mem, vcpus)?;
    let mut sregs = boot_vcpu.sregs()?;
    let boot_regs = match kernel.pvh_entry {
        Some(entry) => {
            regs::setup_pvh_info(mem, initrd)?;
            regs::setup_pvh_mode(mem, &mut sregs)?;
            regs::pvh_regs(entry)
        }
        None => {
            regs::setup_zero_page(mem, cmdline.as_bytes().len(), initrd)?;
            regs::setup_long_mode(mem, &mut sregs)?;
            regs::boot_regs(kernel.entry)
        }
    };
    boot_vcpu.set_boot_state(&boot_regs, &sregs)?;
    Ok(())
}

/// What every vCPU thread shares: the buses its exits go to, guest memory,
/// the control the machine steers it with, and the eventfd it writes when
/// it ends.
struct VcpuShared {
    pio: Arc<dyn IoHandler>,
    mmio: Arc<dyn IoHandler>,
    mem: GuestMemoryMmap,
    control: Arc<VcpuControl>,
    exit_evt: EventFd,
    pvm: bool,
    msrs_to_save: Arc<Vec<u32>>,
}

impl VcpuShared {
    fn new(
        pio: Bus,
        mmio: Bus,
        mem: GuestMemoryMmap,
        host: HostKvm,
        msrs_to_save: Vec<u32>,
    ) -> Result<Self, BuildError> {
        Ok(Self {
            msrs_to_save: Arc::new(msrs_to_save),
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            mem,
            control: Arc::new(VcpuControl::default()),
            exit_evt: EventFd::new(EFD_NONBLOCK).map_err(io("the vCPU exit eventfd"))?,
            pvm: host == HostKvm::NestedPvm,
        })
    }

    fn context(&self) -> VcpuRunContext {
        VcpuRunContext {
            pio: self.pio.clone(),
            mmio: self.mmio.clone(),
            mem: self.mem.clone(),
            control: self.control.clone(),
            pvm: self.pvm,
            msrs_to_save: self.msrs_to_save.clone(),
        }
    }

    fn exit_evt(&self) -> Result<EventFd, BuildError> {
        self.exit_evt.try_clone().map_err(io("an eventfd clone"))
    }
}

/// Start each vCPU on a thread of its own and hand the threads to the
/// machine; returns once every vCPU filter is in.
fn start_vcpus(
    vcpus: Vec<Vcpu>,
    shared: &VcpuShared,
    filters: &Filters,
    machine: &mut Machine,
) -> Result<(), BuildError> {
    for vcpu in vcpus {
        machine.add_vcpu_thread(spawn_vcpu(vcpu, shared, filters)?);
    }
    Ok(())
}

/// A vCPU thread that installs the vCPU seccomp filter before its first
/// KVM_RUN; returns once it reported the filter in.
fn spawn_vcpu(
    vcpu: Vcpu,
    shared: &VcpuShared,
    filters: &Filters,
) -> Result<VcpuThread, BuildError> {
    let ctx = shared.context();
    let exit_evt = shared.exit_evt()?;
    let filters = filters.clone();
    let (installed_tx, installed) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("vcpu{}", vcpu.id()))
        .spawn(move || {
            let filter = filters.install(ThreadKind::Vcpu);
            let ok = filter.is_ok();
            let _ = installed_tx.send(filter);
            if !ok {
                return Ok(VcpuStop::Requested);
            }
            let result = vcpu.run(ctx);
            let _ = exit_evt.write(1);
            result
        })
        .map_err(io("a vCPU thread"))?;
    installed.recv().unwrap_or(Err(SeccompError::ThreadGone))?;
    Ok(thread)
}

/// A built and started microVM, and the event loop that serves it.
pub struct RunningVm {
    machine: Arc<Mutex<Machine>>,
    event_loop: EventLoop,
}

impl RunningVm {
    fn new(mut event_loop: EventLoop, machine: Machine) -> Self {
        let machine = Arc::new(Mutex::new(machine));
        event_loop.add_subscriber(machine.clone());
        Self {
            machine,
            event_loop,
        }
    }

    /// Serve the VM until it ends (the guest stops, a signal or the control
    /// socket asks); returns the exit code that says how.
    pub fn serve(mut self) -> i32 {
        while self
            .machine
            .lock()
            .expect("machine poisoned")
            .outcome()
            .is_none()
        {
            if let Err(e) = self.event_loop.run() {
                log::error!("event loop: {e}");
                break;
            }
        }
        let mut machine = self.machine.lock().expect("machine poisoned");
        machine.stop_vcpus();
        let outcome = machine
            .outcome()
            .cloned()
            .unwrap_or(Outcome::VmmError("event loop failed".into()));
        match &outcome {
            Outcome::GuestShutdown | Outcome::Requested => log::info!("VM stopped: {outcome:?}"),
            other => {
                log::error!("VM stopped: {other:?}");
                for line in machine.console_tail() {
                    log::error!("guest console: {line}");
                }
            }
        }
        outcome.exit_code()
    }
}

struct LoadedKernel {
    /// The 64-bit entry (ELF entry point, `startup_64`).
    entry: u64,
    /// The PVH entry, when the kernel has the Xen PVH ELF note.
    pvh_entry: Option<u64>,
    end: u64,
}

/// The kernel's ELF image, at [`HIMEM_START`].
fn load_kernel(mem: &GuestMemoryMmap, config: &VmConfig) -> Result<LoadedKernel, BuildError> {
    let path = &config.kernel;
    let mut file = File::open(path).map_err(|source| BuildError::Open {
        what: "kernel",
        path: path.clone(),
        source,
    })?;
    // The ELF entry point is startup_64 (the Linux 64-bit boot protocol);
    // the Xen PVH note, when the kernel has one, gives the PVH entry.
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

/// The initramfs, when there is one, above the kernel.
fn load_initramfs(
    mem: &GuestMemoryMmap,
    config: &VmConfig,
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
    let placement = regs::place_initrd(guest_mem_size(config), kernel_end, data.len() as u64)?;
    mem.write_slice(&data, GuestAddress(placement.addr))
        .map_err(BuildError::Initramfs)?;
    Ok(Some(placement))
}

/// The kernel command line before the virtio devices add themselves.
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

/// The devices, attached to the VM and declared on the kernel command line.
struct Devices {
    /// Port I/O: the serial console and the i8042.
    pio: Bus,
    /// The virtio-mmio windows.
    mmio: Bus,
    /// Serves the virtio devices; the machine joins it once the vCPUs run.
    event_loop: EventLoop,
    /// The guest's last console lines.
    console: Arc<Mutex<ConsoleTail>>,
    /// Written by the i8042 when the guest resets.
    reset_evt: EventFd,
    /// For snapshots: the serial console and the virtio slots.
    serial: Arc<Mutex<SerialConsole>>,
    slots: Vec<Slot>,
}

/// The serial console and the i8042 on port I/O, then the virtio devices
/// of `config` (drives, then vsock, net, fs) on MMIO, each subscribed to
/// the event loop and added to `cmdline`.
fn attach_devices(
    vm: &Vm,
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    cmdline: &mut Cmdline,
) -> Result<Devices, BuildError> {
    let mut event_loop = EventLoop::new().map_err(BuildError::EventLoop)?;
    let console = Arc::new(Mutex::new(ConsoleTail::default()));
    let reset_evt = EventFd::new(EFD_NONBLOCK).map_err(io("the reset eventfd"))?;
    let (pio, serial) = legacy_devices(vm, config, &console, &reset_evt)?;
    let mut mmio = Bus::new();
    let mut virtio = VirtioSlots {
        vm,
        mem,
        mmio: &mut mmio,
        cmdline,
        event_loop: &mut event_loop,
        next: 0,
        slots: Vec::new(),
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
    if let Some(net) = &config.net {
        virtio.attach(Arc::new(Mutex::new(net_device(net)?)))?;
    }
    for fs in &config.fs {
        virtio.attach(Arc::new(Mutex::new(fs_device(fs)?)))?;
    }
    let slots = std::mem::take(&mut virtio.slots);
    Ok(Devices {
        pio,
        mmio,
        event_loop,
        console,
        reset_evt,
        serial,
        slots,
    })
}

/// The virtio-net device on the tap `config` names, opened and checked
/// here: before seccomp, which forbids opening files and the tap ioctls.
fn net_device(config: &NetConfig) -> Result<Net, BuildError> {
    let tap = tap::open(&config.tap).map_err(BuildError::Tap)?;
    let mac = match &config.mac {
        // Checked by config::validate already.
        Some(text) => net::parse_mac(text).map_err(|reason| BuildError::Io {
            what: "the MAC address",
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, reason),
        })?,
        None => net::random_mac().map_err(io("a random MAC address"))?,
    };
    log::info!(
        "virtio-net: MAC {} (a restored guest keeps the one it was saved with)",
        net::format_mac(&mac)
    );
    Net::new(tap, mac).map_err(BuildError::Net)
}

/// The virtio-fs device, connected to its backend here: before seccomp,
/// which forbids making connections.
fn fs_device(config: &crate::config::FsConfig) -> Result<Fs, BuildError> {
    let backend = match &config.socket {
        Some(socket) => Some(
            Backend::connect(socket)
                .map_err(FsError::Backend)
                .map_err(BuildError::Fs)?,
        ),
        None => None,
    };
    Fs::new(&config.tag, backend).map_err(BuildError::Fs)
}

/// The port-I/O bus: the serial console (its output as `config` says, its
/// tail kept in `console`) and the i8042, which signals `reset_evt`.
fn legacy_devices(
    vm: &Vm,
    config: &VmConfig,
    console: &Arc<Mutex<ConsoleTail>>,
    reset_evt: &EventFd,
) -> Result<(Bus, Arc<Mutex<SerialConsole>>), BuildError> {
    let mut pio = Bus::new();
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
    let serial = Arc::new(Mutex::new(SerialConsole::new(
        irq,
        ConsoleSink::new(out, console.clone()),
    )));
    pio.insert(
        serial.clone(),
        u64::from(layout::SERIAL_PORT),
        SerialConsole::PORT_LEN,
    )?;
    let i8042 = I8042::new(reset_evt.try_clone().map_err(io("an eventfd clone"))?);
    pio.insert(
        Arc::new(Mutex::new(i8042)),
        u64::from(layout::I8042_DATA_PORT),
        I8042::PORT_LEN,
    )?;
    Ok((pio, serial))
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
    slots: Vec<Slot>,
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
        let transport = Arc::new(Mutex::new(MmioTransport::new(
            device.clone(),
            self.mem.clone(),
            interrupt,
        )));
        self.mmio
            .insert(transport.clone(), base, layout::VIRTIO_MMIO_SIZE)?;
        self.slots.push(Slot {
            base,
            irq,
            transport,
        });
        self.cmdline
            .add_virtio_mmio_device(layout::VIRTIO_MMIO_SIZE, GuestAddress(base), irq, None)
            .map_err(BuildError::Cmdline)?;
        self.event_loop.add_subscriber(device);
        self.next += 1;
        Ok(())
    }
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
