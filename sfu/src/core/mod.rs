//! The sans-IO media core of one media thread: its rooms, their participants' sessions, tracks
//! and subscriptions, and the routing of datagrams to sessions. In the style of str0m itself,
//! it never reads the clock and never touches a socket: the driver feeds it
//! [`MediaCore::handle_command`], [`MediaCore::handle_datagram`] and
//! [`MediaCore::handle_timeout`] with the current time, then takes datagrams to send from
//! [`MediaCore::poll_output`] until it says when to wake it next. Events for participants go on
//! the channel each gave when it joined ([`crate::JoinParams::events`]).
//!
//! Split by concept: `demux.rs` (datagram → session), `timers.rs` (the timer queue),
//! `forwarding.rs` (the packet path, keyframe requests, data relay), `dynacast.rs` (telling
//! publishers which layers are needed), `negotiation.rs` (joins, SDP, subscriptions, leaving),
//! `single_pc.rs` (`/rtc/v1` receive sections).

mod allocation;
mod demux;
mod dynacast;
mod forwarding;
mod negotiation;
mod room_events;
mod single_pc;
mod timers;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

pub use crate::datagram::Datagram;
pub use demux::Demux;

use crate::room::Room;
use crate::session::{Polled, SessionError, SessionEvent};
use crate::speakers::SpeakerSettings;
use crate::{Command, ParticipantId, PeerRole, TrackId};
use timers::Timers;

/// How long ICE may stay `Disconnected` (consent lost, or mid ICE restart) before the peer
/// connection counts as failed.
pub const ICE_RECOVERY_GRACE: Duration = Duration::from_secs(4);
/// Longest the core sleeps when no session has an earlier timer.
const IDLE_WAKE: Duration = Duration::from_millis(500);

/// A room's key within one core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct RoomKey(pub u32);

/// One session of the core: the room, the participant and which of its PCs. On `/rtc/v1`'s
/// single PC the role is always `Publisher`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SessionRef {
    pub room: RoomKey,
    pub participant: ParticipantId,
    pub role: PeerRole,
}

/// What [`MediaCore::poll_output`] gives.
#[derive(Debug)]
pub enum Output {
    /// Send this datagram.
    Transmit(Datagram),
    /// Nothing to send until this time, or until new input.
    Timeout(Instant),
}

/// A change to which ICE ufrags and client addresses this core serves, for a dispatcher that
/// routes datagrams to cores ([`MediaCore::poll_route_change`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteChange {
    /// STUN for this local ufrag belongs to this core now.
    AddUfrag(String),
    /// This ufrag is gone.
    RemoveUfrag(String),
    /// Datagrams from this client address no longer belong to this core.
    RemoveAddr(SocketAddr),
}

/// Counters and gauges of one core, plain integers updated on its thread (the driver publishes
/// them once per wake-up, not per packet).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CoreStats {
    /// Rooms on this core.
    pub rooms: i64,
    /// Participants on this core.
    pub participants: i64,
    /// Sessions (peer connections).
    pub sessions: i64,
    /// Published tracks bound to a media section.
    pub published_tracks: i64,
    /// Subscriptions.
    pub subscriptions: i64,
    /// Datagrams handed to the core.
    pub datagrams_in: u64,
    /// Datagrams dropped: unparseable, or for no session of this core.
    pub dropped_datagrams: u64,
    /// RTP packets received from publishers.
    pub rtp_in: u64,
    /// RTP packets written to subscribers' sessions.
    pub rtp_forwarded: u64,
    /// Of those, video.
    pub rtp_forwarded_video: u64,
    /// Data-channel messages not delivered to a receiver.
    pub data_dropped: u64,
    /// Sessions ended by a contained panic in the WebRTC state.
    pub session_panics: u64,
    /// Subscriptions refused: the track is not in the subscriber's room.
    pub subscriptions_refused: u64,
    /// Keyframe requests (PLI/FIR) sent to publishers, after aggregation and throttling.
    pub keyframe_requests: u64,
    /// Video subscriptions moved to a lower layer, or paused, by their subscriber's bandwidth.
    pub bandwidth_downgrades: u64,
    /// Video subscriptions moved up again (or resumed) as bandwidth allowed.
    pub bandwidth_upgrades: u64,
}

