//! The session's SDP side: client offers and answers, server offers (`/rtc`'s subscriber PC:
//! data channels, sections added and removed), trickled candidates, and binding publisher
//! sections to announced tracks. Data-channel sends are here too.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer};
use str0m::channel::{ChannelConfig, Reliability};
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Pt};
use str0m::rtp::RtpWrite;
use str0m::Candidate;

use super::*;

impl Session {
    // ------------------------------------------------------------ negotiation

    /// Applies a client offer and returns the SDP answer. The local ufrag may change (ICE
    /// restart): read [`Session::ufrag`] after.
    pub fn accept_offer(&mut self, sdp: &str) -> Result<String, SessionError> {
        let sdp = crate::sdp_munge::no_twcc_on_received_audio(sdp);
        let offer = SdpOffer::from_sdp_string(&sdp).map_err(|e| SessionError::BadSdp {
            what: "offer",
            reason: e.to_string(),
        })?;
        let answer = self
            .guard(|rtc| rtc.sdp_api().accept_offer(offer))?
            .map_err(|e| SessionError::Rejected {
                what: "offer",
                reason: e.to_string(),
            })?;
        self.refresh_ufrag()?;
        Ok(answer.to_sdp_string())
    }

    /// Applies the client's answer to the outstanding server offer.
    pub fn accept_answer(&mut self, sdp: &str) -> Result<(), SessionError> {
        let sdp = crate::sdp_munge::no_twcc_on_received_audio(sdp);
        let answer = SdpAnswer::from_sdp_string(&sdp).map_err(|e| SessionError::BadSdp {
            what: "answer",
            reason: e.to_string(),
        })?;
        let pending = self.pending_offer.take().ok_or(SessionError::NoOffer)?;
        self.guard(|rtc| rtc.sdp_api().accept_answer(pending, answer))?
            .map_err(|e| SessionError::Rejected {
                what: "answer",
                reason: e.to_string(),
            })
    }

    /// Whether a server offer waits for its answer.
    pub fn has_pending_offer(&self) -> bool {
        self.pending_offer.is_some()
    }

    /// The first server offer of a subscriber PC: LiveKit's `_reliable` and `_lossy` channels.
    pub fn offer_data_channels(&mut self) -> Result<Option<String>, SessionError> {
        let pending = &mut self.pending_offer;
        let offered = catch_unwind(AssertUnwindSafe(|| {
            let mut api = self.rtc.sdp_api();
            api.add_channel("_reliable".into());
            api.add_channel_with_config(ChannelConfig {
                label: "_lossy".into(),
                ordered: false,
                reliability: Reliability::MaxRetransmits { retransmits: 0 },
                ..Default::default()
            });
            api.apply()
        }))
        .map_err(|_| SessionPanicked)?;
        Ok(offered.map(|(offer, p)| {
            *pending = Some(p);
            offer.to_sdp_string()
        }))
    }

    /// A server offer with `changes` applied; `None` when nothing changed. Returns the SDP and
    /// the section each added track got.
    pub fn offer_changes(
        &mut self,
        changes: Vec<SectionChange>,
    ) -> Result<Option<ServerOffer>, SessionError> {
        let mut added = Vec::new();
        let offered = self.guard(|rtc| {
            let mut api = rtc.sdp_api();
            for change in changes {
                match change {
                    SectionChange::Add {
                        track,
                        video,
                        stream_id,
                        track_label,
                    } => {
                        let kind = if video {
                            MediaKind::Video
                        } else {
                            MediaKind::Audio
                        };
                        let mid = api.add_media(
                            kind,
                            Direction::SendOnly,
                            Some(stream_id),
                            Some(track_label),
                            None,
                        );
                        added.push((Section(mid), track));
                    }
                    SectionChange::Remove { section } => {
                        api.set_direction(section.0, Direction::Inactive)
                    }
                }
            }
            api.apply()
        })?;
        Ok(offered.map(|(offer, pending)| {
            self.pending_offer = Some(pending);
            (offer.to_sdp_string(), added)
        }))
    }

    /// Adds a trickled remote candidate (`candidate:…` SDP attribute value).
    pub fn add_remote_candidate(&mut self, candidate: &str) -> Result<(), SessionError> {
        let c = Candidate::from_sdp_string(candidate)
            .map_err(|e| SessionError::BadCandidate(e.to_string()))?;
        self.guard(|rtc| rtc.add_remote_candidate(c))?;
        Ok(())
    }

