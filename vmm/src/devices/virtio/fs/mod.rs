//! virtio-fs (virtio 1.2, section 5.11) over vhost-user, through a shadow
//! queue so that the backend never maps guest memory (see
//! docs/virtio-fs-design.md).
//!
//! - [`device::Fs`]: the guest-facing device, an ordinary hull virtio
//!   device (saved and restored like the others): a hiprio queue and one
//!   request queue, the tag in its config space.
//! - [`backend::Backend`]: the vhost-user connection to virtiofsd, made
//!   when the VMM starts (before seccomp), and the [`shadow::ShadowQueue`]
//!   it serves: the only memory virtiofsd is given.
//!
//! Requests of both guest queues go to the backend's one request queue
//! (virtiofsd serves any FUSE opcode on it, FORGET included); answers go
//! back to the guest queue the request came from.

pub mod backend;
pub mod device;
pub mod shadow;

pub use backend::{Backend, BackendError};
pub use device::{Fs, FsError};

/// Bytes of the tag in the config space.
pub const TAG_LEN: usize = 36;
/// Descriptors per guest queue. The guest's FUSE layer sizes its largest
/// request from the request queue (`max_pages` = size − 4, Linux
/// `virtio_fs_fill_super`): 60 pages of data per request.
pub const QUEUE_SIZE: u16 = 64;
/// A shadow slot holds the largest request the guest makes: 60 pages of
/// data, headers, and slack for the few requests with larger arguments.
pub const SLOT_BYTES: u32 = 256 << 10;
/// Requests in flight to the backend at once (its thread pool cannot use
/// more here).
pub const SLOTS: u16 = 16;
