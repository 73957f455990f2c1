//! The LiveKit edge of the roster: parses LiveKit's wire input (`AddTrackRequest`, token
//! grants) into the roster's neutral types, and renders roster data as LiveKit messages
//! (`ParticipantInfo`, `TrackInfo`, `Room`, `ParticipantUpdate`). A participant who joined
//! through another adapter renders with LiveKit's defaults for what only LiveKit knows.

use livekit_api::access_token::VideoGrants;
use livekit_protocol as proto;
use proto::signal_response::Message as Resp;
use switchboard_sfu::{TrackId, TrackKind};

use crate::ids::TrackSid;
use crate::rooms::{
    AdapterData, Encryption, LeaveReason, Participant, ParticipantKind, ParticipantState,
    Permissions, RoomInfo, Track, TrackSource, VideoLayer,
};

/// What only LiveKit knows about a participant.
#[derive(Debug, Clone, Default)]
pub struct LiveKitParticipant {
    /// The client's `client_protocol`.
    pub client_protocol: i32,
}

/// What only LiveKit knows about a track, echoed back as the publisher announced it.
#[derive(Debug, Clone, Default)]
pub struct LiveKitTrack {
    /// `disable_red`.
    pub disable_red: bool,
    /// `audio_features` (`AudioTrackFeature` values).
    pub audio_features: Vec<i32>,
    /// `backup_codec_policy`.
    pub backup_codec_policy: i32,
}

/// A `ParticipantUpdate` message.
pub fn update(participants: Vec<proto::ParticipantInfo>) -> Resp {
    Resp::Update(proto::ParticipantUpdate { participants })
}

/// A participant as LiveKit clients see it.
pub fn participant_info(p: &Participant) -> proto::ParticipantInfo {
    let joined = p
        .joined_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let lk = p.adapter.get::<LiveKitParticipant>();
    proto::ParticipantInfo {
        sid: p.sid.to_string(),
        identity: p.identity.to_string(),
        name: p.name.clone(),
        metadata: p.metadata.clone(),
        attributes: p.attributes.clone(),
        state: state(p.state) as i32,
        tracks: p.tracks.iter().map(track_info).collect(),
        joined_at: joined.as_secs() as i64,
        joined_at_ms: joined.as_millis() as i64,
        version: p.version,
        permission: Some(permission(&p.permissions)),
        is_publisher: p.is_publisher,
        kind: kind(p.kind) as i32,
        client_protocol: lk.map_or(0, |l| l.client_protocol),
        ..Default::default()
    }
}

/// A participant's last snapshot, with why it left.
pub fn departed_info(p: &Participant, reason: LeaveReason) -> proto::ParticipantInfo {
    proto::ParticipantInfo {
        disconnect_reason: disconnect_reason(reason) as i32,
        ..participant_info(p)
    }
}

/// A track as LiveKit clients see it.
// `simulcast` and `layers` are deprecated but clients before 2.x and the Rust SDK read them.
#[allow(deprecated)]
pub fn track_info(t: &Track) -> proto::TrackInfo {
    let lk = t.adapter.get::<LiveKitTrack>().cloned().unwrap_or_default();
    let layers: Vec<proto::VideoLayer> = t.layers.iter().map(video_layer).collect();
    proto::TrackInfo {
        sid: t.sid.to_string(),
        r#type: match t.kind {
            TrackKind::Audio => proto::TrackType::Audio,
            TrackKind::Video => proto::TrackType::Video,
        } as i32,
        name: t.name.clone(),
        muted: t.muted,
        width: t.width,
        height: t.height,
        simulcast: layers.len() > 1,
        source: source(t.source) as i32,
        layers: layers.clone(),
        mime_type: t.mime.clone(),
        codecs: vec![proto::SimulcastCodecInfo {
            mime_type: t.mime.clone(),
            cid: t.cid.clone(),
            layers,
            ..Default::default()
        }],
        disable_red: lk.disable_red,
        encryption: match t.encryption {
            Encryption::None => proto::encryption::Type::None,
            Encryption::Gcm => proto::encryption::Type::Gcm,
            Encryption::Custom => proto::encryption::Type::Custom,
        } as i32,
        stream: t.stream.clone(),
        audio_features: lk.audio_features,
        backup_codec_policy: lk.backup_codec_policy,
        ..Default::default()
    }
}

