//! Roster behaviour: announcements, visibility, versions, auto-subscribe, replacement,
//! expiry, presence and observer events.

use std::time::{Duration, SystemTime};

use switchboard_sfu::{ParticipantId, TrackId, TrackKind};
use tokio::sync::mpsc;

use super::*;
use crate::ids::{ParticipantSid, TrackSid};

type Inbox = mpsc::UnboundedReceiver<MemberEvent>;

fn participant(identity: &str, hidden: bool) -> Participant {
    Participant {
        id: ParticipantId::next(),
        sid: ParticipantSid::generate(),
        identity: identity.into(),
        name: String::new(),
        metadata: String::new(),
        attributes: Default::default(),
        state: ParticipantState::Joining,
        joined_at: SystemTime::now(),
        version: 0,
        permissions: Permissions {
            can_subscribe: true,
            can_publish: true,
            hidden,
            ..Default::default()
        },
        kind: ParticipantKind::Standard,
        tracks: Vec::new(),
        is_publisher: false,
        adapter: AdapterData::default(),
    }
}

fn track() -> Track {
    Track {
        sid: TrackSid::generate(),
        media: TrackId::next(),
        kind: TrackKind::Audio,
        source: TrackSource::Microphone,
        name: String::new(),
        muted: false,
        width: 0,
        height: 0,
        mime: "audio/opus".into(),
        cid: "mic".into(),
        layers: Vec::new(),
        encryption: Encryption::None,
        stream: String::new(),
        adapter: AdapterData::default(),
    }
}

fn join_as(rooms: &Rooms, room: &str, p: Participant, auto: bool) -> (Joined, Inbox) {
    let (tx, rx) = mpsc::unbounded_channel::<MemberEvent>();
    let joined = rooms.join(
        &room.into(),
        NewMember {
            participant: p,
            auto_subscribe: auto,
            inbox: Box::new(tx),
        },
    );
    (joined, rx)
}

fn join(rooms: &Rooms, room: &str, identity: &str) -> (Joined, Inbox) {
    join_as(rooms, room, participant(identity, false), true)
}

fn drain(rx: &mut Inbox) -> Vec<MemberEvent> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

fn room(name: &str) -> RoomName {
    name.into()
}

#[test]
fn a_newcomer_is_announced_to_the_others_and_finds_them() {
    let rooms = Rooms::new();
    let (alice, mut alice_rx) = join(&rooms, "r", "alice");
    let (bob, mut bob_rx) = join(&rooms, "r", "bob");
    assert!(alice.others.is_empty());
    assert_eq!(bob.others.len(), 1);
    assert_eq!(bob.others[0].identity, *"alice");
    assert_eq!(bob.participant.state, ParticipantState::Joined);
    assert_eq!(bob.participant.version, 1);
    let events = drain(&mut alice_rx);
    assert!(
        matches!(&events[..], [MemberEvent::Joined(p)] if p.identity == *"bob"),
        "{events:?}"
    );
    assert!(drain(&mut bob_rx).is_empty(), "not told about itself");
    assert_eq!(
        rooms.counts(),
        Counts {
            rooms: 1,
            participants: 2
        }
    );
}

#[test]
fn a_hidden_participant_is_seen_only_by_itself() {
    let rooms = Rooms::new();
    let (_, mut alice_rx) = join(&rooms, "r", "alice");
    let (ghost, mut ghost_rx) = join_as(&rooms, "r", participant("ghost", true), true);
    let gid = ghost.participant.id;
    assert_eq!(
        ghost.others.len(),
        1,
        "a hidden participant sees the others"
    );
    let (bob, _) = join(&rooms, "r", "bob");
    assert_eq!(bob.others.len(), 1, "only alice is visible to bob");
    drain(&mut alice_rx);
    drain(&mut ghost_rx);

    let t = track();
    assert!(rooms.publish_track(&room("r"), gid, t.clone()));
    assert!(drain(&mut alice_rx).is_empty(), "no update, no subscribe");
    assert!(matches!(
        &drain(&mut ghost_rx)[..],
        [MemberEvent::Updated(_)]
    ));
    assert!(rooms.find_track(&room("r"), &t.sid).is_none());
    assert_eq!(
        rooms.track_sids(&room("r"), &[t.media]).get(&t.media),
        Some(&t.sid),
        "its media still maps to its sid (its own offers name it)"
    );
    rooms.leave(&room("r"), gid, LeaveReason::ClientInitiated);
    assert!(drain(&mut alice_rx).is_empty(), "nobody saw it leave");
    assert_eq!(rooms.participants(&room("r")).len(), 2);
}

