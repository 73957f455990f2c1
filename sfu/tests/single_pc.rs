//! Component tests of the single-peer-connection layout (LiveKit `/rtc/v1`): the client always
//! offers; subscribed tracks go out on its receive-only sections.

mod common;

use std::time::Duration;

use common::*;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind};
use switchboard_sfu::{PcLayout, PendingTrack, SfuEvent, TrackId, TrackKind};

fn section_of<'a>(sdp: &'a str, mid: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    for l in sdp.lines() {
        if l.starts_with("m=") {
            if cur.contains(&format!("a=mid:{mid}").as_str()) {
                out = cur.clone();
            }
            cur.clear();
        }
        cur.push(l);
    }
    if cur.contains(&format!("a=mid:{mid}").as_str()) {
        out = cur;
    }
    out
}

#[test]
fn subscribed_track_rides_a_receive_only_section_with_livekit_msid() {
    let sfu = start_sfu();
    let mut publisher = Peer::new(&sfu, "room", "alice", PcLayout::Single, |c| c, None);
    let mut viewer = Peer::new(&sfu, "room", "bob", PcLayout::Single, |c| c, None);

    // The viewer pre-creates one receive-only video section (as the SDKs do) and connects.
    let mut recv_mid = None;
    let answer = viewer.negotiate(
        &sfu,
        |api| {
            recv_mid = Some(api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None));
            api.add_channel("_reliable".into());
        },
        vec![],
    );
    let recv_mid = recv_mid.expect("section added");
    let unused = section_of(&answer, &recv_mid.to_string());
    assert!(
        unused.contains(&"a=inactive"),
        "unused section answered inactive: {unused:?}"
    );

    // The publisher publishes a video track.
    let tv = TrackId::next();
    let mids = publisher.publish(
        &sfu,
        &[(
            MediaKind::Video,
            "cid-v",
            PendingTrack {
                track: tv,
                cid: "cid-v".into(),
                kind: TrackKind::Video,
                rids: vec![],
                screen_share: false,
            },
        )],
    );
    let pv = publisher.pt_of(Codec::Vp8);
    let mut seq = 1u64;
    loop {
        publisher.write(mids[0], pv, seq, seq as u32 * 3000, &VP8_KEYFRAME, true);
        seq += 1;
        publisher.pump(Duration::from_millis(20));
        viewer.pump(Duration::from_millis(1));
        if matches!(publisher.events.try_recv(), Ok(SfuEvent::TrackLive { .. })) {
            break;
        }
        assert!(seq < 300, "track never went live");
    }

    // Subscribing asks the viewer for a new offer; the answer carries the track.
    sfu.subscribe(viewer.id, tv, "PA_alice|TR_v".into(), "TR_v".into())
        .unwrap();
    loop {
        match viewer.next_event(&mut [&mut publisher]) {
            SfuEvent::NeedOffer { audio: 0, video: 0 } => break,
            SfuEvent::NeedOffer { audio, video } => {
                panic!("free section exists, asked for {audio}/{video}")
            }
            _ => {}
        }
    }
    // Re-offer. A browser's transceiver stays `recvonly` after an `inactive` answer; the str0m
    // client adopts `inactive`, so set it back as a browser would offer it.
    let answer = viewer.negotiate(
        &sfu,
        |api| {
            api.set_direction(recv_mid, Direction::RecvOnly);
        },
        vec![],
    );
    let carried = section_of(&answer, &recv_mid.to_string());
    assert!(carried.contains(&"a=sendonly"), "{carried:?}");
    assert!(
        carried.contains(&"a=msid:PA_alice|TR_v TR_v"),
        "{carried:?}"
    );

    for _ in 0..100 {
        let vp8: &[u8] = if seq.is_multiple_of(20) {
            &VP8_KEYFRAME
        } else {
            &VP8_DELTA
        };
        publisher.write(mids[0], pv, seq, seq as u32 * 3000, vp8, true);
        seq += 1;
        publisher.pump(Duration::from_millis(10));
        viewer.pump(Duration::from_millis(10));
    }
    assert!(
        viewer.received.len() > 20,
        "viewer received {} packets",
        viewer.received.len()
    );
}

