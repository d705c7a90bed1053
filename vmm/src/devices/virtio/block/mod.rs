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

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use device::{Block, BlockError, QUEUE_SIZE};
pub use disk::DiskError;

/// One drive, as the VM config describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    /// A raw disk image (a regular file or a block device).
    pub path: PathBuf,
    /// Open the image read-only and offer VIRTIO_BLK_F_RO.
    #[serde(default)]
    pub read_only: bool,
    /// The serial the guest reads with VIRTIO_BLK_T_GET_ID (at most 20
    /// bytes); empty when not set.
    #[serde(default)]
    pub id: Option<String>,
}
