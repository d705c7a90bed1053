//! The guest-facing virtio-fs device and its event-loop glue:
//!
//! - a guest queue kicked: chains go to the shadow queue while it has room
//!   (the rest stay in the guest's ring until answers free slots), then
//!   the backend is kicked;
//! - the backend's call eventfd: answers go back into the guest's chains,
//!   the guest is interrupted by the VMM itself (irqfd is not used: it
//!   does not work under nested PVM);
//! - the backend's socket hung up (virtiofsd died): every request in
//!   flight, and every later one, is answered with EIO by the device, so
//!   the guest sees I/O errors and nothing waits.
//!
//! Without a backend (a template's slot), every request is answered with
//! EIO the same way.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress};

use super::backend::{Backend, BackendError};
use super::shadow::ShadowError;
use super::{QUEUE_SIZE, TAG_LEN};
use crate::devices::virtio::{
    read_config_bytes, VirtioCommon, VirtioDevice, VirtioError, TAG_ACTIVATE, TAG_DEVICE_BASE,
    TYPE_FS,
};
use crate::logger::{guest_error, guest_warn, ErrorChain};
use crate::vstate::memory::GuestMemoryMmap;

/// The guest's queues: hiprio (FORGET, INTERRUPT), then one request queue.
const HIPRIO: usize = 0;
const REQUEST: usize = 1;
const TAG_CALL: u32 = TAG_DEVICE_BASE;
const TAG_HANGUP: u32 = TAG_DEVICE_BASE + 1;
/// `struct fuse_out_header`: len, error, unique.
const OUT_HEADER_LEN: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("virtio plumbing")]
    Virtio(#[source] VirtioError),
    #[error("accessing virtio-fs queue {index}")]
    Queue {
        index: usize,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("the shadow queue")]
    Shadow(#[source] ShadowError),
    #[error("kicking the backend")]
    Kick(#[source] std::io::Error),
}

/// A virtio-fs device, shared as `Arc<Mutex<Fs>>` like every device.
pub struct Fs {
    common: VirtioCommon,
    config_space: [u8; TAG_LEN + 4],
    tag: String,
    backend: Option<Backend>,
    /// Whether a request reached the backend: from then on the guest's
    /// FUSE session lives in that backend, which a restored VM could not
    /// reach again.
    used_backend: bool,
    /// Reused for the descriptors of each chain.
    descs: Vec<Descriptor>,
}

impl Fs {
    /// The device with `tag`, its requests served by `backend` (or, with
    /// none, answered with EIO).
    pub fn new(tag: &str, backend: Option<Backend>) -> Result<Self, FsError> {
        let common =
            VirtioCommon::new(TYPE_FS, 0, &[QUEUE_SIZE, QUEUE_SIZE]).map_err(FsError::Virtio)?;
        // struct virtio_fs_config: tag[36] (NUL-padded), num_request_queues.
        let mut config_space = [0u8; TAG_LEN + 4];
        let len = tag.len().min(TAG_LEN);
        config_space[..len].copy_from_slice(&tag.as_bytes()[..len]);
        config_space[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        Ok(Self {
            common,
            config_space,
            tag: tag.to_owned(),
            backend,
            used_backend: false,
            descs: Vec::new(),
        })
    }

    /// Moves the guest's requests to the backend while slots are free.
    /// Does nothing until the device is activated.
    pub fn process_queues(&mut self) -> Result<(), FsError> {
        let mut kicked = false;
        let mut used = false;
        for index in [HIPRIO, REQUEST] {
            let (queue, mem, _) = match self.common.queue_parts(index) {
                Ok(parts) => parts,
                Err(VirtioError::NotReady) => return Ok(()),
                Err(e) => return Err(FsError::Virtio(e)),
            };
            if !queue.ready() {
                continue;
            }
            // Bounded like every device's turn: a guest that keeps a ring
            // full cannot hold the event loop (requests answered here
            // without a backend take no slot).
            let mut served = 0;
            loop {
                if self.backend.as_ref().is_some_and(|b| !b.queue.has_room()) {
                    break;
                }
                if served == usize::from(QUEUE_SIZE) {
                    self.common.queue_evts[index]
                        .write(1)
                        .map_err(|e| FsError::Virtio(VirtioError::EventFd(e)))?;
                    break;
                }
                served += 1;
                let Some(chain) = queue.pop_descriptor_chain(mem) else {
                    break;
                };
                let head = chain.head_index();
                self.descs.clear();
                self.descs.extend(chain);
                let token = (index as u32) << 16 | u32::from(head);
                let refused = match self.backend.as_mut() {
                    Some(backend) => match backend.queue.submit(mem, token, &self.descs) {
                        Ok(()) => {
                            kicked = true;
                            self.used_backend = true;
                            continue;
                        }
                        Err(e) => {
                            guest_warn!("virtio-fs: request refused: {}", ErrorChain(&e));
                            libc::EIO
                        }
                    },
                    None => libc::EIO,
                };
                let len = answer_error(mem, &self.descs, refused);
                add_used(queue, mem, head, len);
                used = true;
            }
        }
        if kicked {
            if let Some(backend) = &self.backend {
                backend.kick.write(1).map_err(FsError::Kick)?;
            }
        }
        if used {
            self.interrupt()?;
        }
        Ok(())
    }

    /// The backend returned requests: their answers go to the guest, and
    /// the slots they free take the requests waiting in the guest's rings.
    fn process_answers(&mut self) -> Result<(), FsError> {
        let Some(backend) = self.backend.as_mut() else {
            return Ok(());
        };
        let _ = backend.call.read();
        let Ok(mem) = self.common.mem().cloned() else {
            // Reset while requests were in flight: their chains are gone;
            // the slots free as the backend returns them.
            backend.queue.complete(None).map_err(FsError::Shadow)?;
            return Ok(());
        };
        let done = backend
            .queue
            .complete(Some(&mem))
            .map_err(FsError::Shadow)?;
        self.give_back(&mem, done)?;
        self.process_queues()
    }

    /// The backend is gone: what it held is answered with EIO, and so is
    /// every later request.
    fn backend_gone(&mut self, ops: &mut EventOps) -> Result<(), FsError> {
        let Some(mut backend) = self.backend.take() else {
            return Ok(());
        };
        guest_error!(
            "virtio-fs {}: the backend hung up; the guest gets I/O errors from now on",
            self.tag
        );
        let _ = ops.remove(Events::new(&backend.call, EventSet::IN));
        let _ = ops.remove(Events::new(backend.socket(), EventSet::IN));
        let Ok(mem) = self.common.mem().cloned() else {
            return Ok(());
        };
        let mut done = Vec::new();
        for abandoned in backend.queue.abandon() {
            let unique = u64::from_le_bytes(abandoned.head[8..].try_into().expect("8 bytes"));
            let len = write_error(&mem, &abandoned.writable, unique, libc::EIO);
            done.push((abandoned.token, len));
        }
        self.give_back(&mem, done)?;
        self.process_queues()
    }

    /// Puts answered chains (token, length) on their guest queue's used
    /// ring and interrupts the guest.
    fn give_back(&mut self, mem: &GuestMemoryMmap, done: Vec<(u32, u32)>) -> Result<(), FsError> {
        if done.is_empty() {
            return Ok(());
        }
        for (token, len) in done {
            let (index, head) = ((token >> 16) as usize, token as u16);
            match self.common.queues.get_mut(index) {
                Some(queue) => add_used(queue, mem, head, len),
                None => guest_warn!("virtio-fs: answer for queue {index}"),
            }
        }
        self.interrupt()
    }

    fn interrupt(&self) -> Result<(), FsError> {
        self.common
            .interrupt()
            .and_then(|i| i.signal_used_queue())
            .map_err(FsError::Virtio)
    }
}

fn add_used(queue: &mut virtio_queue::Queue, mem: &GuestMemoryMmap, head: u16, len: u32) {
    // Fails only for a head index beyond the queue, which the guest put in
    // its own avail ring; nothing to give back then.
    if let Err(e) = queue.add_used(mem, head, len) {
        guest_warn!("virtio-fs: returning chain {head}: {e}");
    }
}

/// Answers the request in `descs` with `errno` (a FUSE out-header whose
/// unique id is the request's); returns the bytes written.
fn answer_error(mem: &GuestMemoryMmap, descs: &[Descriptor], errno: i32) -> u32 {
    let mut unique = [0u8; 8];
    let first = descs
        .first()
        .filter(|d| !d.is_write_only() && d.len() >= 16);
    if let Some(first) = first {
        if let Some(at) = first.addr().checked_add(8) {
            let _ = mem.read_slice(&mut unique, at);
        }
    }
    let writable: Vec<(GuestAddress, u32)> = descs
        .iter()
        .filter(|d| d.is_write_only())
        .map(|d| (d.addr(), d.len()))
        .collect();
    write_error(mem, &writable, u64::from_le_bytes(unique), errno)
}

/// Writes a FUSE error answer into the first writable descriptor, when it
/// can hold one (FORGET has none: it is returned with nothing written).
fn write_error(
    mem: &GuestMemoryMmap,
    writable: &[(GuestAddress, u32)],
    unique: u64,
    errno: i32,
) -> u32 {
    let Some(&(addr, _)) = writable.first().filter(|(_, len)| *len >= OUT_HEADER_LEN) else {
        return 0;
    };
    let mut header = [0u8; OUT_HEADER_LEN as usize];
    header[..4].copy_from_slice(&OUT_HEADER_LEN.to_le_bytes());
    header[4..8].copy_from_slice(&(-errno).to_le_bytes());
    header[8..].copy_from_slice(&unique.to_le_bytes());
    match mem.write_slice(&header, addr) {
        Ok(()) => OUT_HEADER_LEN,
        Err(e) => {
            guest_warn!("virtio-fs: writing an error answer at {addr:?}: {e}");
            0
        }
    }
}

impl VirtioDevice for Fs {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn device_state(&self) -> serde_json::Value {
        serde_json::json!({ "tag": self.tag, "used_backend": self.used_backend })
    }

    /// The tag is the guest's name for the share: the same one. A VM saved
    /// after the guest talked to its backend cannot be restored: its FUSE
    /// session (inode numbers, open files) lived in that backend.
    fn restore_device_state(&mut self, saved: &serde_json::Value) -> Result<bool, VirtioError> {
        if saved["tag"].as_str() != Some(self.tag.as_str()) {
            return Err(VirtioError::Snapshot(format!(
                "the shared directory was saved with tag {}, this VM's is {:?}",
                saved["tag"], self.tag
            )));
        }
        if saved["used_backend"].as_bool() != Some(false) {
            return Err(VirtioError::Snapshot(
                "the guest had used its shared directory when saved; a new backend cannot \
                 resume that session"
                    .into(),
            ));
        }
        Ok(false)
    }
}

impl MutEventSubscriber for Fs {
    #[allow(
        clippy::disallowed_macros,
        reason = "runs once, when the builder adds the device to the event loop"
    )]
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.common.init_events(ops) {
            log::error!("virtio-fs: {}", ErrorChain(&e));
        }
        if let Some(backend) = &self.backend {
            let watched = ops
                .add(Events::with_data(&backend.call, TAG_CALL, EventSet::IN))
                .and_then(|()| {
                    ops.add(Events::with_data(
                        backend.socket(),
                        TAG_HANGUP,
                        EventSet::HANG_UP | EventSet::READ_HANG_UP,
                    ))
                });
            if let Err(e) = watched {
                log::error!("virtio-fs: watching the backend: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let result = match events.data() {
            TAG_ACTIVATE => self
                .common
                .on_activate(ops)
                .map_err(FsError::Virtio)
                .and_then(|()| self.process_queues()),
            TAG_CALL => self.process_answers(),
            TAG_HANGUP => self.backend_gone(ops),
            tag if (tag as usize) < self.common.queue_evts.len() => {
                let _ = self.common.queue_evts[tag as usize].read();
                self.process_queues()
            }
            tag => {
                guest_warn!("virtio-fs: event with unknown tag {tag:#x}");
                Ok(())
            }
        };
        if let Err(e) = result {
            guest_error!("virtio-fs {}: {}", self.tag, ErrorChain(&e));
        }
    }
}

#[cfg(test)]
mod tests;
