//! The ttrpc server: binds the listen address, serves [`AgentService`]
//! until shutdown is asked for, then lets answers in flight go out.

use std::io;
use std::sync::Arc;

use hull_protocol::agent_api::agent_ttrpc::create_agent;
use thiserror::Error;
use tokio::signal::unix::{signal, SignalKind};
use ttrpc::r#async::Server;

use crate::config::{ListenAddr, Role};
use crate::rpc::{AgentService, ShutdownSignal};

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on {address}")]
    Bind {
        address: String,
        #[source]
        source: ttrpc::Error,
    },
    #[error("cannot start serving on {address}")]
    Start {
        address: String,
        #[source]
        source: ttrpc::Error,
    },
    #[error("cannot install the {signal} handler")]
    Signal {
        signal: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Serves the agent API on `listen` until `shutdown` is requested (by the
/// `Shutdown` RPC) or, for an ordinary process, SIGTERM or SIGINT arrives.
/// Returns once every connection has finished its answers (ttrpc gives
/// them up to 10 s), so the caller may then reboot or exit.
pub async fn serve(
    listen: &ListenAddr,
    service: AgentService,
    shutdown: &ShutdownSignal,
    role: Role,
) -> Result<(), ServerError> {
    let address = listen.to_ttrpc();
    let mut server = Server::new()
        .bind(&address)
        .map_err(|source| ServerError::Bind {
            address: address.clone(),
            source,
        })?
        .register_service(create_agent(Arc::new(service)));
    server.start().await.map_err(|source| ServerError::Start {
        address: address.clone(),
        source,
    })?;
    log::info!("serving the agent API on {address}");

    match role {
        // The kernel sends PID 1 no signal it has no handler for; the host
        // stops the guest through the Shutdown RPC (or kills the VM).
        Role::Init => shutdown.wait().await,
        Role::Process => wait_for_shutdown_or_signal(shutdown).await?,
    }

    if let Err(err) = server.shutdown().await {
        log::warn!("stopping the ttrpc server: {err}");
    }
    if let ListenAddr::Unix(path) = listen {
        if let Err(err) = std::fs::remove_file(path) {
            if err.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove {}: {err}", path.display());
            }
        }
    }
    Ok(())
}

async fn wait_for_shutdown_or_signal(shutdown: &ShutdownSignal) -> Result<(), ServerError> {
    let install = |kind: SignalKind, name: &'static str| {
        signal(kind).map_err(|source| ServerError::Signal {
            signal: name,
            source,
        })
    };
    let mut sigterm = install(SignalKind::terminate(), "SIGTERM")?;
    let mut sigint = install(SignalKind::interrupt(), "SIGINT")?;
    tokio::select! {
        () = shutdown.wait() => {}
        _ = sigterm.recv() => log::info!("SIGTERM: stopping"),
        _ = sigint.recv() => log::info!("SIGINT: stopping"),
    }
    Ok(())
}
