//! Commands from the signalling adapters: joining a room, SDP offer/answer on both
//! peer-connection layouts, subscriptions (only ever to a track of the subscriber's own room),
//! subscription settings, and participants leaving or failing.

use std::sync::Arc;

use crate::forwarder::Forwarder;
use crate::layer::Layer;
use crate::room::{Participant, Room};
use crate::session::{KeyframeKind, SectionChange, Session, SessionError};
use crate::subscription::Subscription;
use crate::TrackId;
use crate::{Command, JoinParams, ParticipantId, PcLayout, PeerRole, PendingTrack, SfuEvent};

use super::{MediaCore, RoomKey, RouteChange, SessionRef};

impl MediaCore {
    pub(super) fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Join(params) => self.join(params),
            Command::Offer {
                participant,
                sdp,
                pending,
            } => self.with_member(participant, |core, room| {
                core.offer(room, participant, &sdp, pending)
            }),
            Command::Answer { participant, sdp } => self.with_member(participant, |core, room| {
                core.answer(room, participant, &sdp)
            }),
            Command::Candidate {
                participant,
                role,
                candidate,
            } => self.with_member(participant, |core, room| {
                let sref = core.sref(room, participant, role);
                let Some(s) = core.session_mut(sref) else {
                    return;
                };
                match s.add_remote_candidate(&candidate) {
                    Ok(()) => core.mark_dirty(sref),
                    Err(SessionError::Panicked(_)) => core.session_panicked(sref),
                    Err(e) => tracing::debug!(error = %e, "ignoring ICE candidate"),
                }
            }),
            Command::Subscribe {
                participant,
                track,
                stream_id,
                track_label,
            } => self.with_member(participant, |core, room| {
                core.subscribe(room, participant, track, stream_id, track_label)
            }),
            Command::Unsubscribe { participant, track } => self
                .with_member(participant, |core, room| {
                    core.unsubscribe(room, participant, track)
                }),
            Command::SetPaused {
                participant,
                track,
                paused,
            } => self.with_member(participant, |core, room| {
                core.set_paused(room, participant, track, paused);
                core.allocate(room, participant);
            }),
            Command::SetMaxLayer {
                participant,
                track,
                layer,
            } => self.with_member(participant, |core, room| {
                let Some(r) = core.rooms.get_mut(&room) else {
                    return;
                };
                match r
                    .tracks
                    .get_mut(&track)
                    .and_then(|t| t.subscription_mut(participant))
                {
                    Some(sub) => {
                        sub.max_layer = layer;
                        core.allocate(room, participant);
                    }
                    None => {
                        if let Some(p) = r.participants.get_mut(&participant) {
                            p.early.entry(track).or_default().max_layer = Some(layer);
                        }
                    }
                }
                core.update_dynacast(room, track);
            }),
            Command::Leave { participant } => {
                self.with_member(participant, |core, room| {
                    core.remove_participant(room, participant)
                });
            }
        }
    }

    /// Runs `f` with the room of a participant this core knows; commands for others (gone
    /// already) are ignored.
    fn with_member(&mut self, participant: ParticipantId, f: impl FnOnce(&mut Self, RoomKey)) {
        if let Some(room) = self.members.get(&participant).copied() {
            f(self, room);
        }
    }

    /// The session key of a participant's `role`, folded to `Publisher` on a single PC.
    pub(super) fn sref(
        &self,
        room: RoomKey,
        participant: ParticipantId,
        role: PeerRole,
    ) -> SessionRef {
        let single = self
            .rooms
            .get(&room)
            .and_then(|r| r.participants.get(&participant))
            .is_some_and(|p| p.layout == PcLayout::Single);
        SessionRef {
            room,
            participant,
            role: if single { PeerRole::Publisher } else { role },
        }
    }

    fn join(&mut self, params: JoinParams) {
        let JoinParams {
            participant,
            room,
            identity,
            events,
            data_router,
            layout,
        } = params;
        if self.members.contains_key(&participant) {
            return;
        }
        let key = self.room_key(&room);
        let now = self.now;
        // The PC that carries subscribed media down estimates the bandwidth towards the client.
        let bwe = self.bandwidth_estimation;
        let publisher = Session::new(&self.candidates, now, bwe && layout == PcLayout::Single);
        let subscriber =
            (layout == PcLayout::Dual).then(|| Session::new(&self.candidates, now, bwe));
        for (s, role) in std::iter::once((&publisher, PeerRole::Publisher))
            .chain(subscriber.iter().map(|s| (s, PeerRole::Subscriber)))
        {
            let sref = SessionRef {
                room: key,
                participant,
                role,
            };
            self.demux.add_ufrag(s.ufrag(), sref);
            self.route_changes
                .push_back(RouteChange::AddUfrag(s.ufrag().to_string()));
            self.timers.schedule(sref, now);
            self.stats.sessions += 1;
        }
        let has_subscriber = subscriber.is_some();
        let p = Participant::new(identity, events, data_router, layout, publisher, subscriber);
        let Some(r) = self.rooms.get_mut(&key) else {
            return;
        };
        // Who speaks now: the changes before this join never reached it.
        if let Some(speakers) = r.speakers.current() {
            p.emit(SfuEvent::SpeakersChanged {
                speakers: Arc::from(speakers),
            });
        }
        r.participants.insert(participant, p);
        self.members.insert(participant, key);
        self.stats.participants += 1;
        if has_subscriber {
            let sref = SessionRef {
                room: key,
                participant,
                role: PeerRole::Subscriber,
            };
            let Some(s) = self.session_mut(sref) else {
                return;
            };
            match s.offer_data_channels() {
                Ok(Some(sdp)) => {
                    self.emit(
                        sref,
                        SfuEvent::Offer {
                            sdp,
                            mid_to_track: Vec::new(),
                        },
                    );
                    self.mark_dirty(sref);
                }
                Ok(None) => {}
                Err(_) => self.session_panicked(sref),
            }
        }
    }

    /// The key of room `name`, creating the room if needed.
    fn room_key(&mut self, name: &Arc<str>) -> RoomKey {
        if let Some(k) = self.room_keys.get(name) {
            return *k;
        }
        let key = RoomKey(self.next_room);
        self.next_room = self.next_room.wrapping_add(1);
        self.room_keys.insert(name.clone(), key);
        self.rooms.insert(key, Room::new(name.clone()));
        self.stats.rooms += 1;
        key
    }

    fn offer(
        &mut self,
        room: RoomKey,
        participant: ParticipantId,
        sdp: &str,
        pending: Vec<PendingTrack>,
    ) {
        let sref = self.sref(room, participant, PeerRole::Publisher);
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        let single = r
            .participants
            .get(&participant)
            .is_some_and(|p| p.layout == PcLayout::Single);
        let sdp = if single {
            super::single_pc::assign_recv_slots(r, participant, sdp)
        } else {
            sdp.to_string()
        };
        let Some(p) = r.participants.get_mut(&participant) else {
            return;
        };
        // Keep pending tracks of earlier offers that are still unbound, add the new ones.
        for t in pending {
            if !p.pending.iter().any(|q| q.track == t.track) && !p.published.contains(&t.track) {
                p.pending.push(t);
            }
        }
        let old_ufrag = p.publisher.ufrag().to_string();
        let answer = match p.publisher.accept_offer(&sdp) {
            Ok(answer) => answer,
            Err(SessionError::Panicked(_)) => return self.session_panicked(sref),
            Err(e) => {
                p.emit(SfuEvent::NegotiationFailed {
                    role: PeerRole::Publisher,
                    reason: e.to_string(),
                });
                return;
            }
        };
        let new_ufrag = p.publisher.ufrag().to_string();
        let (sdp, mid_to_track, woken) = if single {
            super::single_pc::answered(r, participant, answer)
        } else {
            (answer, Vec::new(), Vec::new())
        };
        if let Some(p) = r.participants.get(&participant) {
            p.emit(SfuEvent::Answer {
                role: PeerRole::Publisher,
                sdp,
                mid_to_track,
            });
        }
        if single {
            super::single_pc::request_sections(r, participant);
        }
        if new_ufrag != old_ufrag {
            self.change_ufrag(sref, &old_ufrag, &new_ufrag);
        }
        if !woken.is_empty() {
            self.allocate(room, participant);
        }
        for track in woken {
            self.request_keyframe(room, track, None, KeyframeKind::Pli);
        }
        self.mark_dirty(sref);
    }

    /// After an ICE restart our local ufrag changes; STUN is routed by it.
    fn change_ufrag(&mut self, sref: SessionRef, old: &str, new: &str) {
        self.demux.remove_ufrag(old, sref);
        self.demux.add_ufrag(new, sref);
        self.route_changes
            .push_back(RouteChange::RemoveUfrag(old.to_string()));
        self.route_changes
            .push_back(RouteChange::AddUfrag(new.to_string()));
    }

    fn answer(&mut self, room: RoomKey, participant: ParticipantId, sdp: &str) {
        let sref = SessionRef {
            room,
            participant,
            role: PeerRole::Subscriber,
        };
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        let Some(p) = r.participants.get_mut(&participant) else {
            return;
        };
        let Some(s) = p.subscriber.as_mut() else {
            return;
        };
        match s.accept_answer(sdp) {
            Ok(()) => {}
            Err(SessionError::NoOffer) => {
                tracing::debug!("answer without an outstanding offer ignored");
                return;
            }
            Err(SessionError::Panicked(_)) => return self.session_panicked(sref),
            Err(e) => {
                p.emit(SfuEvent::NegotiationFailed {
                    role: PeerRole::Subscriber,
                    reason: e.to_string(),
                });
                return;
            }
        }
        // Every subscription with a negotiated section is ready to receive.
        let mut woken = Vec::new();
        for (section, track) in &p.plan.carried {
            if let Some(sub) = r
                .tracks
                .get_mut(track)
                .and_then(|t| t.subscription_mut(participant))
            {
                if !sub.ready && sub.section == Some(*section) {
                    sub.ready = true;
                    woken.push((*track, sub.max_layer));
                }
            }
        }
        if !woken.is_empty() {
            self.allocate(room, participant);
        }
        let now = self.now;
        for (track, cap) in woken {
            let layer = self
                .rooms
                .get(&room)
                .and_then(|r| r.tracks.get(&track))
                .map(|t| t.targets(now)[cap]);
            self.request_keyframe(room, track, layer, KeyframeKind::Pli);
        }
        self.mark_dirty(sref);
        self.renegotiate(room, participant);
    }

    fn subscribe(
        &mut self,
        room: RoomKey,
        participant: ParticipantId,
        track_id: TrackId,
        stream_id: String,
        track_label: String,
    ) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        let Some(track) = r.tracks.get_mut(&track_id) else {
            // Not a track of this room: another room's, or one that just ended.
            self.stats.subscriptions_refused += 1;
            tracing::debug!(
                participant = participant.0,
                track = track_id.0,
                "subscription refused: no such track in the participant's room"
            );
            return;
        };
        let Some(p) = r.participants.get_mut(&participant) else {
            return;
        };
        if track.publisher == participant || track.subscription_mut(participant).is_some() {
            return;
        }
        let Some(role) = p.downstream() else {
            return;
        };
        let video = track.is_video();
        let early = p.early.remove(&track_id).unwrap_or_default();
        let first_seq = rand::random::<u16>() & 0x3fff;
        track.subscriptions.push(Subscription {
            subscriber: participant,
            role,
            stream_id: stream_id.clone(),
            track_label: track_label.clone(),
            section: None,
            ready: false,
            paused: early.paused.unwrap_or(false),
            max_layer: early.max_layer.unwrap_or(Layer::High),
            grant: Default::default(),
            forwarder: Forwarder::new(video, track.clock_rate(), first_seq),
            pt: Default::default(),
        });
        p.subscribed.push(track_id);
        self.stats.subscriptions += 1;
        if p.layout == PcLayout::Single {
            super::single_pc::request_sections(r, participant);
        } else {
            p.plan.queued.push(SectionChange::Add {
                track: track_id,
                video,
                stream_id,
                track_label,
            });
            self.renegotiate(room, participant);
        }
        self.update_dynacast(room, track_id);
    }

    fn unsubscribe(&mut self, room: RoomKey, participant: ParticipantId, track_id: TrackId) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        let Some(track) = r.tracks.get_mut(&track_id) else {
            return;
        };
        let Some(idx) = track
            .subscriptions
            .iter()
            .position(|s| s.subscriber == participant)
        else {
            return;
        };
        let sub = track.subscriptions.remove(idx);
        self.release_subscription(room, participant, track_id, sub);
        self.update_dynacast(room, track_id);
    }

    /// The subscriber's side of a subscription that ended: its section is freed (`/rtc/v1`:
    /// answered inactive on the next client offer; `/rtc`: set inactive in the next server
    /// offer).
    fn release_subscription(
        &mut self,
        room: RoomKey,
        participant: ParticipantId,
        track_id: TrackId,
        sub: Subscription,
    ) {
        self.stats.subscriptions -= 1;
        let Some(p) = self
            .rooms
            .get_mut(&room)
            .and_then(|r| r.participants.get_mut(&participant))
        else {
            return;
        };
        p.subscribed.retain(|t| *t != track_id);
        if p.layout == PcLayout::Single {
            // A later track on the same section continues this outgoing stream.
            if let Some(section) = sub.section {
                p.plan.carried.remove(&section);
                if let Some(state) = sub.forwarder.state() {
                    p.plan.last_state.insert(section, state);
                }
                p.plan.reoffer_requested = true;
                p.emit(SfuEvent::NeedOffer { audio: 0, video: 0 });
            }
            return;
        }
        p.plan
            .queued
            .retain(|c| !matches!(c, SectionChange::Add { track, .. } if *track == track_id));
        if let Some(section) = sub.section {
            p.plan.carried.remove(&section);
            p.plan.queued.push(SectionChange::Remove { section });
        }
        self.renegotiate(room, participant);
    }

    fn set_paused(
        &mut self,
        room: RoomKey,
        participant: ParticipantId,
        track: TrackId,
        paused: bool,
    ) {
        let now = self.now;
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        let Some(t) = r.tracks.get_mut(&track) else {
            if let Some(p) = r.participants.get_mut(&participant) {
                p.early.entry(track).or_default().paused = Some(paused);
            }
            return;
        };
        let targets = t.targets(now);
        let Some(sub) = t.subscription_mut(participant) else {
            if let Some(p) = r.participants.get_mut(&participant) {
                p.early.entry(track).or_default().paused = Some(paused);
            }
            return;
        };
        if sub.paused == paused {
            return;
        }
        sub.paused = paused;
        if !paused {
            // Resuming waits for a keyframe.
            sub.forwarder.reset();
            let layer = targets[sub.max_layer];
            self.request_keyframe(room, track, Some(layer), KeyframeKind::Pli);
        }
        self.update_dynacast(room, track);
    }

    /// Starts a new subscriber offer with the queued changes, unless one is outstanding.
    fn renegotiate(&mut self, room: RoomKey, participant: ParticipantId) {
        let sref = SessionRef {
            room,
            participant,
            role: PeerRole::Subscriber,
        };
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        let Some(p) = r.participants.get_mut(&participant) else {
            return;
        };
        let Some(s) = p.subscriber.as_mut() else {
            return;
        };
        if s.has_pending_offer() || p.plan.queued.is_empty() {
            return;
        }
        let changes = std::mem::take(&mut p.plan.queued);
        match s.offer_changes(changes) {
            Ok(Some((sdp, added))) => {
                for (section, track) in added {
                    p.plan.carried.insert(section, track);
                    if let Some(sub) = r
                        .tracks
                        .get_mut(&track)
                        .and_then(|t| t.subscription_mut(participant))
                    {
                        sub.section = Some(section);
                    }
                }
                let mid_to_track = p
                    .plan
                    .carried
                    .iter()
                    .map(|(m, t)| (m.to_string(), *t))
                    .collect();
                p.emit(SfuEvent::Offer { sdp, mid_to_track });
                self.mark_dirty(sref);
            }
            Ok(None) => {}
            Err(_) => self.session_panicked(sref),
        }
    }

    /// A published track is gone: every subscription to it ends.
    pub(super) fn end_track(&mut self, room: RoomKey, track_id: TrackId) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        let Some(track) = r.tracks.remove(&track_id) else {
            return;
        };
        self.stats.published_tracks -= 1;
        if let Some(p) = r.participants.get_mut(&track.publisher) {
            p.publisher.unbind(track.section);
            p.published.retain(|t| *t != track_id);
            p.emit(SfuEvent::TrackEnded { track: track_id });
        }
        for sub in track.subscriptions {
            self.release_subscription(room, sub.subscriber, track_id, sub);
        }
    }

    pub(super) fn session_panicked(&mut self, sref: SessionRef) {
        self.stats.session_panics += 1;
        tracing::error!(
            participant = sref.participant.0,
            "webrtc session panicked; participant removed"
        );
        self.end_participant(sref, "internal error".into(), false);
    }

    /// Tells the participant its media is gone ([`SfuEvent::Failed`]) and removes it.
    pub(super) fn end_participant(&mut self, sref: SessionRef, reason: String, by_peer: bool) {
        if !self.members.contains_key(&sref.participant) {
            return;
        }
        let role = sref.role;
        tracing::info!(participant = sref.participant.0, ?role, %reason, "peer connection ended");
        self.emit(
            sref,
            SfuEvent::Failed {
                role,
                reason,
                by_peer,
            },
        );
        self.remove_participant(sref.room, sref.participant);
    }

    pub(super) fn remove_participant(&mut self, room: RoomKey, participant: ParticipantId) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        let Some(p) = r.participants.get(&participant) else {
            return;
        };
        let published = p.published.clone();
        let subscribed = p.subscribed.clone();
        for track in published {
            self.end_track(room, track);
        }
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        // Its own subscriptions end without renegotiation: its sessions go away.
        for track in &subscribed {
            if let Some(t) = r.tracks.get_mut(track) {
                let before = t.subscriptions.len();
                t.subscriptions.retain(|s| s.subscriber != participant);
                self.stats.subscriptions -= (before - t.subscriptions.len()) as i64;
            }
        }
        for track in &subscribed {
            self.update_dynacast(room, *track);
        }
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        let Some(mut p) = r.participants.remove(&participant) else {
            return;
        };
        self.members.remove(&participant);
        self.stats.participants -= 1;
        let roles = std::iter::once(PeerRole::Publisher)
            .chain(p.subscriber.is_some().then_some(PeerRole::Subscriber));
        for role in roles {
            let sref = SessionRef {
                room,
                participant,
                role,
            };
            let Some(s) = p.session_mut(role) else {
                continue;
            };
            s.disconnect();
            self.demux.remove_ufrag(s.ufrag(), sref);
            self.route_changes
                .push_back(RouteChange::RemoveUfrag(s.ufrag().to_string()));
            for addr in s.addrs() {
                self.demux.remove_addr(*addr, sref);
                self.route_changes.push_back(RouteChange::RemoveAddr(*addr));
            }
            self.timers.cancel(sref);
            self.stats.sessions -= 1;
        }
        if r.participants.is_empty() {
            let name = r.name.clone();
            self.rooms.remove(&room);
            self.room_keys.remove(&name);
            self.stats.rooms -= 1;
        }
    }
}