#[test]
fn a_second_session_of_an_identity_replaces_the_first_which_leaves_before() {
    let rooms = Rooms::new();
    let (_, mut alice_rx) = join(&rooms, "r", "alice");
    let (old, mut old_rx) = join(&rooms, "r", "bob");
    drain(&mut alice_rx);
    let (new, _) = join(&rooms, "r", "bob");
    assert!(new.replaced);
    assert_eq!(
        new.others.len(),
        1,
        "the old session is not among the others"
    );
    assert!(matches!(
        &drain(&mut old_rx)[..],
        [MemberEvent::Removed(LeaveReason::DuplicateIdentity)]
    ));
    let events = drain(&mut alice_rx);
    match &events[..] {
        [MemberEvent::Left {
            participant,
            reason: LeaveReason::DuplicateIdentity,
        }, MemberEvent::Joined(p)] => {
            assert_eq!(participant.sid, old.participant.sid);
            assert_eq!(participant.state, ParticipantState::Disconnected);
            assert_eq!(participant.version, 2);
            assert_eq!(p.sid, new.participant.sid);
        }
        other => panic!("left then joined expected: {other:?}"),
    }
    assert!(
        rooms
            .leave(&room("r"), old.participant.id, LeaveReason::SignalClose)
            .is_none(),
        "the replaced session finds itself gone"
    );
    assert_eq!(rooms.counts().participants, 2);
}

#[test]
fn every_announced_change_increments_the_version_and_reaches_whom_it_should() {
    let rooms = Rooms::new();
    let (_, mut alice_rx) = join(&rooms, "r", "alice");
    let (bob, mut bob_rx) = join(&rooms, "r", "bob");
    let (r, pid) = (room("r"), bob.participant.id);
    drain(&mut alice_rx);

    rooms.mark_active(&r, pid);
    assert!(drain(&mut bob_rx).is_empty(), "activation is not echoed");
    rooms.update_metadata(
        &r,
        pid,
        MetadataUpdate {
            name: Some("Bob".into()),
            metadata: None,
            attributes: [("a".to_string(), "1".to_string())].into(),
        },
    );
    assert!(matches!(&drain(&mut bob_rx)[..], [MemberEvent::Updated(_)]));
    let seen: Vec<u32> = drain(&mut alice_rx)
        .iter()
        .map(|e| match e {
            MemberEvent::Updated(p) => p.version,
            other => panic!("update expected: {other:?}"),
        })
        .collect();
    assert_eq!(seen, [2, 3]);
    let p = rooms.participant(&r, pid).unwrap();
    assert_eq!(p.state, ParticipantState::Active);
    assert_eq!(p.name, "Bob");
    assert_eq!(p.attributes.get("a").map(String::as_str), Some("1"));
    rooms.update_metadata(
        &r,
        pid,
        MetadataUpdate {
            attributes: [("a".to_string(), String::new())].into(),
            ..Default::default()
        },
    );
    let p = rooms.participant(&r, pid).unwrap();
    assert!(
        p.attributes.is_empty(),
        "an empty value removes the attribute"
    );
    assert_eq!((p.name.as_str(), p.version), ("Bob", 4));
}

