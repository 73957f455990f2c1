//! The webrtc 0.21 peer connection ([`super::peer::Stack::Webrtc`]): a different WebRTC
//! implementation from the server's str0m, so the server is measured against a stranger.
//!
//! Each connection runs its own driver task (ICE, DTLS, SRTP, interceptors: NACK, RTCP
//! reports, TWCC feedback) on the tool's runtime. Its events, every received RTP payload and
//! every keyframe request reach the participant's task over one unbounded channel, where
//! [`WebrtcPeer::poll`] hands them to the shared code. Publishers write raw RTP through
//! [`TrackLocalStaticRTP`]: Opus on one track, VP8 simulcast as one track with three rid
//! encodings, each packet carrying the `mid` and `rid` header extensions as a browser's do.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::sansio::Protocol;
use tokio::sync::{mpsc, watch};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCIceCandidateInit, RTCIceGatheringState, RTCPeerConnectionState,
    RTCSessionDescription, Registry, SettingEngineBuilder, StatsSelector,
};

use super::participant::ParticipantError;
use super::peer::{PeerEvent, PublishSpec};
use super::tx::OutPacket;

/// How long the first local description may take to gather its host candidate.
const GATHER_TIMEOUT: Duration = Duration::from_secs(10);
/// Events handled per [`WebrtcPeer::poll`], so signalling is not starved.
const POLL_BATCH: usize = 512;
/// Opus and VP8 payload types we offer (the answer may renumber; we read them back).
const OPUS_PT: u8 = 111;
const VP8_PT: u8 = 96;
const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";

/// The SRTP profile and DTLS cipher the first webrtc connection negotiated.
static SRTP: OnceLock<String> = OnceLock::new();

/// One webrtc peer connection.
pub struct WebrtcPeer {
    pc: Arc<dyn PeerConnection>,
    events: mpsc::UnboundedReceiver<Msg>,
    events_tx: mpsc::UnboundedSender<Msg>,
    gathered: watch::Receiver<bool>,
    /// A message [`WebrtcPeer::ready`] took off the channel, not yet handled.
    waiting: VecDeque<Msg>,
    /// Per stream index of the [`PublishSpec`]: where its packets go (after the answer).
    routes: Vec<Option<Route>>,
    /// The tracks we publish, with the (ssrc, stream) of each encoding.
    tracks: Vec<(Arc<TrackLocalStaticRTP>, Vec<Encoding>)>,
}

/// One encoding of a published track: SSRC, rid (simulcast layers), stream index.
type Encoding = (u32, Option<String>, usize);

/// Where one outgoing stream's packets go.
struct Route {
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    pt: u8,
    /// Header extensions every packet carries (`mid`, and `rid` on a simulcast layer).
    extensions: Vec<(u8, Bytes)>,
}

/// What the connection's tasks tell the participant's task.
enum Msg {
    Connected,
    Failed(String),
    Rtp(Bytes, Instant),
    Keyframe(usize),
}

impl WebrtcPeer {
    /// A publisher offering `spec`'s tracks; returns it and the offer SDP.
    pub async fn publisher(
        local_ip: IpAddr,
        spec: &PublishSpec,
    ) -> Result<(Self, String), ParticipantError> {
        let mut peer = Self::new(local_ip).await?;
        let base_ssrc = u32::from(super::tx::rand_u16()) << 16 | 0x1000;
        let mut next_ssrc = base_ssrc;
        let mut ssrc = || {
            next_ssrc = next_ssrc.wrapping_add(7);
            next_ssrc
        };
        if let Some((cid, stream)) = &spec.audio {
            let s = ssrc();
            let codec = opus_codec();
            let track = local_track(
                &spec.stream_id,
                cid,
                RtpCodecKind::Audio,
                vec![encoding(s, None, codec)],
            );
            peer.tracks.push((track, vec![(s, None, *stream)]));
        }
        if let Some((cid, layers)) = &spec.video {
            let mut encodings = Vec::new();
            let mut streams = Vec::new();
            for (shape, stream) in layers {
                let s = ssrc();
                encodings.push(encoding(s, Some(shape.rid), vp8_codec()));
                streams.push((s, Some(shape.rid.to_owned()), *stream));
            }
            let track = local_track(&spec.stream_id, cid, RtpCodecKind::Video, encodings);
            peer.tracks.push((track, streams));
        }
        if peer.tracks.is_empty() {
            return Err(ParticipantError::Rtc("nothing to offer".into()));
        }
        for (track, streams) in &peer.tracks {
            peer.pc
                .add_track(track.clone() as Arc<dyn TrackLocal>)
                .await
                .map_err(rtc_err)?;
            spawn_keyframe_watch(track.clone(), streams.clone(), peer.events_tx.clone());
        }
        let offer = peer.pc.create_offer(None).await.map_err(rtc_err)?;
        peer.pc
            .set_local_description(offer)
            .await
            .map_err(rtc_err)?;
        let sdp = peer.local_sdp().await?;
        Ok((peer, sdp))
    }

