//! What the guest reports without being asked: OOM kills (published to
//! containerd as `TaskOOM`) and the guest's own log lines (agent and kernel,
//! copied into the shim log at debug level). Each is one long-polling loop
//! per sandbox that ends when the agent says it cannot answer (an older
//! agent, a gone container) or the connection closes (the VM stopped).

use std::sync::Arc;

use containerd_shim::protos::events::task::TaskOOM;
use containerd_shim::protos::topics;
use hull_protocol::agent_api::agent::{GetOOMEventRequest, ReadGuestLogRequest};
use hull_protocol::agent_api::agent_ttrpc::AgentClient;
use ttrpc::context;

use super::HullTask;

/// Most guest log bytes taken per call.
const GUEST_LOG_CHUNK: u32 = 16 * 1024;

/// Publishes `TaskOOM` for every OOM kill the guest reports. `container_id`
/// names the container when the agent leaves the event's id empty.
pub(super) async fn forward_oom_events(
    task: HullTask,
    container_id: String,
    agent: Arc<AgentClient>,
) {
    loop {
        // No deadline: the call returns at the next OOM kill.
        match agent
            .get_oom_event(context::Context::default(), &GetOOMEventRequest::default())
            .await
        {
            Ok(event) => {
                let id = if event.container_id.is_empty() {
                    container_id.clone()
                } else {
                    event.container_id
                };
                log::info!("{id}: OOM kill in the guest");
                task.publish(
                    topics::TASK_OOM_EVENT_TOPIC,
                    Box::new(TaskOOM {
                        container_id: id,
                        ..Default::default()
                    }),
                )
                .await;
            }
            Err(e) => {
                log::debug!("{container_id}: no more OOM events: {e}");
                return;
            }
        }
    }
}

/// Copies the guest's log lines into the shim log (containerd's log FIFO).
/// At debug level only: the guest decides how much it writes.
pub(super) async fn forward_guest_log(container_id: String, agent: Arc<AgentClient>) {
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    let request = ReadGuestLogRequest {
        max_bytes: GUEST_LOG_CHUNK,
        ..Default::default()
    };
    loop {
        match agent
            .read_guest_log(context::Context::default(), &request)
            .await
        {
            Ok(chunk) if chunk.data.is_empty() => {
                // Should wait for lines; never spin on an agent that does not.
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Ok(chunk) => {
                for line in String::from_utf8_lossy(&chunk.data).lines() {
                    log::debug!("{container_id}: guest: {line}");
                }
            }
            Err(e) => {
                log::debug!("{container_id}: guest log ended: {e}");
                return;
            }
        }
    }
}
