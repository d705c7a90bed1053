//! virtio-blk (virtio 1.2, section 5.2) backed by a raw image file.
//!
//! One request queue, processed on the event loop thread with plain
//! `pread`/`pwrite`. [`request`] turns a descriptor chain into a typed
//! [`request::Request`] (all guest-controlled checks live there);
//! `disk` moves bytes between the image file and guest memory; `device`
//! runs requests and does the queue and event-loop plumbing.

mod device;
mod disk;
pub mod request;

pub use device::{Block, BlockError, QUEUE_SIZE};
pub use disk::DiskError;

pub use hull_protocol::vmm_config::BlockConfig;
