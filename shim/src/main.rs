//! `containerd-shim-hull-v2`: containerd's runtime `io.containerd.hull.v2`.
//! Every container runs in its own microVM; see the `hull_shim` library.

use containerd_shim::asynchronous::run;
use containerd_shim::Config;
use hull_shim::service::HullShim;

const RUNTIME: &str = "io.containerd.hull.v2";

#[tokio::main]
async fn main() {
    // containerd-shim 0.11's async bootstrap parses `-v` but never acts on
    // it (it wants TTRPC_ADDRESS first): answer it here, as runc's shim
    // does, for operators and `hull check`.
    if std::env::args()
        .skip(1)
        .any(|a| matches!(a.as_str(), "-v" | "-version" | "--version"))
    {
        println!(
            "containerd-shim-hull-v2:\n  Runtime: {RUNTIME}\n  Version: {}\n  Agent protocol: {}",
            env!("CARGO_PKG_VERSION"),
            hull_protocol::agent_api::PROTOCOL_VERSION
        );
        return;
    }
    // The crate's own SIGCHLD reaper would take the VMM's exit status from
    // under tokio's `Child::wait`: the shim waits for its children itself.
    let config = Config {
        no_reaper: true,
        ..Default::default()
    };
    run::<HullShim>(RUNTIME, Some(config)).await;
}