#[test]
fn subscription_without_free_section_asks_for_more() {
    let sfu = start_sfu();
    let mut publisher = Peer::new(&sfu, "room", "alice", PcLayout::Single, |c| c, None);
    let mut viewer = Peer::new(&sfu, "room", "bob", PcLayout::Single, |c| c, None);
    viewer.negotiate(
        &sfu,
        |api| {
            api.add_channel("_reliable".into());
        },
        vec![],
    );
    let ta = TrackId::next();
    let mids = publisher.publish(
        &sfu,
        &[(
            MediaKind::Audio,
            "cid-a",
            PendingTrack {
                track: ta,
                cid: "cid-a".into(),
                kind: TrackKind::Audio,
                rids: vec![],
                screen_share: false,
            },
        )],
    );
    let pa = publisher.pt_of(Codec::Opus);
    for seq in 1..30u64 {
        publisher.write(mids[0], pa, seq, seq as u32 * 960, &[0xfc, 1], false);
        publisher.pump(Duration::from_millis(10));
    }
    sfu.subscribe(viewer.id, ta, "PA_alice|TR_a".into(), "TR_a".into())
        .unwrap();
    loop {
        if let SfuEvent::NeedOffer { audio, video } = viewer.next_event(&mut [&mut publisher]) {
            assert_eq!((audio, video), (1, 0));
            break;
        }
    }
}

#[test]
fn unsubscribing_frees_the_section_for_the_next_track_without_a_server_offer() {
    let sfu = start_sfu();
    let mut publisher = Peer::new(&sfu, "room", "alice", PcLayout::Single, |c| c, None);
    let mut viewer = Peer::new(&sfu, "room", "bob", PcLayout::Single, |c| c, None);
    let mut recv_mid = None;
    viewer.negotiate(
        &sfu,
        |api| {
            recv_mid = Some(api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None));
            api.add_channel("_reliable".into());
        },
        vec![],
    );
    let recv_mid = recv_mid.unwrap();
    let (ta, tb) = (TrackId::next(), TrackId::next());
    let pending = |t, cid: &str| PendingTrack {
        track: t,
        cid: cid.into(),
        kind: TrackKind::Audio,
        rids: vec![],
        screen_share: false,
    };
    let mids = publisher.publish(
        &sfu,
        &[
            (MediaKind::Audio, "a1", pending(ta, "a1")),
            (MediaKind::Audio, "a2", pending(tb, "a2")),
        ],
    );
    let pa = publisher.pt_of(Codec::Opus);
    for seq in 1..20u64 {
        publisher.write(mids[0], pa, seq, seq as u32 * 960, &[0xfc, 1], false);
        publisher.write(mids[1], pa, seq, seq as u32 * 960, &[0xfc, 2], false);
        publisher.pump(Duration::from_millis(10));
    }
    let reoffer = |viewer: &mut Peer, publisher: &mut Peer| {
        loop {
            match viewer.next_event(&mut [&mut *publisher]) {
                SfuEvent::NeedOffer { audio: 0, video: 0 } => break,
                SfuEvent::Offer { .. } => panic!("single-PC layout got a server offer"),
                _ => {}
            }
        }
        // A browser re-offers on request; str0m offers only on a change, so restart ICE when
        // the direction is already what a browser would offer.
        viewer.negotiate(
            &sfu,
            |api| {
                api.set_direction(recv_mid, Direction::RecvOnly);
                if !api.has_changes() {
                    api.ice_restart(true);
                }
            },
            vec![],
        )
    };
    sfu.subscribe(viewer.id, ta, "PA_a|TR_1".into(), "TR_1".into())
        .unwrap();
    let answer = reoffer(&mut viewer, &mut publisher);
    assert!(section_of(&answer, &recv_mid.to_string()).contains(&"a=msid:PA_a|TR_1 TR_1"));
    sfu.unsubscribe(viewer.id, ta).unwrap();
    let answer = reoffer(&mut viewer, &mut publisher);
    assert!(section_of(&answer, &recv_mid.to_string()).contains(&"a=inactive"));
    sfu.subscribe(viewer.id, tb, "PA_a|TR_2".into(), "TR_2".into())
        .unwrap();
    let answer = reoffer(&mut viewer, &mut publisher);
    assert!(
        section_of(&answer, &recv_mid.to_string()).contains(&"a=msid:PA_a|TR_2 TR_2"),
        "{answer}"
    );
    // Media of the second track arrives on the reused section (after the ICE restarts).
    for seq in 20..120u64 {
        publisher.write(mids[1], pa, seq, seq as u32 * 960, &[0xfc, 2], false);
        publisher.pump(Duration::from_millis(5));
        viewer.pump(Duration::from_millis(5));
    }
    assert!(
        viewer.received.iter().any(|p| *p.payload == [0xfc, 2]),
        "no packet of the second track arrived"
    );
}

