//! Component tests of the media plane with str0m client peers over loopback UDP: what the
//! Python SDK cannot produce (other payload-type numbers, rejoin from the same address and port).
//!
//! Payload types: on the subscriber PC the server is the offerer, so the numbers a subscriber
//! receives are the ones in the server's offer (96 VP8, 111 Opus); a publisher that offers other
//! numbers (Firefox: Opus 109, VP8 120, RTX 124) keeps them on its own PC, and every forwarded
//! packet must be renumbered.

mod common;

use std::time::Duration;

use common::*;
use str0m::format::Codec;
use str0m::media::MediaKind;
use switchboard_sfu::{PcLayout, PendingTrack, SfuEvent, TrackId, TrackKind};

fn pending(track: TrackId, cid: &str, kind: TrackKind) -> PendingTrack {
    PendingTrack {
        track,
        cid: cid.into(),
        kind,
        rids: Vec::new(),
        screen_share: false,
    }
}

/// Publisher with one audio and one video track, live; returns (mids, track ids).
fn live_publisher(
    sfu: &switchboard_sfu::SfuHandle,
    publisher: &mut Peer,
    others: &mut [&mut Peer],
) -> ([str0m::media::Mid; 2], [TrackId; 2]) {
    let (ta, tv) = (TrackId::next(), TrackId::next());
    let mids = publisher.publish(
        sfu,
        &[
            (
                MediaKind::Audio,
                "cid-a",
                pending(ta, "cid-a", TrackKind::Audio),
            ),
            (
                MediaKind::Video,
                "cid-v",
                pending(tv, "cid-v", TrackKind::Video),
            ),
        ],
    );
    let (pa, pv) = (publisher.pt_of(Codec::Opus), publisher.pt_of(Codec::Vp8));
    let mut live = 0;
    let mut seq = 1u64;
    while live < 2 {
        publisher.write(mids[0], pa, seq, seq as u32 * 960, &[0xfc, 1, 2, 3], false);
        publisher.write(mids[1], pv, seq, seq as u32 * 3000, &VP8_KEYFRAME, true);
        seq += 1;
        while let Ok(e) = publisher.events.try_recv() {
            if let SfuEvent::TrackLive { .. } = e {
                live += 1;
            }
        }
        publisher.pump(Duration::from_millis(20));
        for o in others.iter_mut() {
            o.pump(Duration::from_millis(1));
        }
    }
    ([mids[0], mids[1]], [ta, tv])
}

#[test]
fn publisher_payload_types_are_renumbered_for_the_subscriber() {
    let sfu = start_sfu();
    let mut publisher = Peer::new(
        &sfu,
        "room",
        "alice",
        PcLayout::PublishOnly,
        firefox_pts,
        None,
    );
    let mut subscriber = Peer::new(&sfu, "room", "bob", PcLayout::Dual, |c| c, None);
    subscriber.accept_next_offer(&sfu, &mut [&mut publisher]);
    let (mids, [ta, tv]) = live_publisher(&sfu, &mut publisher, &mut [&mut subscriber]);

    sfu.subscribe(subscriber.id, ta, "PA_a|TR_a".into(), "TR_a".into())
        .unwrap();
    subscriber.accept_next_offer(&sfu, &mut [&mut publisher]);
    sfu.subscribe(subscriber.id, tv, "PA_a|TR_v".into(), "TR_v".into())
        .unwrap();
    subscriber.accept_next_offer(&sfu, &mut [&mut publisher]);

    let (pa, pv) = (publisher.pt_of(Codec::Opus), publisher.pt_of(Codec::Vp8));
    assert_eq!((*pa, *pv), (109, 120), "publisher offers Firefox's numbers");
    // Send for 2 s (a keyframe every 25 packets) and check every packet carries the
    // subscriber's numbers.
    for seq in 1000u64..1100 {
        let vp8: &[u8] = if seq.is_multiple_of(25) {
            &VP8_KEYFRAME
        } else {
            &VP8_DELTA
        };
        publisher.write(mids[0], pa, seq, seq as u32 * 960, &[0xfc, 9], false);
        publisher.write(mids[1], pv, seq, seq as u32 * 3000, vp8, true);
        publisher.pump(Duration::from_millis(10));
        subscriber.pump(Duration::from_millis(10));
    }
    let pts: std::collections::BTreeSet<u8> = subscriber
        .received
        .iter()
        .map(|p| *p.header.payload_type)
        .collect();
    assert_eq!(pts, [96u8, 111].into_iter().collect());
    let offered = subscriber.offered_pts();
    assert!(
        offered.contains(&96) && offered.contains(&111),
        "{offered:?}"
    );
}

