//! A running microVM: its vCPU threads, the control socket, and the events
//! that decide when and how it stops. Runs on the event loop thread next to
//! the devices.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use hull_protocol::vmm_api::{exit_code, VmState, VmmRequest, VmmResponse};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::api::{ApiEvent, ApiServer};
use crate::devices::legacy::serial::ConsoleTail;
use crate::logger::ErrorChain;
use crate::snapshot::Saver;
use crate::vstate::vcpu::{kick_signal, RunState, VcpuControl, VcpuError, VcpuStop};

const TAG_RESET: u32 = 1;
const TAG_VCPU_EXIT: u32 = 2;
const TAG_SIGNAL: u32 = 3;
const TAG_API_LISTENER: u32 = 4;
const TAG_API_CLIENT: u32 = 5;
/// How long vCPUs get to notice a pause or stop request.
const KICK_TIMEOUT: Duration = Duration::from_secs(2);

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest reset or powered off.
    GuestShutdown,
    /// The VMM was asked to stop (control socket, SIGTERM, SIGINT).
    Requested,
    GuestPanic,
    /// Triple fault, or an instruction nobody could emulate.
    GuestCrash(String),
    VmmError(String),
}

impl Outcome {
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::GuestShutdown | Outcome::Requested => exit_code::OK,
            Outcome::GuestPanic => exit_code::GUEST_PANIC,
            Outcome::GuestCrash(_) => exit_code::GUEST_CRASH,
            Outcome::VmmError(_) => exit_code::VMM_ERROR,
        }
    }
}

pub type VcpuThread = JoinHandle<Result<VcpuStop, VcpuError>>;

pub struct Machine {
    vcpus: Vec<VcpuThread>,
    control: Arc<VcpuControl>,
    console: Arc<Mutex<ConsoleTail>>,
    reset_evt: EventFd,
    vcpu_exit_evt: EventFd,
    signals: OwnedFd,
    api: Option<ApiServer>,
    outcome: Option<Outcome>,
    /// Present when the config names a snapshot file.
    saver: Option<Saver>,
}

impl Machine {
    pub fn new(
        control: Arc<VcpuControl>,
        console: Arc<Mutex<ConsoleTail>>,
        reset_evt: EventFd,
        vcpu_exit_evt: EventFd,
        signals: OwnedFd,
        api: Option<ApiServer>,
    ) -> Self {
        Self {
            vcpus: Vec::new(),
            control,
            console,
            reset_evt,
            vcpu_exit_evt,
            signals,
            api,
            outcome: None,
            saver: None,
        }
    }

    pub fn set_saver(&mut self, saver: Option<Saver>) {
        self.saver = saver;
    }

    /// Pauses the VM and saves it; it stays paused.
    fn snapshot(&mut self) -> Result<VmState, String> {
        if self.saver.is_none() {
            return Err("this VM was started without a snapshot_file".into());
        }
        self.pause()?;
        let saver = self.saver.as_ref().expect("checked above");
        let started = Instant::now();
        let header = saver
            .save(&self.control, KICK_TIMEOUT)
            .map_err(|e| ErrorChain(&e).to_string())?;
        log::info!(
            "snapshot saved to {} in {} ms ({} MiB of memory)",
            saver.path.display(),
            started.elapsed().as_millis(),
            header.memory_len >> 20
        );
        Ok(VmState::Paused)
    }

    pub fn add_vcpu_thread(&mut self, thread: VcpuThread) {
        self.vcpus.push(thread);
    }

    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// The guest's last console lines, for error reports.
    pub fn console_tail(&self) -> Vec<String> {
        self.console.lock().expect("console tail poisoned").lines()
    }