#[test]
fn auto_subscribers_get_tracks_live_at_join_and_later_ones_after_their_announcement() {
    let rooms = Rooms::new();
    let r = room("r");
    let (alice, mut alice_rx) = join(&rooms, "r", "alice");
    let early = track();
    rooms.publish_track(&r, alice.participant.id, early.clone());
    let (bob, mut bob_rx) = join(&rooms, "r", "bob");
    let (_, mut carol_rx) = join_as(&rooms, "r", participant("carol", false), false);
    assert_eq!(bob.subscribe.len(), 1);
    assert_eq!(bob.subscribe[0].track.sid, early.sid);
    assert_eq!(bob.subscribe[0].publisher_sid, alice.participant.sid);
    assert!(bob.others[0].is_publisher);
    drain(&mut alice_rx);
    drain(&mut bob_rx);
    drain(&mut carol_rx);

    let late = track();
    rooms.publish_track(&r, alice.participant.id, late.clone());
    match &drain(&mut bob_rx)[..] {
        [MemberEvent::Updated(p), MemberEvent::Subscribe(t)] => {
            assert_eq!(p.tracks.len(), 2);
            assert_eq!(t.track.sid, late.sid);
            assert_eq!(t.publisher, alice.participant.id);
        }
        other => panic!("update then subscribe expected: {other:?}"),
    }
    assert!(matches!(
        &drain(&mut carol_rx)[..],
        [MemberEvent::Updated(_)]
    ));
    assert!(matches!(
        &drain(&mut alice_rx)[..],
        [MemberEvent::Updated(_)]
    ));

    rooms.set_track_muted(&r, alice.participant.id, &late.sid, true);
    let found = rooms.find_track(&r, &late.sid).unwrap();
    assert!(found.track.muted);
    let ended = rooms.unpublish_track(&r, alice.participant.id, &late.sid);
    assert_eq!(ended.map(|t| t.sid), Some(late.sid.clone()));
    assert!(rooms.find_track(&r, &late.sid).is_none());
    assert!(rooms.track_sids(&r, &[late.media]).is_empty());
}

#[test]
fn a_room_made_by_its_first_join_closes_with_its_last_leave() {
    let rooms = Rooms::new();
    let (a, _) = join(&rooms, "r", "alice");
    assert!(rooms.exists(&room("r")));
    assert_eq!(
        rooms.room(&room("r")).map(|i| i.empty_timeout),
        Some(DEFAULT_EMPTY_TIMEOUT)
    );
    let last = rooms
        .leave(&room("r"), a.participant.id, LeaveReason::ClientInitiated)
        .unwrap();
    assert_eq!(last.state, ParticipantState::Disconnected);
    assert!(!rooms.exists(&room("r")));
    assert_eq!(rooms.counts(), Counts::default());
}

#[test]
fn a_created_room_waits_for_its_first_participant_and_after_its_last() {
    let rooms = Rooms::new();
    let long = Duration::from_secs(3600);
    let info = rooms.create(&room("kept"), long, long);
    let again = rooms.create(&room("kept"), Duration::ZERO, Duration::ZERO);
    assert_eq!(again.sid, info.sid, "an existing room is left as it is");
    let (a, _) = join(&rooms, "kept", "alice");
    assert_eq!(a.room.sid, info.sid);
    rooms.leave(
        &room("kept"),
        a.participant.id,
        LeaveReason::ClientInitiated,
    );
    assert!(rooms.exists(&room("kept")), "departure timeout running");

    rooms.create(&room("gone"), Duration::ZERO, long);
    assert!(!rooms.exists(&room("gone")), "empty past its deadline");
    rooms.create(&room("brief"), long, Duration::ZERO);
    let (b, _) = join(&rooms, "brief", "bob");
    rooms.leave(
        &room("brief"),
        b.participant.id,
        LeaveReason::ClientInitiated,
    );
    assert!(!rooms.exists(&room("brief")), "no departure timeout");
    assert_eq!(rooms.counts().rooms, 1);
}

#[tokio::test]
async fn an_empty_room_is_closed_by_its_timer_without_being_looked_up() {
    let rooms = Rooms::new();
    let mut events = rooms.events();
    rooms.create(
        &room("r"),
        Duration::from_millis(30),
        Duration::from_secs(1),
    );
    assert_eq!(rooms.counts().rooms, 1);
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Ok(RosterEvent {
                    event: RoomEvent::RoomClosed,
                    room,
                }) => return room,
                Ok(_) => continue,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("room closed by its timer");
    assert_eq!(closed, room("r"));
    assert_eq!(rooms.counts().rooms, 0, "counted without a look-up");
}