/// The media core. See the module docs.
pub struct MediaCore {
    candidates: Vec<SocketAddr>,
    /// The time of the latest input (time only enters through the `handle_*` arguments).
    now: Instant,
    rooms: FxHashMap<RoomKey, Room>,
    room_keys: HashMap<Arc<str>, RoomKey>,
    next_room: u32,
    /// Which room each participant is in.
    members: FxHashMap<ParticipantId, RoomKey>,
    demux: Demux<SessionRef>,
    timers: Timers,
    /// Dynacast deadlines (pending downgrades, initial pushes) per track; superseded entries
    /// are skipped when they surface.
    dynacast_timers: BinaryHeap<Reverse<(Instant, RoomKey, TrackId)>>,
    /// Sessions written to since they were last polled.
    dirty: Vec<SessionRef>,
    dirty_round: Vec<SessionRef>,
    transmits: VecDeque<Datagram>,
    route_changes: VecDeque<RouteChange>,
    /// Tracks with a keyframe asked for and not arrived (deferred or repeated requests).
    keyframe_waits: Vec<(RoomKey, crate::TrackId)>,
    /// When every subscriber's bandwidth allocation is next revisited.
    next_bandwidth_tick: Instant,
    stats: CoreStats,
    speaker_settings: SpeakerSettings,
    /// Downstream sessions estimate bandwidth and the allocator uses it.
    pub(super) bandwidth_estimation: bool,
    /// When the rooms' speakers are next evaluated (`room_events.rs`).
    speaker_tick: Instant,
    /// When the participants' connection qualities are next evaluated.
    quality_tick: Instant,
}

impl MediaCore {
    /// A core with no rooms, whose sessions put `candidates` (the shared media port on each
    /// advertised address) in their SDP.
    pub fn new(candidates: Vec<SocketAddr>, now: Instant) -> Self {
        Self {
            candidates,
            now,
            rooms: FxHashMap::default(),
            room_keys: HashMap::new(),
            next_room: 1,
            members: FxHashMap::default(),
            demux: Demux::default(),
            timers: Timers::default(),
            dynacast_timers: BinaryHeap::new(),
            dirty: Vec::with_capacity(64),
            dirty_round: Vec::with_capacity(64),
            transmits: VecDeque::with_capacity(256),
            route_changes: VecDeque::new(),
            keyframe_waits: Vec::new(),
            next_bandwidth_tick: now + allocation::BANDWIDTH_TICK,
            stats: CoreStats::default(),
            speaker_settings: SpeakerSettings::default(),
            bandwidth_estimation: true,
            speaker_tick: now + SpeakerSettings::default().update_interval,
            quality_tick: now + crate::QUALITY_INTERVAL,
        }
    }

    /// The same core with subscribers' bandwidth estimation (and layer allocation by it) on
    /// (the default) or off: off, downstream sessions do not estimate and every subscription
    /// gets the layer it asks for.
    pub fn with_bandwidth_estimation(mut self, on: bool) -> Self {
        self.bandwidth_estimation = on;
        self
    }

    /// The same core detecting active speakers with `settings` instead of LiveKit's defaults.
    pub fn with_speaker_settings(mut self, settings: SpeakerSettings) -> Self {
        self.speaker_tick = self.now + settings.update_interval;
        self.speaker_settings = settings;
        self
    }

    /// Applies a command of a signalling adapter. Answers go out as [`crate::SfuEvent`]s.
    pub fn handle_command(&mut self, now: Instant, cmd: Command) {
        self.advance(now);
        self.command(cmd);
    }

