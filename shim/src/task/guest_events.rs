//! What the guest reports without being asked: OOM kills (published to
//! containerd as `TaskOOM`) and the guest's own log lines (agent and kernel,
//! copied into the shim log at debug level). Each is one long-polling loop
//! per sandbox that ends when the agent says it cannot answer (an older
//! agent, a gone container) or the connection closes (the VM stopped).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use containerd_shim::protos::events::task::TaskOOM;
use containerd_shim::protos::topics;
use hull_protocol::agent_api::agent::{GetOOMEventRequest, ReadGuestLogRequest};
use hull_protocol::agent_api::agent_ttrpc::AgentClient;
use ttrpc::context;

use super::HullTask;
use crate::error::untrusted;

/// Most guest log bytes taken per call.
const GUEST_LOG_CHUNK: u32 = 16 * 1024;

/// The shortest interval between two `TaskOOM` events of one container: a
/// guest reporting OOM kills in a loop must not flood containerd's event
/// bus (one event already tells containerd and Docker the container was
/// OOM-killed).
const OOM_EVENT_INTERVAL: Duration = Duration::from_secs(1);

/// What to do with an OOM event the guest reported.
#[derive(Debug, PartialEq, Eq)]
enum OomVerdict {
    Publish,
    /// Names a container that is not one of this sandbox's.
    Foreign,
    /// Too soon after the last one.
    TooSoon,
}

/// The guest is not trusted: it may only report OOM kills of the
/// sandbox's containers (`member`: the sandbox's first, or one of the pod
/// that joined it), and not too often for one container.
fn judge_oom(member: bool, last: Option<Instant>, now: Instant) -> OomVerdict {
    if !member {
        OomVerdict::Foreign
    } else if last.is_some_and(|last| now.duration_since(last) < OOM_EVENT_INTERVAL) {
        OomVerdict::TooSoon
    } else {
        OomVerdict::Publish
    }
}

/// Publishes `TaskOOM` for the OOM kills the guest reports in the
/// sandbox's containers: `sandbox_id`, the one that made the VM, and the
/// pod's containers that joined it (see [`judge_oom`]).
pub(super) async fn forward_oom_events(
    task: HullTask,
    sandbox_id: String,
    agent: Arc<AgentClient>,
) {
    let mut last: HashMap<String, Instant> = HashMap::new();
    loop {
        // No deadline: the call returns at the next OOM kill.
        match agent
            .get_oom_event(context::Context::default(), &GetOOMEventRequest::default())
            .await
        {
            Ok(event) => {
                let now = Instant::now();
                let container_id = match event.container_id.as_str() {
                    "" => sandbox_id.clone(),
                    id => id.to_owned(),
                };
                let member = container_id == sandbox_id
                    || task
                        .inner
                        .containers
                        .lock()
                        .await
                        .get(&container_id)
                        .is_some_and(|c| c.pod.id == sandbox_id);
                match judge_oom(member, last.get(&container_id).copied(), now) {
                    OomVerdict::Foreign => {
                        log::warn!(
                            "{sandbox_id}: the guest reported an OOM kill in {:?}, not a container of this sandbox: dropped",
                            untrusted(&event.container_id)
                        );
                        continue;
                    }
                    OomVerdict::TooSoon => {
                        log::debug!("{container_id}: OOM kill in the guest (event coalesced)");
                        continue;
                    }
                    OomVerdict::Publish => {}
                }
                last.insert(container_id.clone(), now);
                log::info!("{container_id}: OOM kill in the guest");
                task.publish(
                    topics::TASK_OOM_EVENT_TOPIC,
                    Box::new(TaskOOM {
                        container_id: container_id.clone(),
                        ..Default::default()
                    }),
                )
                .await;
            }
            Err(e) => {
                log::debug!("{sandbox_id}: no more OOM events: {e}");
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
                    log::debug!("{container_id}: guest: {}", untrusted(line));
                }
            }
            Err(e) => {
                log::debug!("{container_id}: guest log ended: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_events_name_only_the_sandboxs_containers_and_are_spaced() {
        let now = Instant::now();
        assert_eq!(judge_oom(true, None, now), OomVerdict::Publish);
        assert_eq!(judge_oom(false, None, now), OomVerdict::Foreign);
        let just_now = Some(now);
        assert_eq!(judge_oom(true, just_now, now), OomVerdict::TooSoon);
        assert_eq!(judge_oom(false, just_now, now), OomVerdict::Foreign);
        let later = now + OOM_EVENT_INTERVAL;
        assert_eq!(judge_oom(true, just_now, later), OomVerdict::Publish);
    }
}