#[tokio::test]
async fn a_join_cancels_the_expiry_of_a_created_room() {
    let rooms = Rooms::new();
    rooms.create(&room("r"), Duration::from_millis(20), Duration::ZERO);
    let (a, _) = join(&rooms, "r", "alice");
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(rooms.exists(&room("r")));
    assert!(rooms.participant(&room("r"), a.participant.id).is_some());
}

#[tokio::test]
async fn presence_follows_an_identity_without_polling() {
    let rooms = Rooms::new();
    let mut presence = rooms.presence(&room("r"), &"alice".into());
    assert!(!presence.is_present(), "the room need not exist");
    let (a, _) = join(&rooms, "r", "alice");
    tokio::time::timeout(Duration::from_secs(5), presence.arrived())
        .await
        .expect("arrived");
    assert!(rooms.has_identity(&room("r"), &"alice".into()));

    // a replacement is no departure
    let (a2, _) = join(&rooms, "r", "alice");
    rooms.leave(&room("r"), a.participant.id, LeaveReason::SignalClose);
    let early = tokio::time::timeout(Duration::from_millis(50), presence.departed()).await;
    assert!(early.is_err(), "still present through the replacement");

    // a leave then a rejoin before the watcher looks still counts
    rooms.leave(&room("r"), a2.participant.id, LeaveReason::ClientInitiated);
    let _back = join(&rooms, "r", "alice");
    tokio::time::timeout(Duration::from_secs(5), presence.departed())
        .await
        .expect("departed");
    assert!(presence.is_present());
    assert_eq!(rooms.inner.lock().watches.len(), 1);
    drop(presence);
    assert_eq!(
        rooms.inner.lock().watches.len(),
        0,
        "the watch goes with its watcher"
    );
}

#[tokio::test]
async fn observers_see_every_change_hidden_participants_included() {
    let rooms = Rooms::new();
    let mut events = rooms.events();
    let (ghost, _) = join_as(&rooms, "r", participant("ghost", true), true);
    let t = track();
    rooms.publish_track(&room("r"), ghost.participant.id, t.clone());
    rooms.unpublish_track(&room("r"), ghost.participant.id, &t.sid);
    rooms.leave(
        &room("r"),
        ghost.participant.id,
        LeaveReason::ClientInitiated,
    );
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        assert_eq!(e.room, room("r"));
        seen.push(match e.event {
            RoomEvent::RoomCreated(_) => "created",
            RoomEvent::ParticipantJoined(_) => "joined",
            RoomEvent::ParticipantUpdated(_) => "updated",
            RoomEvent::TrackPublished { .. } => "published",
            RoomEvent::TrackUnpublished { .. } => "unpublished",
            RoomEvent::ParticipantLeft { .. } => "left",
            RoomEvent::RoomClosed => "closed",
        });
    }
    assert_eq!(
        seen,
        [
            "created",
            "joined",
            "updated",
            "published",
            "updated",
            "unpublished",
            "left",
            "closed"
        ]
    );
}

#[test]
fn participant_sids_name_the_viewer_and_whom_it_sees_only() {
    let rooms = Rooms::new();
    let (alice, _a) = join(&rooms, "r", "alice");
    let (ghost, _g) = join_as(&rooms, "r", participant("ghost", true), true);
    let (bob, _b) = join(&rooms, "r", "bob");
    let (a, g, b) = (
        alice.participant.id,
        ghost.participant.id,
        bob.participant.id,
    );
    let all = [a, g, b];
    let seen_by_bob = rooms.participant_sids(&room("r"), b, &all);
    assert_eq!(seen_by_bob.len(), 2);
    assert_eq!(seen_by_bob.get(&a), Some(&alice.participant.sid));
    assert_eq!(seen_by_bob.get(&b), Some(&bob.participant.sid));
    let seen_by_ghost = rooms.participant_sids(&room("r"), g, &all);
    assert_eq!(
        seen_by_ghost.len(),
        3,
        "a hidden participant hears about itself"
    );
    rooms.leave(&room("r"), a, LeaveReason::ClientInitiated);
    assert!(!rooms.participant_sids(&room("r"), b, &all).contains_key(&a));
}
