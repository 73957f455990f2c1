//! Commands from the signalling adapters: joining, SDP offer/answer on both peer-connection
//! layouts, subscriptions, and removing participants.

use std::collections::HashMap;

use super::*;
use crate::sdp_munge::{self, SectionKind};
use crate::session::QueuedChange;

impl Engine {
    pub(super) fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Join(params) => self.join(params),
            Command::Offer {
                participant,
                sdp,
                pending,
            } => self.offer(participant, sdp, pending),
            Command::Answer { participant, sdp } => self.answer(participant, sdp),
            Command::Candidate {
                participant,
                role,
                candidate,
            } => {
                let Some(key) = self.session_of(participant, role) else {
                    return;
                };
                match Candidate::from_sdp_string(&candidate) {
                    Ok(c) => {
                        if let Some(s) = self.sessions.get_mut(&key) {
                            let _ = s.guard(|rtc| rtc.add_remote_candidate(c));
                            self.dirty.push(key);
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "ignoring unparseable ICE candidate"),
                }
            }
            Command::Subscribe {
                participant,
                track,
                stream_id,
                track_label,
            } => self.subscribe(participant, track, stream_id, track_label),
            Command::Unsubscribe { participant, track } => self.unsubscribe(participant, track),
            Command::SetPaused {
                participant,
                track,
                paused,
            } => {
                if let Some(sub) = self.subs.get_mut(&(participant, track)) {
                    if sub.paused != paused {
                        sub.paused = paused;
                        if !paused {
                            sub.forwarder.reset();
                            let cap = usize::from(sub.max_layer);
                            let layer = self
                                .tracks
                                .get(&track)
                                .map(|t| t.targets(Instant::now())[cap]);
                            self.request_keyframe(track, layer, KeyframeRequestKind::Pli);
                        }
                    }
                } else {
                    self.early_settings
                        .entry((participant, track))
                        .or_default()
                        .paused = Some(paused);
                }
            }
            Command::SetMaxLayer {
                participant,
                track,
                layer,
            } => match self.subs.get_mut(&(participant, track)) {
                Some(sub) => sub.max_layer = layer.min(2),
                None => {
                    self.early_settings
                        .entry((participant, track))
                        .or_default()
                        .max_layer = Some(layer.min(2));
                }
            },
            Command::Leave { participant } => self.remove_participant(participant),
        }
        self.drain_dirty();
    }

    pub(super) fn session_of(
        &self,
        participant: ParticipantId,
        role: PeerRole,
    ) -> Option<SessionKey> {
        let p = self.participants.get(&participant)?;
        match (role, p.layout) {
            (PeerRole::Publisher, _) | (PeerRole::Subscriber, PcLayout::Single) => {
                Some(p.publisher)
            }
            (PeerRole::Subscriber, _) => p.subscriber,
        }
    }

    /// After an ICE restart our local ufrag changes; STUN is routed by it.
    pub(super) fn refresh_ufrag(&mut self, key: SessionKey) {
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let Ok(ufrag) = session.guard(|rtc| rtc.direct_api().local_ice_credentials().ufrag) else {
            return;
        };
        if ufrag != session.ufrag {
            self.by_ufrag.remove(&session.ufrag);
            self.by_ufrag.insert(ufrag.clone(), key);
            session.ufrag = ufrag;
        }
    }

    pub(super) fn new_session(&mut self, participant: ParticipantId, role: PeerRole) -> SessionKey {
        let key = SessionKey(self.next_session);
        self.next_session += 1;
        let session = Session::new(participant, role, &self.candidates, Instant::now());
        self.by_ufrag.insert(session.ufrag.clone(), key);
        self.sessions.insert(key, session);
        SfuMetrics::add(&self.metrics.sessions, 1);
        key
    }

    pub(super) fn join(&mut self, params: JoinParams) {
        let JoinParams {
            participant,
            room,
            identity,
            events,
            data_router,
            layout,
        } = params;
        if self.participants.contains_key(&participant) {
            return;
        }
        let publisher = self.new_session(participant, PeerRole::Publisher);
        if let Some(s) = self.sessions.get_mut(&publisher) {
            s.single = layout == PcLayout::Single;
        }
        let subscriber =
            (layout == PcLayout::Dual).then(|| self.new_session(participant, PeerRole::Subscriber));
        self.rooms
            .entry(room.clone())
            .or_default()
            .push(participant);
        self.participants.insert(
            participant,
            Participant {
                room,
                identity,
                events,
                router: data_router,
                publisher,
                subscriber,
                layout,
                published: Vec::new(),
                subscribed: Vec::new(),
            },
        );
        SfuMetrics::add(&self.metrics.participants, 1);
        if let Some(key) = subscriber {
            let Some(session) = self.sessions.get_mut(&key) else {
                return;
            };
            let offered = session.guard(|rtc| {
                let mut api = rtc.sdp_api();
                api.add_channel("_reliable".into());
                api.add_channel_with_config(ChannelConfig {
                    label: "_lossy".into(),
                    ordered: false,
                    reliability: Reliability::MaxRetransmits { retransmits: 0 },
                    ..Default::default()
                });
                api.apply()
            });
            match offered {
                Ok(Some((offer, pending))) => {
                    session.pending_offer = Some(pending);
                    self.emit(
                        participant,
                        SfuEvent::Offer {
                            sdp: offer.to_sdp_string(),
                            mid_to_track: Vec::new(),
                        },
                    );
                }
                Ok(None) => {}
                Err(_) => self.session_panicked(participant),
            }
        }
    }

    pub(super) fn offer(
        &mut self,
        participant: ParticipantId,
        sdp: String,
        pending: Vec<crate::PendingTrack>,
    ) {
        let Some(key) = self.session_of(participant, PeerRole::Publisher) else {
            return;
        };
        let single = self.sessions.get(&key).is_some_and(|s| s.single);
        let sdp = if single {
            self.assign_recv_slots(participant, key, &sdp)
        } else {
            sdp
        };
        let offer = match SdpOffer::from_sdp_string(&sdp) {
            Ok(o) => o,
            Err(e) => {
                self.emit(
                    participant,
                    SfuEvent::NegotiationFailed {
                        role: PeerRole::Publisher,
                        reason: format!("bad offer SDP: {e}"),
                    },
                );
                return;
            }
        };
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        // Keep pending tracks of earlier offers that are still unbound, add the new ones.
        for p in pending {
            if !session.pending.iter().any(|q| q.track == p.track)
                && !session.mid_tracks.values().any(|t| *t == p.track)
            {
                session.pending.push(p);
            }
        }
        match session.guard(|rtc| rtc.sdp_api().accept_offer(offer)) {
            Ok(Ok(answer)) => {
                self.refresh_ufrag(key);
                let (sdp, mid_to_track) = if single {
                    self.answered_recv_slots(participant, key, answer.to_sdp_string())
                } else {
                    (answer.to_sdp_string(), Vec::new())
                };
                self.emit(
                    participant,
                    SfuEvent::Answer {
                        role: PeerRole::Publisher,
                        sdp,
                        mid_to_track,
                    },
                );
                self.dirty.push(key);
                if single {
                    self.request_sections(participant, key);
                }
            }
            Ok(Err(e)) => self.emit(
                participant,
                SfuEvent::NegotiationFailed {
                    role: PeerRole::Publisher,
                    reason: format!("offer rejected: {e}"),
                },
            ),
            Err(_) => self.session_panicked(participant),
        }
    }

    pub(super) fn answer(&mut self, participant: ParticipantId, sdp: String) {
        let Some(key) = self.session_of(participant, PeerRole::Subscriber) else {
            return;
        };
        let answer = match SdpAnswer::from_sdp_string(&sdp) {
            Ok(a) => a,
            Err(e) => {
                self.emit(
                    participant,
                    SfuEvent::NegotiationFailed {
                        role: PeerRole::Subscriber,
                        reason: format!("bad answer SDP: {e}"),
                    },
                );
                return;
            }
        };
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let Some(pending) = session.pending_offer.take() else {
            tracing::debug!("answer without an outstanding offer ignored");
            return;
        };
        match session.guard(|rtc| rtc.sdp_api().accept_answer(pending, answer)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.emit(
                    participant,
                    SfuEvent::NegotiationFailed {
                        role: PeerRole::Subscriber,
                        reason: format!("answer rejected: {e}"),
                    },
                );
                return;
            }
            Err(_) => {
                self.session_panicked(participant);
                return;
            }
        }
        self.dirty.push(key);
        // Every subscription with a negotiated media section is ready to receive.
        let mut woken = Vec::new();
        for (mid, track) in &session.mid_subs {
            if let Some(sub) = self.subs.get_mut(&(participant, *track)) {
                if !sub.ready && sub.mid == Some(*mid) {
                    sub.ready = true;
                    woken.push((*track, usize::from(sub.max_layer)));
                }
            }
        }
        let now = Instant::now();
        for (track, cap) in woken {
            let layer = self.tracks.get(&track).map(|t| t.targets(now)[cap]);
            self.request_keyframe(track, layer, KeyframeRequestKind::Pli);
        }
        self.renegotiate(key);
    }

    pub(super) fn subscribe(
        &mut self,
        participant: ParticipantId,
        track_id: TrackId,
        stream_id: String,
        track_label: String,
    ) {
        if self.subs.contains_key(&(participant, track_id)) {
            return;
        }
        let Some(key) = self.session_of(participant, PeerRole::Subscriber) else {
            return;
        };
        let Some(track) = self.tracks.get_mut(&track_id) else {
            return;
        };
        if track.publisher == participant {
            return;
        }
        let video = track.kind == TrackKind::Video;
        let clock = if video { 90_000 } else { 48_000 };
        track.subscribers.push(participant);
        let first_seq = rand::random::<u16>() & 0x3fff;
        let early = self
            .early_settings
            .remove(&(participant, track_id))
            .unwrap_or_default();
        self.subs.insert(
            (participant, track_id),
            Subscription {
                session: key,
                stream_id: stream_id.clone(),
                track_label: track_label.clone(),
                mid: None,
                ready: false,
                paused: early.paused.unwrap_or(false),
                max_layer: early.max_layer.unwrap_or(2),
                forwarder: Forwarder::new(video, clock, first_seq),
                pt_cache: None,
            },
        );
        if let Some(p) = self.participants.get_mut(&participant) {
            p.subscribed.push(track_id);
        }
        SfuMetrics::add(&self.metrics.subscriptions, 1);
        if self.sessions.get(&key).is_some_and(|s| s.single) {
            self.request_sections(participant, key);
            return;
        }
        if let Some(s) = self.sessions.get_mut(&key) {
            s.queued.push(QueuedChange::Add {
                track: track_id,
                video,
                stream_id,
                track_label,
            });
        }
        self.renegotiate(key);
    }

    pub(super) fn unsubscribe(&mut self, participant: ParticipantId, track_id: TrackId) {
        let Some(sub) = self.subs.remove(&(participant, track_id)) else {
            return;
        };
        SfuMetrics::add(&self.metrics.subscriptions, -1);
        if let Some(t) = self.tracks.get_mut(&track_id) {
            t.subscribers.retain(|p| *p != participant);
        }
        if let Some(p) = self.participants.get_mut(&participant) {
            p.subscribed.retain(|t| *t != track_id);
        }
        if let Some(s) = self.sessions.get_mut(&sub.session) {
            if s.single {
                // The section is answered inactive on the client's next offer, then reusable;
                // a later track on it continues this outgoing stream.
                if let Some(mid) = sub.mid {
                    s.mid_subs.remove(&mid);
                    if let Some(state) = sub.forwarder.state() {
                        s.mid_state.insert(mid, state);
                    }
                    s.reoffer_requested = true;
                    self.emit(participant, SfuEvent::NeedOffer { audio: 0, video: 0 });
                }
                return;
            }
            s.queued
                .retain(|c| !matches!(c, QueuedChange::Add { track, .. } if *track == track_id));
            if let Some(mid) = sub.mid {
                s.mid_subs.remove(&mid);
                s.queued.push(QueuedChange::Remove { mid });
            }
        }
        self.renegotiate(sub.session);
    }

    /// Starts a new subscriber offer with the queued changes, unless one is outstanding.
    pub(super) fn renegotiate(&mut self, key: SessionKey) {
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        if session.pending_offer.is_some() || session.queued.is_empty() {
            return;
        }
        let participant = session.participant;
        let queued = std::mem::take(&mut session.queued);
        let mut added: Vec<(Mid, TrackId)> = Vec::new();
        let result = session.guard(|rtc| {
            let mut api = rtc.sdp_api();
            for change in queued {
                match change {
                    QueuedChange::Add {
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
                        added.push((mid, track));
                    }
                    QueuedChange::Remove { mid } => api.set_direction(mid, Direction::Inactive),
                }
            }
            api.apply()
        });
        match result {
            Ok(Some((offer, pending))) => {
                session.pending_offer = Some(pending);
                for (mid, track) in &added {
                    session.mid_subs.insert(*mid, *track);
                    if let Some(sub) = self.subs.get_mut(&(participant, *track)) {
                        sub.mid = Some(*mid);
                    }
                }
                let mid_to_track = session
                    .mid_subs
                    .iter()
                    .map(|(m, t)| (m.to_string(), *t))
                    .collect();
                self.emit(
                    participant,
                    SfuEvent::Offer {
                        sdp: offer.to_sdp_string(),
                        mid_to_track,
                    },
                );
                self.dirty.push(key);
            }
            Ok(None) => {}
            Err(_) => self.session_panicked(participant),
        }
    }

    /// A published track is gone: every subscription to it ends.
    pub(super) fn end_track(&mut self, track_id: TrackId) {
        let Some(track) = self.tracks.remove(&track_id) else {
            return;
        };
        SfuMetrics::add(&self.metrics.published_tracks, -1);
        if let Some(s) = self.sessions.get_mut(&track.session) {
            s.mid_tracks.remove(&track.mid);
            s.ssrc_map.retain(|_, (t, _)| *t != track_id);
        }
        if let Some(p) = self.participants.get_mut(&track.publisher) {
            p.published.retain(|t| *t != track_id);
        }
        for sub in &track.subscribers {
            // Re-insert a placeholder so `unsubscribe` finds the track's subscriber list gone.
            self.unsubscribe(*sub, track_id);
        }
        self.emit(track.publisher, SfuEvent::TrackEnded { track: track_id });
    }

    pub(super) fn session_panicked(&mut self, participant: ParticipantId) {
        SfuMetrics::inc(&self.metrics.session_panics);
        tracing::error!(
            participant = participant.0,
            "webrtc session panicked; participant removed"
        );
        self.fail_participant(participant, PeerRole::Publisher, "internal error".into());
    }

    pub(super) fn fail_participant(
        &mut self,
        participant: ParticipantId,
        role: PeerRole,
        reason: String,
    ) {
        self.end_participant(participant, role, reason, false);
    }

    pub(super) fn end_participant(
        &mut self,
        participant: ParticipantId,
        role: PeerRole,
        reason: String,
        by_peer: bool,
    ) {
        if !self.participants.contains_key(&participant) {
            return;
        }
        tracing::info!(participant = participant.0, ?role, %reason, "peer connection ended");
        self.emit(
            participant,
            SfuEvent::Failed {
                role,
                reason,
                by_peer,
            },
        );
        self.remove_participant(participant);
    }

    pub(super) fn remove_participant(&mut self, participant: ParticipantId) {
        let Some(p) = self.participants.get(&participant) else {
            return;
        };
        let published = p.published.clone();
        let subscribed = p.subscribed.clone();
        self.early_settings.retain(|(p, _), _| *p != participant);
        for track in published {
            self.end_track(track);
        }
        for track in subscribed {
            self.unsubscribe(participant, track);
        }
        let Some(p) = self.participants.remove(&participant) else {
            return;
        };
        SfuMetrics::add(&self.metrics.participants, -1);
        if let Some(members) = self.rooms.get_mut(&p.room) {
            members.retain(|m| *m != participant);
            if members.is_empty() {
                self.rooms.remove(&p.room);
            }
        }
        for key in std::iter::once(p.publisher).chain(p.subscriber) {
            if let Some(mut s) = self.sessions.remove(&key) {
                let _ = s.guard(|rtc| rtc.disconnect());
                self.by_ufrag.remove(&s.ufrag);
                for addr in &s.addrs {
                    if self.by_addr.get(addr) == Some(&key) {
                        self.by_addr.remove(addr);
                    }
                }
                SfuMetrics::add(&self.metrics.sessions, -1);
            }
        }
    }

    // ------------------------------------------------------------ single-PC layout

    /// Before a single-PC offer is applied: remembers the client's receive-only sections, puts
    /// every subscription without one on a free section of its kind, and returns the offer with
    /// the sections that stay unused turned `inactive`.
    fn assign_recv_slots(
        &mut self,
        participant: ParticipantId,
        key: SessionKey,
        sdp: &str,
    ) -> String {
        let Some(session) = self.sessions.get_mut(&key) else {
            return sdp.to_string();
        };
        session.recv_slots = sdp_munge::recv_slots(sdp);
        session.requested = (0, 0);
        session.reoffer_requested = false;
        // Sections the client no longer offers as receive-only lose their track.
        let gone: Vec<Mid> = session
            .mid_subs
            .keys()
            .filter(|m| !session.recv_slots.iter().any(|s| s.mid == m.to_string()))
            .copied()
            .collect();
        for mid in gone {
            if let Some(track) = session.mid_subs.remove(&mid) {
                if let Some(sub) = self.subs.get_mut(&(participant, track)) {
                    sub.mid = None;
                    sub.ready = false;
                }
            }
        }
        let subscribed = self
            .participants
            .get(&participant)
            .map(|p| p.subscribed.clone())
            .unwrap_or_default();
        for track in subscribed {
            let Some(sub) = self.subs.get_mut(&(participant, track)) else {
                continue;
            };
            if sub.mid.is_some() {
                continue;
            }
            let kind = match self.tracks.get(&track).map(|t| t.kind) {
                Some(TrackKind::Audio) => SectionKind::Audio,
                Some(TrackKind::Video) => SectionKind::Video,
                None => continue,
            };
            let free = session.recv_slots.iter().find(|s| {
                s.kind == kind && !session.mid_subs.keys().any(|m| m.to_string() == s.mid)
            });
            if let Some(slot) = free {
                let mid = Mid::from(slot.mid.as_str());
                session.mid_subs.insert(mid, track);
                sub.mid = Some(mid);
                sub.ready = false;
                if let Some(last) = session.mid_state.get(&mid) {
                    let video = kind == SectionKind::Video;
                    let clock = if video { 90_000 } else { 48_000 };
                    sub.forwarder = Forwarder::continuing(video, clock, *last);
                }
            }
        }
        let keep: Vec<String> = session.mid_subs.keys().map(|m| m.to_string()).collect();
        let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
        sdp_munge::deactivate_unused(sdp, &keep)
    }

    /// After a single-PC offer was answered: names the carried tracks in the answer's msids,
    /// marks their subscriptions ready (asking publishers for keyframes) and returns the answer
    /// with its mid → track map.
    fn answered_recv_slots(
        &mut self,
        participant: ParticipantId,
        key: SessionKey,
        answer: String,
    ) -> (String, Vec<(String, TrackId)>) {
        let Some(session) = self.sessions.get(&key) else {
            return (answer, Vec::new());
        };
        let mut msids = HashMap::new();
        let mut mid_to_track = Vec::new();
        let mut woken = Vec::new();
        for (mid, track) in &session.mid_subs {
            let Some(sub) = self.subs.get_mut(&(participant, *track)) else {
                continue;
            };
            msids.insert(
                mid.to_string(),
                (sub.stream_id.clone(), sub.track_label.clone()),
            );
            mid_to_track.push((mid.to_string(), *track));
            if !sub.ready {
                sub.ready = true;
                sub.forwarder.reset();
                woken.push(*track);
            }
        }
        for track in woken {
            self.request_keyframe(track, None, KeyframeRequestKind::Pli);
        }
        (sdp_munge::set_msids(&answer, &msids), mid_to_track)
    }

    /// Asks the client for the receive-only sections its unplaced subscriptions need, or just
    /// for a new offer when free sections exist.
    fn request_sections(&mut self, participant: ParticipantId, key: SessionKey) {
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        let Some(p) = self.participants.get(&participant) else {
            return;
        };
        let (mut want_a, mut want_v) = (0u32, 0u32);
        for track in &p.subscribed {
            let unplaced = self
                .subs
                .get(&(participant, *track))
                .is_some_and(|s| s.mid.is_none());
            if !unplaced {
                continue;
            }
            match self.tracks.get(track).map(|t| t.kind) {
                Some(TrackKind::Audio) => want_a += 1,
                Some(TrackKind::Video) => want_v += 1,
                None => {}
            }
        }
        if want_a == 0 && want_v == 0 {
            return;
        }
        let free = |kind: SectionKind| {
            session
                .recv_slots
                .iter()
                .filter(|s| {
                    s.kind == kind && !session.mid_subs.keys().any(|m| m.to_string() == s.mid)
                })
                .count() as u32
        };
        let need_a = want_a.saturating_sub(free(SectionKind::Audio) + session.requested.0);
        let need_v = want_v.saturating_sub(free(SectionKind::Video) + session.requested.1);
        if need_a > 0 || need_v > 0 {
            session.requested.0 += need_a;
            session.requested.1 += need_v;
            session.reoffer_requested = true;
            let _ = p.events.send(SfuEvent::NeedOffer {
                audio: need_a,
                video: need_v,
            });
        } else if !session.reoffer_requested {
            session.reoffer_requested = true;
            let _ = p.events.send(SfuEvent::NeedOffer { audio: 0, video: 0 });
        }
    }
}