#[test]
fn client_restarting_from_same_address_and_port_gets_a_working_session() {
    let sfu = start_sfu();
    let mut first = Peer::new(&sfu, "room", "alice", PcLayout::PublishOnly, |c| c, None);
    let addr = first.addr;
    live_publisher(&sfu, &mut first, &mut []);
    assert!(first.connected);
    // The client process dies: no leave, its socket closes, a new one opens on the same port.
    drop(first);
    let mut second = Peer::new(
        &sfu,
        "room",
        "alice",
        PcLayout::PublishOnly,
        |c| c,
        Some(addr),
    );
    live_publisher(&sfu, &mut second, &mut []);
    assert!(
        second.connected,
        "new session connects from the old address"
    );
}

/// An offer with only H.264 of the given profile-level-id must keep H.264 in the answer.
fn h264_only(profile: u32) -> impl FnOnce(str0m::RtcConfig) -> str0m::RtcConfig {
    move |cfg| {
        let mut cfg = cfg.clear_codecs();
        cfg.codec_config()
            .add_h264(102.into(), Some(103.into()), true, profile);
        cfg
    }
}

#[test]
fn h264_profiles_in_offers_keep_h264_in_the_answer() {
    for profile in [0x42e01f, 0x42e034, 0x640c34, 0x42001f] {
        let sfu = start_sfu();
        let mut publisher = Peer::new(
            &sfu,
            "room",
            "alice",
            PcLayout::PublishOnly,
            h264_only(profile),
            None,
        );
        let tv = TrackId::next();
        publisher.publish(
            &sfu,
            &[(
                MediaKind::Video,
                "cid-v",
                pending(tv, "cid-v", TrackKind::Video),
            )],
        );
        let answer = publisher.last_answer.clone();
        assert!(
            answer.contains("H264/90000"),
            "profile {profile:06x}: answer lost H.264:\n{answer}"
        );
    }
}

#[test]
fn answer_puts_constrained_baseline_first_among_h264_profiles() {
    let sfu = start_sfu();
    let chrome_like = |cfg: str0m::RtcConfig| {
        let mut cfg = cfg.clear_codecs();
        let c = cfg.codec_config();
        c.add_h264(102.into(), Some(103.into()), true, 0x42001f);
        c.add_h264(104.into(), Some(105.into()), true, 0x640c1f);
        c.add_h264(106.into(), Some(107.into()), true, 0x42e01f);
        cfg
    };
    let mut publisher = Peer::new(
        &sfu,
        "room",
        "alice",
        PcLayout::PublishOnly,
        chrome_like,
        None,
    );
    let tv = TrackId::next();
    publisher.publish(
        &sfu,
        &[(
            MediaKind::Video,
            "cid-v",
            pending(tv, "cid-v", TrackKind::Video),
        )],
    );
    let answer = &publisher.last_answer;
    let m_line = answer
        .lines()
        .find(|l| l.starts_with("m=video"))
        .expect("video section");
    let first_pt = m_line.split(' ').nth(3).expect("a payload type");
    let fmtp = answer
        .lines()
        .find(|l| l.starts_with(&format!("a=fmtp:{first_pt} ")))
        .expect("fmtp of first payload type");
    assert!(fmtp.contains("42e01f"), "first: {fmtp}\n{answer}");
}