#[test]
fn single_pc_subscriber_gets_its_own_payload_types_and_answer_uses_only_offered_ones() {
    let sfu = start_sfu();
    let mut publisher = Peer::new(&sfu, "room", "alice", PcLayout::Single, |c| c, None);
    let mut viewer = Peer::new(&sfu, "room", "bob", PcLayout::Single, firefox_pts, None);
    let mut recv = Vec::new();
    let first_answer = viewer.negotiate(
        &sfu,
        |api| {
            recv.push(api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None));
            recv.push(api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None));
            api.add_channel("_reliable".into());
        },
        vec![],
    );
    for m_line in first_answer
        .lines()
        .filter(|l| l.starts_with("m=audio") || l.starts_with("m=video"))
    {
        for pt in m_line.split(' ').skip(3) {
            assert!(
                ["109", "120", "124"].contains(&pt),
                "answer uses a payload type the offer did not have: {m_line}"
            );
        }
    }
    let (ta, tv) = (TrackId::next(), TrackId::next());
    let pending = |t, cid: &str, kind| PendingTrack {
        track: t,
        cid: cid.into(),
        kind,
        rids: vec![],
        screen_share: false,
    };
    let mids = publisher.publish(
        &sfu,
        &[
            (MediaKind::Audio, "a", pending(ta, "a", TrackKind::Audio)),
            (MediaKind::Video, "v", pending(tv, "v", TrackKind::Video)),
        ],
    );
    let (pa, pv) = (publisher.pt_of(Codec::Opus), publisher.pt_of(Codec::Vp8));
    assert_eq!((*pa, *pv), (111, 96));
    let mut seq = 1u64;
    let mut send = |publisher: &mut Peer, viewer: &mut Peer| {
        let vp8: &[u8] = if seq.is_multiple_of(10) {
            &VP8_KEYFRAME
        } else {
            &VP8_DELTA
        };
        publisher.write(mids[0], pa, seq, seq as u32 * 960, &[0xfc, 1], false);
        publisher.write(mids[1], pv, seq, seq as u32 * 3000, vp8, true);
        seq += 1;
        publisher.pump(Duration::from_millis(10));
        viewer.pump(Duration::from_millis(1));
    };
    for _ in 0..20 {
        send(&mut publisher, &mut viewer);
    }
    sfu.subscribe(viewer.id, ta, "PA_a|TR_a".into(), "TR_a".into())
        .unwrap();
    sfu.subscribe(viewer.id, tv, "PA_a|TR_v".into(), "TR_v".into())
        .unwrap();
    loop {
        if let SfuEvent::NeedOffer { .. } = viewer.next_event(&mut [&mut publisher]) {
            break;
        }
    }
    viewer.negotiate(
        &sfu,
        |api| {
            for m in &recv {
                api.set_direction(*m, Direction::RecvOnly);
            }
        },
        vec![],
    );
    for _ in 0..100 {
        send(&mut publisher, &mut viewer);
        viewer.pump(Duration::from_millis(5));
    }
    let pts: std::collections::BTreeSet<u8> = viewer
        .received
        .iter()
        .map(|p| *p.header.payload_type)
        .collect();
    assert_eq!(pts, [109u8, 120].into_iter().collect());
}