    /// A subscriber, waiting for an offer.
    pub async fn subscriber(local_ip: IpAddr) -> Result<Self, ParticipantError> {
        Self::new(local_ip).await
    }

    async fn new(local_ip: IpAddr) -> Result<Self, ParticipantError> {
        let mut media = MediaEngine::default();
        media
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: opus_codec(),
                    payload_type: OPUS_PT,
                },
                RtpCodecKind::Audio,
            )
            .map_err(rtc_err)?;
        media
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: vp8_codec(),
                    payload_type: VP8_PT,
                },
                RtpCodecKind::Video,
            )
            .map_err(rtc_err)?;
        // NACK, RTCP reports, TWCC feedback, and mid/rid/rrid on video, as a browser has.
        let registry =
            register_default_interceptors(Registry::new(), &mut media).map_err(rtc_err)?;
        media
            .register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: MID_URI.to_owned(),
                },
                RtpCodecKind::Audio,
                None,
            )
            .map_err(rtc_err)?;
        // Application-most: hands PLI/FIR to the track they are about.
        let registry = registry.with(Slot::from(14_000), KeyframeRequests::default());
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .build();
        let (events_tx, events) = mpsc::unbounded_channel();
        let (gathered_tx, gathered) = watch::channel(false);
        let handler = Handler {
            events: events_tx.clone(),
            gathered: gathered_tx,
        };
        let runtime = webrtc::runtime::default_runtime()
            .ok_or_else(|| ParticipantError::Rtc("no async runtime for webrtc".into()))?;
        let pc = PeerConnectionBuilder::new()
            .with_media_engine(media)
            .with_setting_engine(settings)
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(handler))
            .with_runtime(runtime)
            .with_udp_addrs(vec![SocketAddr::new(local_ip, 0).to_string()])
            .build()
            .await
            .map_err(rtc_err)?;
        Ok(Self {
            pc: Arc::new(pc),
            events,
            events_tx,
            gathered,
            waiting: VecDeque::new(),
            routes: Vec::new(),
            tracks: Vec::new(),
        })
    }

    /// Applies the answer to our offer and learns what each stream is sent with.
    pub async fn accept_answer(&mut self, sdp: &str) -> Result<(), ParticipantError> {
        let answer = RTCSessionDescription::answer(sdp.to_owned())
            .map_err(|e| ParticipantError::Rtc(format!("bad answer: {e}")))?;
        self.pc
            .set_remote_description(answer)
            .await
            .map_err(rtc_err)?;
        self.learn_routes().await
    }

    /// Applies an offer; returns the answer SDP.
    pub async fn accept_offer(&mut self, sdp: &str) -> Result<String, ParticipantError> {
        let offer = RTCSessionDescription::offer(sdp.to_owned())
            .map_err(|e| ParticipantError::Rtc(format!("bad offer: {e}")))?;
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(rtc_err)?;
        let answer = self.pc.create_answer(None).await.map_err(rtc_err)?;
        self.pc
            .set_local_description(answer)
            .await
            .map_err(rtc_err)?;
        self.local_sdp().await
    }

    /// Adds a trickled candidate; one the connection refuses is ignored (the server's SDP
    /// carries its candidates too).
    pub async fn add_remote_candidate(&mut self, candidate: &str) {
        let init = RTCIceCandidateInit {
            candidate: candidate.to_owned(),
            ..Default::default()
        };
        let _ = self.pc.add_ice_candidate(init).await;
    }

    /// Waits for the next message from the connection's tasks.
    pub async fn ready(&mut self) {
        if !self.waiting.is_empty() {
            return;
        }
        match self.events.recv().await {
            Some(m) => self.waiting.push_back(m),
            // Cannot happen while we hold a sender; never wake for it.
            None => std::future::pending().await,
        }
    }

    /// Hands what the connection's tasks reported to `sink` (at most a batch).
    pub fn poll(
        &mut self,
        sink: &mut dyn FnMut(PeerEvent<'_>),
    ) -> Result<Option<Instant>, ParticipantError> {
        for _ in 0..POLL_BATCH {
            let msg = match self.waiting.pop_front() {
                Some(m) => m,
                None => match self.events.try_recv() {
                    Ok(m) => m,
                    Err(_) => break,
                },
            };
            match msg {
                Msg::Rtp(payload, at) => sink(PeerEvent::Rtp {
                    payload: &payload,
                    at,
                }),
                Msg::Keyframe(stream) => sink(PeerEvent::KeyframeRequest { stream }),
                Msg::Connected => {
                    self.note_srtp();
                    sink(PeerEvent::Connected);
                }
                Msg::Failed(why) => return Err(ParticipantError::Rtc(why)),
            }
        }
        // More waiting: come back at once.
        Ok((!self.events.is_empty()).then(Instant::now))
    }

    /// Writes packets on their negotiated track, SSRC and payload type.
    pub async fn send(&mut self, packets: &mut Vec<OutPacket>) -> Result<(), ParticipantError> {
        for p in packets.drain(..) {
            let Some(Some(route)) = self.routes.get(p.stream) else {
                continue;
            };
            let mut header = rtc::rtp::Header {
                version: 2,
                marker: p.marker,
                payload_type: route.pt,
                sequence_number: p.seq as u16,
                timestamp: p.rtp_ts,
                ssrc: route.ssrc,
                ..Default::default()
            };
            for (id, value) in &route.extensions {
                header.set_extension(*id, value.clone()).map_err(rtc_err)?;
            }
            let packet = rtc::rtp::Packet {
                header,
                payload: Bytes::from(p.payload),
            };
            route.track.write_rtp(packet).await.map_err(rtc_err)?;
        }
        Ok(())
    }

    /// Closes the connection and its driver task.
    pub async fn close(self) {
        let _ = self.pc.close().await;
    }

    /// The local description once its host candidate is in it (no trickle from our side).
    async fn local_sdp(&mut self) -> Result<String, ParticipantError> {
        let gathered = tokio::time::timeout(GATHER_TIMEOUT, self.gathered.wait_for(|g| *g))
            .await
            .is_ok_and(|r| r.is_ok());
        if !gathered {
            return Err(ParticipantError::Rtc(
                "ICE gathering did not complete".into(),
            ));
        }
        self.pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .ok_or_else(|| ParticipantError::Rtc("no local description".into()))
    }

    /// After the answer: each stream's payload type, and the ids of `mid` and `rid`.
    async fn learn_routes(&mut self) -> Result<(), ParticipantError> {
        let mut routes: Vec<Option<Route>> = Vec::new();
        for t in self.pc.get_transceivers().await {
            let Ok(Some(sender)) = t.sender().await else {
                continue;
            };
            let Ok(params) = sender.get_parameters().await else {
                continue;
            };
            let mid = t.mid().await.ok().flatten();
            let ssrcs: Vec<u32> = params
                .encodings
                .iter()
                .filter_map(|e| e.rtp_coding_parameters.ssrc)
                .collect();
            let Some((track, streams)) = self
                .tracks
                .iter()
                .find(|(_, s)| s.iter().any(|(ssrc, _, _)| ssrcs.contains(ssrc)))
            else {
                continue;
            };
            let rtp = &params.rtp_parameters;
            let want = if streams.iter().any(|(_, rid, _)| rid.is_some()) {
                MIME_TYPE_VP8
            } else {
                MIME_TYPE_OPUS
            };
            let Some(pt) = rtp
                .codecs
                .iter()
                .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(want))
                .map(|c| c.payload_type)
            else {
                continue;
            };
            let ext_id = |uri: &str| {
                rtp.header_extensions
                    .iter()
                    .find(|e| e.uri == uri)
                    .and_then(|e| u8::try_from(e.id).ok())
            };
            let (mid_id, rid_id) = (ext_id(MID_URI), ext_id(RID_URI));
            for (ssrc, rid, stream) in streams {
                let mut extensions = Vec::new();
                if let (Some(id), Some(mid)) = (mid_id, &mid) {
                    extensions.push((id, Bytes::from(mid.clone())));
                }
                if let (Some(id), Some(rid)) = (rid_id, rid) {
                    extensions.push((id, Bytes::from(rid.clone())));
                }
                if routes.len() <= *stream {
                    routes.resize_with(*stream + 1, || None);
                }
                routes[*stream] = Some(Route {
                    track: track.clone(),
                    ssrc: *ssrc,
                    pt,
                    extensions,
                });
            }
        }
        self.routes = routes;
        Ok(())
    }

    /// Prints the negotiated SRTP profile once per process (stderr).
    fn note_srtp(&self) {
        if SRTP.get().is_some() {
            return;
        }
        let pc = self.pc.clone();
        tokio::spawn(async move {
            let report = pc.get_stats(Instant::now(), StatsSelector::None).await;
            if let Some(t) = report.transport() {
                let text = format!("{} / {}", t.srtp_cipher, t.dtls_cipher);
                if SRTP.set(text.clone()).is_ok() {
                    eprintln!("webrtc: negotiated SRTP / DTLS: {text}");
                }
            }
        });
    }
}

