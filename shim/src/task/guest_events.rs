//! What the guest reports without being asked: OOM kills (published to
//! containerd as `TaskOOM`) and the guest's own log lines (agent and kernel,
//! copied into the shim log at debug level). Each is one long-polling loop
//! per sandbox that ends when the agent says it cannot answer (an older
//! agent, a gone container) or the connection closes (the VM stopped).

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

/// The shortest interval between two `TaskOOM` events of one sandbox: a
/// guest reporting OOM kills in a loop must not flood containerd's event
/// bus (one event already tells containerd and Docker the container was
/// OOM-killed).
const OOM_EVENT_INTERVAL: Duration = Duration::from_secs(1);

/// What to do with an OOM event the guest reported.
#[derive(Debug, PartialEq, Eq)]
enum OomVerdict {
    Publish,
    /// Names a container that is not this sandbox's.
    Foreign,
    /// Too soon after the last one.
    TooSoon,
}

/// The guest is not trusted: it may only report OOM kills of the sandbox's
/// own container (an empty id means that one), and not too often.
fn judge_oom(reported: &str, own: &str, last: Option<Instant>, now: Instant) -> OomVerdict {
    if !(reported.is_empty() || reported == own) {
        OomVerdict::Foreign
    } else if last.is_some_and(|last| now.duration_since(last) < OOM_EVENT_INTERVAL) {
        OomVerdict::TooSoon
    } else {
        OomVerdict::Publish
    }
}

/// Publishes `TaskOOM` for the OOM kills the guest reports in the sandbox's
/// container `container_id` (see [`judge_oom`]).
pub(super) async fn forward_oom_events(
    task: HullTask,
    container_id: String,
    agent: Arc<AgentClient>,
) {
    let mut last = None;
    loop {
        // No deadline: the call returns at the next OOM kill.
        match agent
            .get_oom_event(context::Context::default(), &GetOOMEventRequest::default())
            .await
        {
            Ok(event) => {
                let now = Instant::now();
                match judge_oom(&event.container_id, &container_id, last, now) {
                    OomVerdict::Foreign => {
                        log::warn!(
                            "{container_id}: the guest reported an OOM kill in {:?}, not a container of this sandbox: dropped",
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
                last = Some(now);
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
    fn oom_events_name_only_the_sandboxs_container_and_are_spaced() {
        let now = Instant::now();
        assert_eq!(judge_oom("", "c1", None, now), OomVerdict::Publish);
        assert_eq!(judge_oom("c1", "c1", None, now), OomVerdict::Publish);
        assert_eq!(judge_oom("other", "c1", None, now), OomVerdict::Foreign);
        let just_now = Some(now);
        assert_eq!(judge_oom("c1", "c1", just_now, now), OomVerdict::TooSoon);
        let later = now + OOM_EVENT_INTERVAL;
        assert_eq!(judge_oom("c1", "c1", just_now, later), OomVerdict::Publish);
    }
}
