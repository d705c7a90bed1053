//! virtio-fs (virtio 1.2, section 5.11) over vhost-user, through a shadow
//! queue so that the backend never maps guest memory (see
//! docs/virtio-fs-design.md). Work in progress on this branch: the shadow
//! queue first.

pub mod shadow;