#[test]
fn simulcast_forwards_highest_flowing_layer_and_falls_back_on_keyframe() {
    use str0m::media::{Direction, Simulcast, SimulcastLayer};
    let sfu = start_sfu();
    let mut publisher = Peer::new(&sfu, "room", "alice", PcLayout::PublishOnly, |c| c, None);
    let mut subscriber = Peer::new(&sfu, "room", "bob", PcLayout::Dual, |c| c, None);
    subscriber.accept_next_offer(&sfu, &mut [&mut publisher]);
    let tv = TrackId::next();
    let rids = ["q", "h", "f"];
    let mut mid = None;
    publisher.negotiate(
        &sfu,
        |api| {
            let sim = Simulcast {
                send: rids.iter().map(|r| SimulcastLayer::new(r)).collect(),
                recv: vec![],
            };
            mid = Some(api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some("s".into()),
                Some("cid-v".into()),
                Some(sim),
            ));
        },
        vec![PendingTrack {
            track: tv,
            cid: "cid-v".into(),
            kind: TrackKind::Video,
            rids: rids.iter().map(|r| r.to_string()).collect(),
            screen_share: false,
        }],
    );
    let mid = mid.unwrap();
    let pv = publisher.pt_of(Codec::Vp8);
    // Payload: VP8 keyframe or delta, last byte = layer index, so the receiver can tell.
    let payload = |layer: u8, key: bool| {
        let mut p = if key {
            VP8_KEYFRAME.to_vec()
        } else {
            VP8_DELTA.to_vec()
        };
        p.push(layer);
        p
    };
    let mut seq = [1u64; 3];
    let mut send = |publisher: &mut Peer, layers: &[u8], key: bool| {
        for &l in layers {
            let s = seq[usize::from(l)];
            seq[usize::from(l)] += 1;
            let rid = str0m::media::Rid::from(rids[usize::from(l)]);
            let mut api = publisher.rtc.direct_api();
            let tx = api.stream_tx_by_mid(mid, Some(rid)).expect("layer stream");
            tx.write_rtp(
                str0m::rtp::RtpWrite::new(
                    pv,
                    s.into(),
                    s as u32 * 3000,
                    std::time::Instant::now(),
                    payload(l, key),
                )
                .marker(true),
            );
        }
    };
    // All three layers flow until the track is live, then subscribe.
    let mut n = 0u32;
    loop {
        send(&mut publisher, &[0, 1, 2], n.is_multiple_of(10));
        n += 1;
        publisher.pump(Duration::from_millis(10));
        subscriber.pump(Duration::from_millis(1));
        if matches!(publisher.events.try_recv(), Ok(SfuEvent::TrackLive { .. })) {
            break;
        }
        assert!(n < 300, "track never went live");
    }
    sfu.subscribe(subscriber.id, tv, "PA_a|TR_v".into(), "TR_v".into())
        .unwrap();
    subscriber.accept_next_offer(&sfu, &mut [&mut publisher]);
    for i in 0..100u32 {
        send(&mut publisher, &[0, 1, 2], i.is_multiple_of(10));
        publisher.pump(Duration::from_millis(10));
        subscriber.pump(Duration::from_millis(10));
    }
    let got: Vec<u8> = subscriber
        .received
        .iter()
        .filter_map(|p| p.payload.last().copied())
        .collect();
    assert!(!got.is_empty(), "nothing forwarded");
    assert!(
        got.iter().all(|l| *l == 2),
        "only the top layer while it flows: {got:?}"
    );
    let before = subscriber.received.len();
    // The top layer stops; after it goes stale the middle layer takes over at a keyframe.
    for i in 0..250u32 {
        send(&mut publisher, &[0, 1], i.is_multiple_of(10));
        publisher.pump(Duration::from_millis(10));
        subscriber.pump(Duration::from_millis(10));
    }
    let after: Vec<&str0m::rtp::RtpPacket> = subscriber.received[before..].iter().collect();
    assert!(
        after.iter().any(|p| p.payload.last() == Some(&1)),
        "middle layer never forwarded"
    );
    assert!(
        after.iter().all(|p| p.payload.last() != Some(&0)),
        "dropped below the best flowing layer"
    );
    // One outgoing stream: sequence numbers stay contiguous across the switch.
    let seqs: Vec<u64> = subscriber.received.iter().map(|p| *p.seq_no).collect();
    for w in seqs.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "gap or reorder in forwarded sequence numbers"
        );
    }
}