/// A room as LiveKit clients see it.
pub fn room(r: &RoomInfo) -> proto::Room {
    let created = r
        .created_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    proto::Room {
        sid: r.sid.to_string(),
        name: r.name.to_string(),
        empty_timeout: r.empty_timeout.as_secs() as u32,
        departure_timeout: r.departure_timeout.as_secs() as u32,
        creation_time: created.as_secs() as i64,
        creation_time_ms: created.as_millis() as i64,
        ..Default::default()
    }
}

/// A participant's permissions in LiveKit's form.
// `recorder` and `agent` are deprecated in the proto but still read by older clients.
#[allow(deprecated)]
pub fn permission(p: &Permissions) -> proto::ParticipantPermission {
    proto::ParticipantPermission {
        can_subscribe: p.can_subscribe,
        can_publish: p.can_publish,
        can_publish_data: p.can_publish_data,
        can_publish_sources: p
            .can_publish_sources
            .iter()
            .map(|s| source(*s) as i32)
            .collect(),
        hidden: p.hidden,
        recorder: p.recorder,
        can_update_metadata: p.can_update_metadata,
        agent: p.agent,
        ..Default::default()
    }
}

/// The permissions a token's video grant gives (unknown source names are ignored).
pub fn permissions(video: &VideoGrants) -> Permissions {
    Permissions {
        can_subscribe: video.can_subscribe(),
        can_publish: video.can_publish(),
        can_publish_data: video.can_publish_data(),
        can_publish_sources: video
            .can_publish_sources
            .iter()
            .filter_map(|s| source_from_name(s))
            .collect(),
        can_update_metadata: video.can_update_own_metadata(),
        hidden: video.hidden,
        recorder: video.recorder,
        agent: video.agent,
    }
}

/// The token's `kind` claim.
pub fn kind_from_name(name: &str) -> ParticipantKind {
    match name {
        "ingress" => ParticipantKind::Ingress,
        "egress" => ParticipantKind::Egress,
        "sip" => ParticipantKind::Sip,
        "agent" => ParticipantKind::Agent,
        _ => ParticipantKind::Standard,
    }
}

/// A track from an `AddTrackRequest` whose type is `kind`: layers sorted by quality, the
/// announced codec (the negotiated one replaces it when media arrives).
pub fn track_from_request(
    add: &proto::AddTrackRequest,
    kind: TrackKind,
    sid: TrackSid,
    media: TrackId,
) -> Track {
    let mut layers: Vec<VideoLayer> = add.layers.iter().map(neutral_layer).collect();
    layers.sort_by_key(|l| l.quality);
    let mime = match kind {
        TrackKind::Audio => "audio/opus".to_string(),
        TrackKind::Video => add
            .simulcast_codecs
            .first()
            .map(|c| video_mime(&c.codec))
            .unwrap_or_else(|| "video/VP8".into()),
    };
    Track {
        sid,
        media,
        kind,
        source: source_of(add.source),
        name: add.name.clone(),
        muted: add.muted,
        width: add.width,
        height: add.height,
        mime,
        cid: add.cid.clone(),
        layers,
        encryption: match proto::encryption::Type::try_from(add.encryption) {
            Ok(proto::encryption::Type::None) => Encryption::None,
            Ok(proto::encryption::Type::Gcm) => Encryption::Gcm,
            // an encryption this server does not know is still encryption
            Ok(proto::encryption::Type::Custom) | Err(_) => Encryption::Custom,
        },
        stream: add.stream.clone(),
        adapter: AdapterData::new(LiveKitTrack {
            disable_red: add.disable_red,
            audio_features: add.audio_features.clone(),
            backup_codec_policy: add.backup_codec_policy,
        }),
    }
}