fn rtc_err(e: impl std::fmt::Display) -> ParticipantError {
    ParticipantError::Rtc(e.to_string())
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

fn vp8_codec() -> RTCRtpCodec {
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![
            fb("goog-remb", ""),
            fb("ccm", "fir"),
            fb("nack", ""),
            fb("nack", "pli"),
        ],
    }
}

fn encoding(ssrc: u32, rid: Option<&str>, codec: RTCRtpCodec) -> RTCRtpEncodingParameters {
    RTCRtpEncodingParameters {
        rtp_coding_parameters: RTCRtpCodingParameters {
            rid: rid.unwrap_or_default().to_owned(),
            ssrc: Some(ssrc),
            ..Default::default()
        },
        active: true,
        codec,
        ..Default::default()
    }
}

fn local_track(
    stream_id: &str,
    cid: &str,
    kind: RtpCodecKind,
    encodings: Vec<RTCRtpEncodingParameters>,
) -> Arc<TrackLocalStaticRTP> {
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        stream_id.to_owned(),
        cid.to_owned(),
        cid.to_owned(),
        kind,
        encodings,
    )))
}

/// Watches a published track for PLI/FIR and reports the stream asked for. The track has no
/// event channel until the answer binds it, so an empty poll waits and tries again.
fn spawn_keyframe_watch(
    track: Arc<TrackLocalStaticRTP>,
    streams: Vec<Encoding>,
    events: mpsc::UnboundedSender<Msg>,
) {
    tokio::spawn(async move {
        while !events.is_closed() {
            let Some(TrackLocalEvent::OnRtcpPacket(packets)) = track.poll().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            for p in &packets {
                let any = p.as_any();
                let mut ssrcs = Vec::new();
                if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                    ssrcs.push(pli.media_ssrc);
                }
                if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                    ssrcs.extend(fir.fir.iter().map(|e| e.ssrc));
                }
                for ssrc in ssrcs {
                    if let Some((_, _, stream)) = streams.iter().find(|(s, _, _)| *s == ssrc) {
                        let _ = events.send(Msg::Keyframe(*stream));
                    }
                }
            }
        }
    });
}