    /// Feeds one received datagram (`destination`: the local address it arrived on).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) {
        self.advance(now);
        self.stats.datagrams_in += 1;
        let source = normalise(source);
        let destination = normalise(destination);
        let Some((sref, new_addr)) = self.demux.route(source, data) else {
            self.stats.dropped_datagrams += 1;
            return;
        };
        let Some(session) = self.session_mut(sref) else {
            self.stats.dropped_datagrams += 1;
            return;
        };
        if new_addr {
            session.add_addr(source);
        }
        // Input can produce anything (events, answers to STUN): poll until the next timeout.
        session.mark_dirty(true);
        match session.handle_datagram(now, source, destination, data) {
            Ok(true) => {}
            Ok(false) => self.stats.dropped_datagrams += 1,
            Err(_) => {
                self.session_panicked(sref);
                return;
            }
        }
        // Only this session now: what it fans out lands in subscribers' sessions, which are
        // polled once per batch of input (`poll_output`), however many packets they got.
        self.drain(sref);
    }

    /// Runs the timers of every session due at `now`, and the rooms' speaker and connection
    /// quality evaluations when their intervals are up.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        if self.next_keyframe_due().is_some_and(|t| t <= now) {
            self.keyframe_timers(now);
        }
        if now >= self.next_bandwidth_tick {
            self.next_bandwidth_tick = now + allocation::BANDWIDTH_TICK;
            self.bandwidth_tick();
        }
        self.dynacast_timeouts(now);
        self.tick_speakers(now);
        self.tick_quality(now);
        while let Some(sref) = self.timers.pop_due(now) {
            let Some(session) = self.session_mut(sref) else {
                continue;
            };
            if session
                .ice_lost_since()
                .is_some_and(|t| now.saturating_duration_since(t) > ICE_RECOVERY_GRACE)
            {
                self.end_participant(sref, "ice consent lost".into(), false);
                continue;
            }
            if session.next_timeout() > now {
                // Woken early by a superseded entry: just wait for the real deadline.
                let at = session.next_timeout();
                self.timers.schedule(sref, at);
                continue;
            }
            match session.handle_timeout(now) {
                Ok(()) => self.mark_dirty(sref),
                Err(_) => self.session_panicked(sref),
            }
        }
    }

    /// The next datagram to send, or when to call [`MediaCore::handle_timeout`] next. Polls the
    /// sessions that input touched first; call until it gives [`Output::Timeout`].
    pub fn poll_output(&mut self) -> Output {
        if self.transmits.is_empty() && !self.dirty.is_empty() {
            self.drain_dirty();
        }
        match self.transmits.pop_front() {
            Some(d) => Output::Transmit(d),
            None => Output::Timeout(self.next_deadline()),
        }
    }

    /// The next change of routing (ufrags, addresses) a dispatcher in front of several cores
    /// must apply.
    pub fn poll_route_change(&mut self) -> Option<RouteChange> {
        self.route_changes.pop_front()
    }

    /// When the core next needs [`MediaCore::handle_timeout`].
    pub fn next_deadline(&self) -> Instant {
        let idle = self.now + IDLE_WAKE;
        let idle = idle.min(self.next_bandwidth_tick);
        let sessions = self.timers.next().map_or(idle, |t| t.min(idle));
        let timers = self
            .next_dynacast_deadline()
            .map_or(sessions, |t| t.min(sessions));
        let timers = self.next_room_tick().map_or(timers, |t| t.min(timers));
        self.next_keyframe_due().map_or(timers, |t| t.min(timers))
    }

    /// Counters and gauges.
    pub fn stats(&self) -> &CoreStats {
        &self.stats
    }

    /// Whether a room of this name lives here.
    pub fn has_room(&self, name: &str) -> bool {
        self.room_keys.contains_key(name)
    }

    // ------------------------------------------------------------ internals

    fn advance(&mut self, now: Instant) {
        // Time never goes back inside the core, whatever the driver's clocks do.
        if now > self.now {
            self.now = now;
        }
    }

    fn session_mut(&mut self, sref: SessionRef) -> Option<&mut crate::session::Session> {
        self.rooms
            .get_mut(&sref.room)?
            .session_mut(sref.participant, sref.role)
    }

    /// Queues a session for the next poll round (once, however often it is written to).
    pub(super) fn mark_dirty(&mut self, sref: SessionRef) {
        if self.session_mut(sref).is_some_and(|s| s.mark_dirty(true)) {
            self.dirty.push(sref);
        }
    }

    /// Polls every session written to, each once per round however many packets it got (a
    /// session is queued once until polled); a round can dirty more sessions (a publisher's
    /// packets fan out), hence the rounds.
    fn drain_dirty(&mut self) {
        let mut round = std::mem::take(&mut self.dirty_round);
        while !self.dirty.is_empty() {
            std::mem::swap(&mut round, &mut self.dirty);
            for sref in round.drain(..) {
                self.drain(sref);
            }
        }
        self.dirty_round = round;
    }

    /// Polls one session until it reports its next timeout, queueing what it transmits and
    /// handling its events.
    fn drain(&mut self, sref: SessionRef) {
        let now = self.now;
        loop {
            let Some(session) = self.session_mut(sref) else {
                return;
            };
            if session.egress_done() {
                return;
            }
            match session.poll(now) {
                Ok(Polled::Transmit(t)) => self.transmits.push_back(t),
                Ok(Polled::Event(e)) => self.event(sref, e),
                Ok(Polled::Timeout(t)) => {
                    let alive = session.is_alive();
                    self.timers.schedule(sref, t);
                    if !alive {
                        self.end_participant(sref, "peer connection closed".into(), false);
                    }
                    return;
                }
                Err(SessionError::Panicked(_)) => {
                    self.session_panicked(sref);
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "session poll failed");
                    self.end_participant(sref, e.to_string(), false);
                    return;
                }
            }
        }
    }

    fn event(&mut self, sref: SessionRef, event: SessionEvent) {
        let role = sref.role;
        match event {
            SessionEvent::Rtp(pkt) => self.forward(sref, pkt),
            SessionEvent::Connected => {
                self.emit(sref, crate::SfuEvent::Connected { role });
            }
            SessionEvent::IceDisconnected => {
                // An ICE restart (new remote credentials) drops every pair first; the client's
                // checks with the new ufrag bring it back. Only a loss that lasts ends it.
                tracing::debug!(participant = sref.participant.0, ?role, "ice disconnected");
            }
            SessionEvent::IceRestored => {}
            SessionEvent::MediaAdded { section, video } if role == PeerRole::Publisher => {
                self.bind_media(sref, section, video);
            }
            SessionEvent::MediaStopped { section } if role == PeerRole::Publisher => {
                self.section_stopped(sref, section);
            }
            SessionEvent::MediaAdded { .. } | SessionEvent::MediaStopped { .. } => {}
            SessionEvent::KeyframeRequest { section, kind } => {
                self.subscriber_wants_keyframe(sref, section, kind);
            }
            SessionEvent::Data { kind, payload } => self.relay_data(sref, kind, &payload),
            SessionEvent::Closed => {
                self.end_participant(sref, "closed by peer".into(), true);
            }
            SessionEvent::Bandwidth { bps } => self.bandwidth_estimate(sref, bps),
        }
    }

    fn emit(&self, sref: SessionRef, event: crate::SfuEvent) {
        if let Some(p) = self
            .rooms
            .get(&sref.room)
            .and_then(|r| r.participants.get(&sref.participant))
        {
            p.emit(event);
        }
    }
}

/// IPv4-mapped IPv6 addresses (from a dual-stack socket) as plain IPv4, so they match candidates.
pub(crate) fn normalise(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}