/// A track's source as LiveKit names it in `AddTrackRequest.source`.
pub fn source_of(add_source: i32) -> TrackSource {
    proto::TrackSource::try_from(add_source)
        .map(neutral_source)
        .unwrap_or_default()
}

/// Why a participant left, as LiveKit says it.
pub fn disconnect_reason(r: LeaveReason) -> proto::DisconnectReason {
    use proto::DisconnectReason as D;
    match r {
        LeaveReason::ClientInitiated => D::ClientInitiated,
        LeaveReason::DuplicateIdentity => D::DuplicateIdentity,
        LeaveReason::ServerShutdown => D::ServerShutdown,
        LeaveReason::ParticipantRemoved => D::ParticipantRemoved,
        LeaveReason::RoomDeleted => D::RoomDeleted,
        LeaveReason::JoinFailure => D::JoinFailure,
        LeaveReason::SignalClose => D::SignalClose,
        LeaveReason::MediaFailure => D::MediaFailure,
    }
}

/// LiveKit's form of a simulcast layer.
pub fn video_layer(l: &VideoLayer) -> proto::VideoLayer {
    proto::VideoLayer {
        quality: l.quality,
        width: l.width,
        height: l.height,
        bitrate: l.bitrate,
        ssrc: l.ssrc,
        spatial_layer: l.spatial_layer,
        rid: l.rid.clone(),
        repair_ssrc: l.repair_ssrc,
    }
}

fn neutral_layer(l: &proto::VideoLayer) -> VideoLayer {
    VideoLayer {
        quality: l.quality,
        width: l.width,
        height: l.height,
        bitrate: l.bitrate,
        ssrc: l.ssrc,
        spatial_layer: l.spatial_layer,
        rid: l.rid.clone(),
        repair_ssrc: l.repair_ssrc,
    }
}

fn state(s: ParticipantState) -> proto::participant_info::State {
    use proto::participant_info::State as S;
    match s {
        ParticipantState::Joining => S::Joining,
        ParticipantState::Joined => S::Joined,
        ParticipantState::Active => S::Active,
        ParticipantState::Disconnected => S::Disconnected,
    }
}

fn kind(k: ParticipantKind) -> proto::participant_info::Kind {
    use proto::participant_info::Kind as K;
    match k {
        ParticipantKind::Standard => K::Standard,
        ParticipantKind::Ingress => K::Ingress,
        ParticipantKind::Egress => K::Egress,
        ParticipantKind::Sip => K::Sip,
        ParticipantKind::Agent => K::Agent,
    }
}

fn source(s: TrackSource) -> proto::TrackSource {
    match s {
        TrackSource::Unknown => proto::TrackSource::Unknown,
        TrackSource::Camera => proto::TrackSource::Camera,
        TrackSource::Microphone => proto::TrackSource::Microphone,
        TrackSource::ScreenShare => proto::TrackSource::ScreenShare,
        TrackSource::ScreenShareAudio => proto::TrackSource::ScreenShareAudio,
    }
}

fn neutral_source(s: proto::TrackSource) -> TrackSource {
    match s {
        proto::TrackSource::Unknown => TrackSource::Unknown,
        proto::TrackSource::Camera => TrackSource::Camera,
        proto::TrackSource::Microphone => TrackSource::Microphone,
        proto::TrackSource::ScreenShare => TrackSource::ScreenShare,
        proto::TrackSource::ScreenShareAudio => TrackSource::ScreenShareAudio,
    }
}

fn source_from_name(name: &str) -> Option<TrackSource> {
    match name {
        "camera" => Some(TrackSource::Camera),
        "microphone" => Some(TrackSource::Microphone),
        "screen_share" => Some(TrackSource::ScreenShare),
        "screen_share_audio" => Some(TrackSource::ScreenShareAudio),
        _ => None,
    }
}