/// Connection events into the participant's channel.
struct Handler {
    events: mpsc::UnboundedSender<Msg>,
    gathered: watch::Sender<bool>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let msg = match state {
            RTCPeerConnectionState::Connected => Msg::Connected,
            RTCPeerConnectionState::Disconnected => Msg::Failed("ICE disconnected".into()),
            RTCPeerConnectionState::Failed => Msg::Failed("peer connection failed".into()),
            _ => return,
        };
        let _ = self.events.send(msg);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let events = self.events.clone();
        tokio::spawn(async move {
            while let Some(ev) = track.poll().await {
                match ev {
                    TrackRemoteEvent::OnRtpPacket(p) => {
                        let msg = Msg::Rtp(p.payload, Instant::now());
                        if events.send(msg).is_err() {
                            break;
                        }
                    }
                    TrackRemoteEvent::OnEnded | TrackRemoteEvent::OnError => break,
                    _ => {}
                }
            }
        });
    }
}

/// Marks inbound PLI and FIR for the application, so they reach the published track's
/// [`TrackLocal::poll`]; every other RTCP packet ends here, as at the end of any chain.
#[derive(Default)]
struct KeyframeRequests {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequests {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| {
                    let any = p.as_any();
                    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
                })
                .cloned()
                .collect();
            if requests.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for KeyframeRequests {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