    /// The msid track id (`MediaStreamTrack.id`) of a section the remote sends on, if it is
    /// still receiving.
    pub fn receiving_track_id(&self, section: Section) -> Option<String> {
        let media = self.rtc.media(section.0)?;
        media
            .direction()
            .is_receiving()
            .then(|| media.track_id().to_string())
    }

    /// Whether a publisher section is bound to a track.
    pub fn is_bound(&self, section: Section) -> bool {
        self.bound.contains_key(&section.0)
    }

    /// Binds a publisher section to `track` with simulcast `rids` (lowest first).
    pub fn bind(&mut self, section: Section, track: TrackId, rids: Vec<String>) {
        self.bound.insert(section.0, Binding { track, rids });
    }

    /// Forgets a publisher section's track.
    pub fn unbind(&mut self, section: Section) {
        if let Some(b) = self.bound.remove(&section.0) {
            self.ssrc_map.retain(|_, (t, _)| *t != b.track);
        }
    }

    /// The codec of a payload type negotiated on this PC.
    pub fn codec_of(&self, pt: u8) -> Option<Codec> {
        let pt = Pt::from(pt);
        self.rtc
            .codec_config()
            .find(|p| p.pt() == pt)
            .copied()
            .map(Codec)
    }

    /// Asks the publisher for a keyframe of a section's layer (`rid`; the whole section when the
    /// layer has no rid).
    pub fn request_keyframe(
        &mut self,
        section: Section,
        rid: Option<&str>,
        kind: KeyframeKind,
    ) -> Result<(), SessionPanicked> {
        let kind = match kind {
            KeyframeKind::Pli => KeyframeRequestKind::Pli,
            KeyframeKind::Fir => KeyframeRequestKind::Fir,
        };
        self.guard(|rtc| {
            let mut api = rtc.direct_api();
            if let Some(rx) = api.stream_rx_by_mid(section.0, rid.map(Into::into)) {
                rx.request_keyframe(kind);
            } else if let Some(rx) = api.stream_rx_by_mid(section.0, None) {
                rx.request_keyframe(kind);
            }
        })
    }

    /// Writes one forwarded RTP packet on a section this PC sends on. `codec` is the
    /// publisher's; it is mapped to this PC's payload type (cached in `pt`). Returns whether
    /// the packet was queued (false: no such section, or no matching codec).
    #[allow(clippy::too_many_arguments)]
    pub fn write_rtp(
        &mut self,
        now: Instant,
        section: Section,
        codec: &Codec,
        pt: &mut PtMapping,
        seq: u64,
        ts: u32,
        marker: bool,
        payload: Arc<[u8]>,
        nackable: bool,
    ) -> Result<bool, SessionPanicked> {
        let from = codec.0.pt();
        let out_pt = match pt.0 {
            Some((f, to)) if f == from => to,
            _ => match self.rtc.codec_config().match_params(codec.0) {
                Some(p) => {
                    pt.0 = Some((from, p.pt()));
                    p.pt()
                }
                None => return Ok(false),
            },
        };
        self.guard(|rtc| {
            let mut api = rtc.direct_api();
            match api.stream_tx_by_mid(section.0, None) {
                Some(tx) => {
                    tx.write_rtp(
                        RtpWrite::new(out_pt, seq.into(), ts, now, payload)
                            .marker(marker)
                            .nackable(nackable),
                    );
                    true
                }
                None => false,
            }
        })
        .inspect(|written| self.written += u32::from(*written))
    }

    // ------------------------------------------------------------ data

    /// Whether a LiveKit data channel of `kind` is open.
    pub fn has_channel(&self, kind: DataKind) -> bool {
        self.channel_for(kind).is_some()
    }

    /// Sends a data-channel message: reliable data is queued (up to a backlog cap) and written
    /// as SCTP buffer space allows; lossy data is written now or dropped. Returns whether the
    /// message was accepted.
    pub fn send_data(&mut self, kind: DataKind, payload: &[u8]) -> Result<bool, SessionPanicked> {
        let Some(channel) = self.channel_for(kind) else {
            return Ok(false);
        };
        match kind {
            DataKind::Reliable => {
                let queued = self.data_backlog_bytes + payload.len();
                if queued > MAX_DATA_BACKLOG_BYTES {
                    return Ok(false);
                }
                self.data_backlog_bytes = queued;
                self.data_backlog.push_back((channel, payload.to_vec()));
                self.flush_data()?;
                Ok(true)
            }
            DataKind::Lossy => {
                if !self.data_backlog.is_empty() {
                    return Ok(false);
                }
                self.guard(|rtc| {
                    rtc.channel(channel)
                        .is_some_and(|mut ch| matches!(ch.write(true, payload), Ok(true)))
                })
            }
        }
    }
}