fn video_mime(codec: &str) -> String {
    match codec.to_ascii_lowercase().as_str() {
        "h264" => "video/H264".into(),
        "vp9" => "video/VP9".into(),
        "av1" => "video/AV1".into(),
        "h265" => "video/H265".into(),
        _ => "video/VP8".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add_request() -> proto::AddTrackRequest {
        proto::AddTrackRequest {
            cid: "cam-1".into(),
            name: "camera".into(),
            r#type: proto::TrackType::Video as i32,
            width: 1280,
            height: 720,
            source: proto::TrackSource::Camera as i32,
            layers: [(2, 1280, 720, "f"), (0, 320, 180, "q"), (1, 640, 360, "h")]
                .iter()
                .map(|&(quality, width, height, rid)| proto::VideoLayer {
                    quality,
                    width,
                    height,
                    rid: rid.into(),
                    ..Default::default()
                })
                .collect(),
            simulcast_codecs: vec![proto::SimulcastCodec {
                codec: "h264".into(),
                ..Default::default()
            }],
            encryption: proto::encryption::Type::Gcm as i32,
            stream: "camera".into(),
            disable_red: true,
            audio_features: vec![1],
            backup_codec_policy: 2,
            ..Default::default()
        }
    }

    #[test]
    #[allow(deprecated)] // checks the deprecated `layers` and `simulcast` too
    fn a_published_track_renders_what_its_publisher_announced() {
        let sid = TrackSid::generate();
        let t = track_from_request(&add_request(), TrackKind::Video, sid.clone(), TrackId(7));
        let info = track_info(&t);
        assert_eq!(info.sid, sid.as_str());
        assert_eq!(info.r#type, proto::TrackType::Video as i32);
        assert_eq!(info.source, proto::TrackSource::Camera as i32);
        assert_eq!((info.width, info.height), (1280, 720));
        assert_eq!(info.mime_type, "video/H264");
        assert!(info.simulcast);
        let rids: Vec<&str> = info.layers.iter().map(|l| l.rid.as_str()).collect();
        assert_eq!(rids, ["q", "h", "f"], "layers sorted by quality");
        assert_eq!(info.codecs.len(), 1);
        assert_eq!(info.codecs[0].cid, "cam-1");
        assert_eq!(info.codecs[0].layers, info.layers);
        assert_eq!(info.encryption, proto::encryption::Type::Gcm as i32);
        assert_eq!(info.stream, "camera");
        assert!(info.disable_red);
        assert_eq!(info.audio_features, vec![1]);
        assert_eq!(info.backup_codec_policy, 2);
    }

    #[test]
    fn a_participant_of_another_adapter_renders_with_livekit_defaults() {
        let p = Participant {
            id: switchboard_sfu::ParticipantId(1),
            sid: crate::ids::ParticipantSid::generate(),
            identity: "@alice:example.org".into(),
            name: "Alice".into(),
            metadata: String::new(),
            attributes: Default::default(),
            state: ParticipantState::Active,
            joined_at: std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_500),
            version: 3,
            permissions: Permissions {
                can_publish: true,
                ..Default::default()
            },
            kind: ParticipantKind::Sip,
            tracks: Vec::new(),
            is_publisher: false,
            adapter: AdapterData::default(),
        };
        let info = participant_info(&p);
        assert_eq!(info.identity, "@alice:example.org");
        assert_eq!(info.state, proto::participant_info::State::Active as i32);
        assert_eq!((info.joined_at, info.joined_at_ms), (1, 1_500));
        assert_eq!(info.kind, proto::participant_info::Kind::Sip as i32);
        assert_eq!(info.client_protocol, 0);
        assert!(info.permission.is_some_and(|p| p.can_publish));
        let gone = departed_info(&p, LeaveReason::DuplicateIdentity);
        assert_eq!(
            gone.disconnect_reason,
            proto::DisconnectReason::DuplicateIdentity as i32
        );
    }
}
