//! virtio-vsock with the host side speaking hybrid vsock.
