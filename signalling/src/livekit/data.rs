//! LiveKit `DataPacket` routing, handed to the SFU as its [`DataRouter`] for one participant:
//! decode, stamp the sender, honour destinations, re-encode. Rules from LiveKit's server
//! (`livekit-protocol.md` §8.3). Runs on the media thread, so it never blocks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use livekit_protocol as proto;
use prost::Message;
use switchboard_sfu::{DataKind, DataRouter, RoutedData};

/// Stamps and routes one participant's data packets.
#[derive(Debug)]
pub struct LiveKitDataRouter {
    /// Sender sid (`PA_…`).
    pub sid: String,
    /// Sender identity; empty for hidden senders.
    pub identity: String,
    /// `video.canPublishData`.
    pub can_publish_data: bool,
    /// Last reliable `sequence` seen (0 = none); replays are dropped.
    pub last_reliable_seq: u32,
    /// Messages dropped as malformed (shared with the metrics endpoint).
    pub malformed: Arc<AtomicU64>,
}

impl DataRouter for LiveKitDataRouter {
    // The deprecated `kind` and per-`UserPacket` sender fields are still read by older SDKs,
    // so they are stamped too (as LiveKit does).
    #[allow(deprecated)]
    fn route(&mut self, kind: DataKind, payload: &[u8]) -> Option<RoutedData> {
        if !self.can_publish_data {
            return None;
        }
        let Ok(mut packet) = proto::DataPacket::decode(payload) else {
            self.malformed.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if kind == DataKind::Reliable && packet.sequence > 0 {
            if packet.sequence <= self.last_reliable_seq {
                return None;
            }
            self.last_reliable_seq = packet.sequence;
        }
        packet.kind = match kind {
            DataKind::Reliable => proto::data_packet::Kind::Reliable as i32,
            DataKind::Lossy => proto::data_packet::Kind::Lossy as i32,
        };
        packet.participant_sid = self.sid.clone();
        packet.participant_identity = self.identity.clone();
        if let Some(proto::data_packet::Value::User(user)) = &mut packet.value {
            user.participant_sid = self.sid.clone();
            user.participant_identity = self.identity.clone();
            // The deprecated per-user-packet list and the packet-level list mean the same.
            for d in &user.destination_identities {
                if !packet.destination_identities.contains(d) {
                    packet.destination_identities.push(d.clone());
                }
            }
            user.destination_identities = packet.destination_identities.clone();
        }
        if matches!(packet.value, Some(proto::data_packet::Value::Metrics(_))) {
            return None;
        }
        Some(RoutedData {
            destinations: packet.destination_identities.clone(),
            payload: packet.encode_to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> LiveKitDataRouter {
        LiveKitDataRouter {
            sid: "PA_a".into(),
            identity: "alice".into(),
            can_publish_data: true,
            last_reliable_seq: 0,
            malformed: Arc::default(),
        }
    }

    fn user_packet(seq: u32, to: &[&str]) -> Vec<u8> {
        proto::DataPacket {
            participant_identity: "mallory".into(),
            sequence: seq,
            destination_identities: to.iter().map(|s| s.to_string()).collect(),
            value: Some(proto::data_packet::Value::User(proto::UserPacket {
                payload: b"hi".to_vec(),
                ..Default::default()
            })),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    #[allow(deprecated)] // checks the deprecated per-UserPacket copy too
    fn sender_identity_is_stamped_over_what_the_client_claims() {
        let out = router()
            .route(DataKind::Reliable, &user_packet(1, &[]))
            .unwrap();
        let p = proto::DataPacket::decode(out.payload.as_slice()).unwrap();
        assert_eq!(p.participant_identity, "alice");
        assert_eq!(p.participant_sid, "PA_a");
        let Some(proto::data_packet::Value::User(u)) = p.value else {
            panic!("user packet expected")
        };
        assert_eq!(u.participant_identity, "alice");
    }

    #[test]
    fn destinations_are_passed_to_the_sfu() {
        let out = router()
            .route(DataKind::Lossy, &user_packet(0, &["bob"]))
            .unwrap();
        assert_eq!(out.destinations, vec!["bob".to_string()]);
    }

    #[test]
    fn replayed_reliable_sequence_is_dropped() {
        let mut r = router();
        assert!(r.route(DataKind::Reliable, &user_packet(5, &[])).is_some());
        assert!(r.route(DataKind::Reliable, &user_packet(5, &[])).is_none());
        assert!(r.route(DataKind::Reliable, &user_packet(6, &[])).is_some());
    }

    #[test]
    fn malformed_packet_is_dropped_and_counted() {
        let mut r = router();
        assert!(r.route(DataKind::Reliable, &[0xff, 0xff, 0xff]).is_none());
        assert_eq!(r.malformed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn sender_without_publish_data_grant_is_dropped() {
        let mut r = router();
        r.can_publish_data = false;
        assert!(r.route(DataKind::Reliable, &user_packet(1, &[])).is_none());
    }
}