    fn finish(&mut self, outcome: Outcome) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
        }
    }

    fn guest_stopped(&mut self) {
        let panicked = self
            .console
            .lock()
            .expect("console tail poisoned")
            .panicked();
        self.finish(if panicked {
            Outcome::GuestPanic
        } else {
            Outcome::GuestShutdown
        });
    }

    /// Collect vCPU threads that ended and decide what their ending means.
    fn reap_vcpus(&mut self) {
        let (done, running): (Vec<_>, Vec<_>) = self.vcpus.drain(..).partition(|t| t.is_finished());
        self.vcpus = running;
        for thread in done {
            match thread.join() {
                Ok(Ok(VcpuStop::Requested)) => {}
                Ok(Ok(VcpuStop::GuestShutdown)) => self.guest_stopped(),
                Ok(Ok(VcpuStop::TripleFault)) => {
                    self.finish(Outcome::GuestCrash("triple fault".into()))
                }
                Ok(Err(e @ VcpuError::Emulation { .. })) => {
                    self.finish(Outcome::GuestCrash(e.to_string()))
                }
                Ok(Err(e)) => self.finish(Outcome::VmmError(ErrorChain(&e).to_string())),
                Err(_) => self.finish(Outcome::VmmError("a vCPU thread panicked".into())),
            }
        }
    }

    /// Kick the vCPUs out of KVM_RUN until `done` holds or the timeout passes.
    fn kick_until(&mut self, done: impl Fn(&Self) -> bool) -> bool {
        let deadline = Instant::now() + KICK_TIMEOUT;
        while !done(self) {
            if Instant::now() > deadline {
                return false;
            }
            for t in self.vcpus.iter().filter(|t| !t.is_finished()) {
                let _ = t.kill(kick_signal());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    fn pause(&mut self) -> Result<VmState, String> {
        self.control.set(RunState::Pause);
        let n = self.vcpus.len();
        let parked = |m: &Self| {
            m.control.parked.load(std::sync::atomic::Ordering::SeqCst)
                + m.vcpus.iter().filter(|t| t.is_finished()).count()
                >= n
        };
        if self.kick_until(parked) {
            Ok(VmState::Paused)
        } else {
            self.control.set(RunState::Run);
            Err("vCPUs did not pause in time".into())
        }
    }

    /// Stop every vCPU thread; called once the event loop is done.
    pub fn stop_vcpus(&mut self) {
        self.control.set(RunState::Stop);
        if !self.kick_until(|m| m.vcpus.iter().all(|t| t.is_finished())) {
            log::error!("vCPUs did not stop within {KICK_TIMEOUT:?}");
        }
        self.reap_vcpus();
    }

    fn state(&self) -> VmState {
        match (&self.outcome, self.control.get()) {
            (Some(_), _) | (None, RunState::Stop) => VmState::Stopping,
            (None, RunState::Pause) => VmState::Paused,
            (None, RunState::Run) => VmState::Running,
        }
    }

    fn handle_request(&mut self, request: VmmRequest) -> VmmResponse {
        let result = match request {
            VmmRequest::Status => Ok(self.state()),
            VmmRequest::Pause => self.pause(),
            VmmRequest::Resume => {
                self.control.set(RunState::Run);
                Ok(VmState::Running)
            }
            VmmRequest::Shutdown => {
                self.finish(Outcome::Requested);
                Ok(VmState::Stopping)
            }
            VmmRequest::Snapshot => self.snapshot(),
        };
        match result {
            Ok(state) => VmmResponse::Ok { state },
            Err(message) => VmmResponse::Error { message },
        }
    }

    fn handle_api(&mut self, fd: i32, tag: u32, ops: &mut EventOps) {
        let Some(api) = self.api.as_mut() else { return };
        let events = if tag == TAG_API_LISTENER {
            api.accept().map(ApiEvent::Accepted).into_iter().collect()
        } else {
            api.read(fd)
        };
        for event in events {
            match event {
                ApiEvent::Accepted(client) => {
                    if ops
                        .add(Events::with_data_raw(client, TAG_API_CLIENT, EventSet::IN))
                        .is_err()
                    {
                        self.api.as_mut().expect("api present").close(client);
                    }
                }
                ApiEvent::Request(client, Ok(request)) => {
                    let response = self.handle_request(request);
                    self.api
                        .as_mut()
                        .expect("api present")
                        .respond(client, &response);
                }
                ApiEvent::Request(client, Err(message)) => {
                    self.api
                        .as_mut()
                        .expect("api present")
                        .respond(client, &VmmResponse::Error { message });
                }
                ApiEvent::Closed(client) => {
                    let _ = ops.remove(Events::with_data_raw(client, TAG_API_CLIENT, EventSet::IN));
                    self.api.as_mut().expect("api present").close(client);
                }
            }
        }
    }
}

impl MutEventSubscriber for Machine {
    fn init(&mut self, ops: &mut EventOps) {
        let mut sources = vec![
            Events::with_data(&self.reset_evt, TAG_RESET, EventSet::IN),
            Events::with_data(&self.vcpu_exit_evt, TAG_VCPU_EXIT, EventSet::IN),
            Events::with_data_raw(self.signals.as_raw_fd(), TAG_SIGNAL, EventSet::IN),
        ];
        if let Some(api) = &self.api {
            sources.push(Events::with_data_raw(
                api.listener_fd(),
                TAG_API_LISTENER,
                EventSet::IN,
            ));
        }
        for source in sources {
            if let Err(e) = ops.add(source) {
                self.finish(Outcome::VmmError(format!(
                    "registering a VMM event source: {e}"
                )));
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TAG_RESET => {
                let _ = self.reset_evt.read();
                self.guest_stopped();
            }
            TAG_VCPU_EXIT => {
                let _ = self.vcpu_exit_evt.read();
                self.reap_vcpus();
            }
            TAG_SIGNAL => {
                let mut info = [0u8; 128];
                let _ = nix_read(self.signals.as_raw_fd(), &mut info);
                log::info!("signal received: stopping the VM");
                self.finish(Outcome::Requested);
            }
            tag @ (TAG_API_LISTENER | TAG_API_CLIENT) => self.handle_api(events.fd(), tag, ops),
            other => log::warn!("unexpected VMM event tag {other}"),
        }
    }
}

fn nix_read(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes and `fd`
    // is the signalfd this Machine owns for its whole life.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Block SIGTERM and SIGINT in this thread (and every thread it spawns after)
/// and return a signalfd that reports them to the event loop instead.
pub fn stop_signals() -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it fully before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
    }
    // A real (no-op) handler, not only the mask: when the jailer makes the
    // VMM the init of a new PID namespace, the kernel drops signals whose
    // handler is SIG_DFL, so SIGTERM would never reach the signalfd. The
    // signals stay blocked, so the handler itself never runs.
    extern "C" fn never_runs(_: libc::c_int) {}
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: installs a handler that does nothing; sigaction is plain
        // data, zero-initialised then filled.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = never_runs as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: `set` is initialised; -1 asks for a new signalfd.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
