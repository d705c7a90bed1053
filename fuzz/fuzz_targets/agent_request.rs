//! Every request the agent decodes from the host: arbitrary bytes as each
//! message type of hull.agent.v1 (the first byte picks the type). Decoding
//! must fail cleanly or produce a message that re-encodes.
#![no_main]

use hull_protocol::agent_api::agent;
use libfuzzer_sys::fuzz_target;
use protobuf::Message;

fn round_trip<M: Message + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(message) = M::parse_from_bytes(bytes) {
        let encoded = message.write_to_bytes().expect("a parsed message encodes");
        let again = M::parse_from_bytes(&encoded).expect("an encoded message parses");
        assert_eq!(message, again);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 12 {
        0 => round_trip::<agent::CreateContainerRequest>(bytes),
        1 => round_trip::<agent::ExecProcessRequest>(bytes),
        2 => round_trip::<agent::SignalProcessRequest>(bytes),
        3 => round_trip::<agent::WaitProcessRequest>(bytes),
        4 => round_trip::<agent::WriteStreamRequest>(bytes),
        5 => round_trip::<agent::ReadStreamRequest>(bytes),
        6 => round_trip::<agent::ResizeTtyRequest>(bytes),
        7 => round_trip::<agent::UpdateContainerRequest>(bytes),
        8 => round_trip::<agent::RemoveContainerRequest>(bytes),
        9 => round_trip::<agent::VersionRequest>(bytes),
        10 => round_trip::<agent::StatsContainerResponse>(bytes),
        _ => round_trip::<agent::ReadGuestLogRequest>(bytes),
    }
});
