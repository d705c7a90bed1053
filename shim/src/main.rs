//! `containerd-shim-hull-v2`: containerd's runtime `io.containerd.hull.v2`.
//! Every container runs in its own microVM; see the `hull_shim` library.

use containerd_shim::asynchronous::run;
use containerd_shim::Config;
use hull_shim::service::HullShim;

#[tokio::main]
async fn main() {
    // The crate's own SIGCHLD reaper would take the VMM's exit status from
    // under tokio's `Child::wait`: the shim waits for its children itself.
    let config = Config {
        no_reaper: true,
        ..Default::default()
    };
    run::<HullShim>("io.containerd.hull.v2", Some(config)).await;
}
