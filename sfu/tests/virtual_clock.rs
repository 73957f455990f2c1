//! Component tests of the media core on a virtual clock: str0m client peers pumped through a
//! `MediaCore` in memory (no sockets, no wall time). Join, publish, subscribe on both
//! peer-connection layouts, simulcast layer switches, ICE failure of a silent peer, an ICE
//! restart (what a resumed client does), room isolation, and dynacast (which layers the
//! publisher is told to encode).

mod common;
mod virtual_net;

use str0m::format::Codec;
use switchboard_sfu::{
    Command, ConnectionQuality, Layer, ParticipantId, PcLayout, SfuEvent, TrackKind,
};
use virtual_net::*;

/// Client `who` sends a VP8 keyframe tagged `tag` on `mid` and its track goes live; returns
/// its VP8 payload type.
fn go_live(net: &mut Net, who: usize, mid: str0m::media::Mid, tag: u8) -> str0m::media::Pt {
    let pt = net.pt_of(who, Codec::Vp8);
    net.write(who, mid, None, pt, 1, vp8_keyframe(tag));
    net.wait_event(who, |e| {
        matches!(e, SfuEvent::TrackLive { .. }).then_some(())
    });
    pt
}

/// Frame `seq` of a stream tagged `tag`: a keyframe every 30 packets, delta frames between.
fn frame(seq: u64, tag: u8) -> Vec<u8> {
    if seq.is_multiple_of(30) {
        vp8_keyframe(tag)
    } else {
        vp8_delta(tag)
    }
}

/// Connects clients (every PC) within 5 s of virtual time.
fn connect(net: &mut Net, clients: &[usize]) {
    net.run_until(5_000, |n| clients.iter().all(|c| n.connected(*c)));
}

#[test]
fn published_video_reaches_subscribers_on_both_layouts() {
    let mut net = Net::new();
    let alice = net.join("room", "alice", PcLayout::Single);
    let bob = net.join("room", "bob", PcLayout::Dual);
    let carol = net.join("room", "carol", PcLayout::Single);
    let (track, mid) = net.publish(alice, TrackKind::Video, &[]);
    connect(&mut net, &[alice, bob, carol]);
    let pt = go_live(&mut net, alice, mid, 7);
    net.subscribe(bob, track);
    net.subscribe(carol, track);
    for seq in 2..200u64 {
        net.write(alice, mid, None, pt, seq, frame(seq, 7));
        net.run(10);
    }
    for who in [bob, carol] {
        let got = net.received(who);
        assert!(got.len() > 100, "client {who} got {} packets", got.len());
        assert!(got.iter().all(|p| p.payload.last() == Some(&7)));
        let seqs: Vec<u64> = got.iter().map(|p| *p.seq_no).collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "contiguous: {seqs:?}"
        );
    }
    assert_eq!(net.core.stats().subscriptions, 2);
    assert_eq!(net.core.stats().rooms, 1);
}

#[test]
fn simulcast_cap_switches_layer_on_the_next_keyframe() {
    let mut net = Net::new();
    let alice = net.join("room", "alice", PcLayout::Single);
    let bob = net.join("room", "bob", PcLayout::Dual);
    let rids = ["q", "h", "f"];
    let (track, mid) = net.publish(alice, TrackKind::Video, &rids);
    connect(&mut net, &[alice, bob]);
    let pt = net.pt_of(alice, Codec::Vp8);
    let mut seq = 1u64;
    let send_all = |net: &mut Net, seq: &mut u64, key: bool| {
        for (l, rid) in rids.iter().enumerate() {
            let p = if key {
                vp8_keyframe(l as u8)
            } else {
                vp8_delta(l as u8)
            };
            net.write(alice, mid, Some(rid), pt, *seq, p);
        }
        *seq += 1;
        net.run(10);
    };
    send_all(&mut net, &mut seq, true);
    net.wait_event(alice, |e| {
        matches!(e, SfuEvent::TrackLive { .. }).then_some(())
    });
    let bob_id = net.clients[bob].id;
    // Capped at the lowest layer before the subscription exists (kept and applied).
    net.core.handle_command(
        net.now,
        Command::SetMaxLayer {
            participant: bob_id,
            track,
            layer: Layer::Low,
        },
    );
    net.subscribe(bob, track);
    for i in 0..100u32 {
        send_all(&mut net, &mut seq, i.is_multiple_of(20));
    }
    let low = net.received(bob).len();
    assert!(low > 50, "low layer forwarded: {low}");
    assert!(net
        .received(bob)
        .iter()
        .all(|p| p.payload.last() == Some(&0)));
    net.core.handle_command(
        net.now,
        Command::SetMaxLayer {
            participant: bob_id,
            track,
            layer: Layer::High,
        },
    );
    // Delta frames only: the switch waits (the low layer goes on meanwhile).
    for _ in 0..10 {
        send_all(&mut net, &mut seq, false);
    }
    assert!(net.received(bob)[low..]
        .iter()
        .all(|p| p.payload.last() == Some(&0)));
    for i in 0..50u32 {
        send_all(&mut net, &mut seq, i.is_multiple_of(20));
    }
    let got = net.received(bob);
    assert_eq!(got.last().and_then(|p| p.payload.last()), Some(&2));
    // One outgoing stream: increasing sequence numbers, no gap but at the switch itself (the
    // old layer's last packet, written in the same round as the new layer's keyframe, can be
    // missing at the receiver; it is retransmittable and not needed to decode the new layer).
    let seqs: Vec<u64> = got.iter().map(|p| *p.seq_no).collect();
    let gaps: Vec<_> = seqs.windows(2).filter(|w| w[1] != w[0] + 1).collect();
    assert!(
        gaps.len() <= 1 && gaps.iter().all(|w| w[1] == w[0] + 2),
        "one contiguous stream across the switch: {gaps:?}"
    );
}

#[test]
fn a_silent_peer_fails_after_ice_consent_is_lost_and_the_room_goes_on() {
    let mut net = Net::new();
    let alice = net.join("room", "alice", PcLayout::Single);
    let bob = net.join("room", "bob", PcLayout::Dual);
    let carol = net.join("room", "carol", PcLayout::Single);
    let (track, mid) = net.publish(alice, TrackKind::Video, &[]);
    connect(&mut net, &[alice, bob, carol]);
    let pt = go_live(&mut net, alice, mid, 1);
    net.subscribe(bob, track);
    net.subscribe(carol, track);
    let mut seq = 2;
    for _ in 0..50 {
        net.write(alice, mid, None, pt, seq, frame(seq, 1));
        seq += 1;
        net.run(10);
    }
    assert!(net.received(bob).len() > 10);
    net.clients[bob].silent = true;
    let reason = {
        let mut found = None;
        for _ in 0..6_000 {
            net.write(alice, mid, None, pt, seq, frame(seq, 1));
            seq += 1;
            net.run(10);
            if let Some(e) = net.clients[bob]
                .seen
                .iter()
                .find(|e| matches!(e, SfuEvent::Failed { .. }))
            {
                found = Some(format!("{e:?}"));
                break;
            }
        }
        found.expect("silent peer failed within 60 s of virtual time")
    };
    assert!(
        reason.contains("ice") || reason.contains("closed"),
        "{reason}"
    );
    assert_eq!(net.core.stats().participants, 2);
    assert_eq!(net.core.stats().subscriptions, 1);
    // Carol still receives.
    let before = net.received(carol).len();
    for _ in 0..50 {
        net.write(alice, mid, None, pt, seq, frame(seq, 1));
        seq += 1;
        net.run(10);
    }
    assert!(
        net.received(carol).len() >= before + 40,
        "carol: {} -> {}, events {:?}, stats {:?}",
        before,
        net.received(carol).len(),
        net.clients[carol].seen,
        net.core.stats()
    );
}

#[test]
fn an_ice_restart_keeps_the_participant_and_its_media() {
    let mut net = Net::new();
    let alice = net.join("room", "alice", PcLayout::Single);
    let bob = net.join("room", "bob", PcLayout::Single);
    let (track, mid) = net.publish(alice, TrackKind::Video, &[]);
    connect(&mut net, &[alice, bob]);
    let pt = go_live(&mut net, alice, mid, 3);
    net.subscribe(bob, track);
    let mut seq = 2;
    for _ in 0..50 {
        net.write(alice, mid, None, pt, seq, vp8_delta(3));
        seq += 1;
        net.run(10);
    }
    // What a resuming client does: a new offer with new ICE credentials.
    net.negotiate(
        bob,
        |api| {
            api.ice_restart(false);
        },
        Vec::new(),
    );
    let before = net.received(bob).len();
    for i in 0..300u32 {
        net.write(alice, mid, None, pt, seq, frame(u64::from(i), 3));
        seq += 1;
        net.run(10);
    }
    assert!(
        net.received(bob).len() > before + 200,
        "media after the restart"
    );
    assert!(!net.clients[bob]
        .seen
        .iter()
        .any(|e| matches!(e, SfuEvent::Failed { .. })));
    assert_eq!(net.core.stats().participants, 2);
}

#[test]
fn a_subscription_to_another_rooms_track_is_refused_and_nothing_crosses() {
    let mut net = Net::new();
    let alice = net.join("room-a", "alice", PcLayout::Single);
    let bob = net.join("room-a", "bob", PcLayout::Dual);
    let carol = net.join("room-b", "carol", PcLayout::Single);
    let dave = net.join("room-b", "dave", PcLayout::Dual);
    let (ta, ma) = net.publish(alice, TrackKind::Video, &[]);
    let (tc, mc) = net.publish(carol, TrackKind::Video, &[]);
    connect(&mut net, &[alice, bob, carol, dave]);
    let pt_a = net.pt_of(alice, Codec::Vp8);
    let pt_c = net.pt_of(carol, Codec::Vp8);
    net.write(alice, ma, None, pt_a, 1, vp8_keyframe(0xa));
    net.write(carol, mc, None, pt_c, 1, vp8_keyframe(0xc));
    net.run(50);
    net.subscribe(bob, ta);
    net.subscribe(dave, tc);
    // Dave asks for room A's track: refused, no new section offered.
    let dave_id = net.clients[dave].id;
    net.core.handle_command(
        net.now,
        Command::Subscribe {
            participant: dave_id,
            track: ta,
            stream_id: "x".into(),
            track_label: "y".into(),
        },
    );
    assert_eq!(net.core.stats().subscriptions_refused, 1);
    assert_eq!(net.core.stats().subscriptions, 2);
    for seq in 2..150u64 {
        net.write(alice, ma, None, pt_a, seq, frame(seq, 0xa));
        net.write(carol, mc, None, pt_c, seq, frame(seq, 0xc));
        net.run(10);
    }
    assert!(net.received(bob).len() > 50);
    assert!(net.received(dave).len() > 50);
    assert!(net
        .received(bob)
        .iter()
        .all(|p| p.payload.last() == Some(&0xa)));
    assert!(net
        .received(dave)
        .iter()
        .all(|p| p.payload.last() == Some(&0xc)));
    assert_eq!(net.core.stats().rooms, 2);
}

#[test]
fn leaving_last_participant_removes_the_room_and_its_sessions() {
    let mut net = Net::new();
    let alice = net.join("room", "alice", PcLayout::Dual);
    let bob = net.join("room", "bob", PcLayout::Single);
    net.publish(bob, TrackKind::Audio, &[]);
    connect(&mut net, &[alice, bob]);
    assert_eq!(net.core.stats().sessions, 3);
    assert_eq!(net.core.stats().published_tracks, 1);
    for who in [alice, bob] {
        let participant = net.clients[who].id;
        net.core
            .handle_command(net.now, Command::Leave { participant });
    }
    net.run(10);
    let s = net.core.stats();
    assert_eq!((s.rooms, s.participants, s.sessions), (0, 0, 0));
    assert!(!net.core.has_room("room"));
}

/// A VP8 payload whose descriptor carries a 15-bit PictureID and TL0PICIDX, ending in `tag`.
fn vp8_numbered(key: bool, picture_id: u16, tl0: u8, tag: u8) -> Vec<u8> {
    let mut p = vec![
        0x90,
        0xc0,
        0x80 | (picture_id >> 8) as u8,
        picture_id as u8,
        tl0,
    ];
    if key {
        p.extend_from_slice(&[0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00, 0x00]);
    } else {
        p.push(0x01);
    }
    p.push(tag);
    p
}

#[test]
fn vp8_picture_ids_stay_continuous_across_a_layer_switch() {
    let mut net = Net::new();
    let alice = net.join("room", "alice", PcLayout::Single);
    let bob = net.join("room", "bob", PcLayout::Single);
    let rids = ["q", "h", "f"];
    let (track, mid) = net.publish(alice, TrackKind::Video, &rids);
    connect(&mut net, &[alice, bob]);
    let pt = net.pt_of(alice, Codec::Vp8);
    // Each layer is its own encoder: its own PictureID and TL0PICIDX bases.
    let bases = [(100u16, 10u8), (20_000, 77), (32_700, 250)];
    let mut seq = 1u64;
    let mut picture = 0u16;
    let mut send_all = |net: &mut Net, key: bool| {
        for (l, rid) in rids.iter().enumerate() {
            let (pic, tl0) = bases[l];
            let p = vp8_numbered(
                key,
                (pic + picture) % 32_768,
                tl0.wrapping_add(picture as u8),
                l as u8,
            );
            net.write(alice, mid, Some(rid), pt, seq, p);
        }
        seq += 1;
        picture += 1;
        net.run(10);
    };
    send_all(&mut net, true);
    net.wait_event(alice, |e| {
        matches!(e, SfuEvent::TrackLive { .. }).then_some(())
    });
    let bob_id = net.clients[bob].id;
    let cap = |net: &mut Net, layer| {
        net.core.handle_command(
            net.now,
            Command::SetMaxLayer {
                participant: bob_id,
                track,
                layer,
            },
        )
    };
    cap(&mut net, Layer::Low);
    net.subscribe(bob, track);
    // Low, then high, then medium, switching on keyframes every 20 pictures.
    for (round, layer) in [Layer::Low, Layer::High, Layer::Medium]
        .into_iter()
        .enumerate()
    {
        if round > 0 {
            cap(&mut net, layer);
        }
        for i in 0..45u32 {
            send_all(&mut net, i.is_multiple_of(20));
        }
    }
    let got = net.received(bob);
    let layers: Vec<u8> = got
        .iter()
        .filter_map(|p| p.payload.last().copied())
        .collect();
    assert!(layers.contains(&0) && layers.contains(&2) && layers.ends_with(&[1]));
    // One picture per packet here: PictureID and TL0PICIDX go up by one from packet to packet
    // (mod their widths), except where a packet itself is missing (sequence gap of the same size).
    let fields: Vec<(u64, u16, u8)> = got
        .iter()
        .map(|p| {
            let d = switchboard_sfu::Vp8Descriptor::parse(&p.payload).expect("descriptor");
            let (pic, long) = d.picture_id.expect("picture id");
            assert!(long, "a 15-bit PictureID stays 15-bit");
            (*p.seq_no, pic, d.tl0picidx.expect("tl0picidx"))
        })
        .collect();
    for w in fields.windows(2) {
        let (s0, p0, t0) = w[0];
        let (s1, p1, t1) = w[1];
        let step = s1 - s0;
        assert!(step <= 2, "at most one packet lost at a switch: {w:?}");
        assert_eq!((p0 as u64 + step) % 32_768, p1 as u64, "PictureID: {w:?}");
        assert_eq!(t0.wrapping_add(step as u8), t1, "TL0PICIDX: {w:?}");
    }
}

#[test]
fn a_keyframe_that_does_not_come_is_asked_for_again_until_it_does() {
    let mut net = Net::new();
    let alice = net.join("room", "alice", PcLayout::Single);
    let bob = net.join("room", "bob", PcLayout::Dual);
    let (track, mid) = net.publish(alice, TrackKind::Video, &[]);
    connect(&mut net, &[alice, bob]);
    let pt = go_live(&mut net, alice, mid, 5);
    net.subscribe(bob, track);
    let asked_from = net.now;
    // A static screen share: one delta frame, then nothing for 3 s (the publisher ignores
    // the requests, as if each PLI or its keyframe were lost).
    net.write(alice, mid, None, pt, 2, vp8_delta(5));
    net.run(3_000);
    let requests: Vec<_> = net.clients[alice].pcs[0]
        .keyframe_requests
        .iter()
        .map(|(at, _)| *at)
        .filter(|at| *at >= asked_from)
        .collect();
    assert!(
        (4..=8).contains(&requests.len()),
        "asked again every throttle window: {} requests in 3 s",
        requests.len()
    );
    assert!(
        requests
            .windows(2)
            .all(|w| w[1] - w[0] >= std::time::Duration::from_millis(450)),
        "never more than one per window"
    );
    assert!(
        net.received(bob).is_empty(),
        "nothing but a keyframe starts the stream"
    );
    // The keyframe comes: bob sees it, and the requests stop.
    net.write(alice, mid, None, pt, 3, vp8_keyframe(5));
    net.run(100);
    assert_eq!(net.received(bob).len(), 1);
    let n = net.clients[alice].pcs[0].keyframe_requests.len();
    net.run(2_000);
    assert_eq!(net.clients[alice].pcs[0].keyframe_requests.len(), n);
}

#[test]
fn a_subscriber_inside_the_throttle_window_still_gets_its_keyframe() {
    let mut net = Net::new();
    let alice = net.join("room", "alice", PcLayout::Single);
    let bob = net.join("room", "bob", PcLayout::Single);
    let carol = net.join("room", "carol", PcLayout::Single);
    let (track, mid) = net.publish(alice, TrackKind::Video, &[]);
    connect(&mut net, &[alice, bob, carol]);
    let pt = go_live(&mut net, alice, mid, 9);
    net.subscribe(bob, track);
    net.run(20);
    // Bob's request was answered at once; carol comes 100 ms later, inside the window.
    net.write(alice, mid, None, pt, 2, vp8_keyframe(9));
    net.run(80);
    assert_eq!(net.received(bob).len(), 1);
    let before = net.clients[alice].pcs[0].keyframe_requests.len();
    let carol_at = net.now;
    net.subscribe(carol, track);
    net.run(1_000);
    let late: Vec<_> = net.clients[alice].pcs[0].keyframe_requests[before..]
        .iter()
        .map(|(at, _)| *at - carol_at)
        .collect();
    assert!(
        late.first()
            .is_some_and(|d| *d <= std::time::Duration::from_millis(1_000)),
        "carol's keyframe request went out within 1 s: {late:?}"
    );
}

/// A VP8 payload of `len` bytes (keyframe or delta) ending in `tag`.
fn vp8_sized(key: bool, len: usize, tag: u8) -> Vec<u8> {
    let mut p = if key {
        vp8_keyframe(tag)
    } else {
        vp8_delta(tag)
    };
    let last = p.pop().unwrap_or(tag);
    p.resize(len.saturating_sub(1), 0);
    p.push(last);
    p
}

#[test]
fn a_narrow_downlink_gets_the_low_layer_and_gets_the_high_one_back_when_it_widens() {
    let mut net = Net::new();
    let alice = net.join("room", "alice", PcLayout::Single);
    let bob = net.join("room", "bob", PcLayout::Single);
    let carol = net.join("room", "carol", PcLayout::Single);
    let rids = ["q", "h", "f"];
    let (track, mid) = net.publish(alice, TrackKind::Video, &rids);
    connect(&mut net, &[alice, bob, carol]);
    let pt = net.pt_of(alice, Codec::Vp8);
    // Per 10 ms: q one 200-byte packet (~180 kbit/s with headers), h one 600-byte packet
    // (~500 kbit/s), f two 1000-byte packets (~1.7 Mbit/s); keyframes every second.
    let mut seq = [1u64; 3];
    let mut tick = 0u64;
    let mut send = |net: &mut Net, ms: u64| {
        for _ in 0..ms / 10 {
            let key = tick.is_multiple_of(100);
            for (l, rid) in rids.iter().enumerate() {
                let (n, len) = [(1, 200), (1, 600), (2, 1000)][l];
                for _ in 0..n {
                    net.write(
                        alice,
                        mid,
                        Some(rid),
                        pt,
                        seq[l],
                        vp8_sized(key, len, l as u8),
                    );
                    seq[l] += 1;
                }
            }
            tick += 1;
            net.run(10);
        }
    };
    send(&mut net, 200);
    net.wait_event(alice, |e| {
        matches!(e, SfuEvent::TrackLive { .. }).then_some(())
    });
    net.subscribe(bob, track);
    net.subscribe(carol, track);
    send(&mut net, 3_000);
    let layer_now = |net: &Net, who: usize| {
        net.received(who)
            .last()
            .and_then(|p| p.payload.last().copied())
    };
    assert_eq!(
        layer_now(&net, bob),
        Some(2),
        "a clean link starts on the high layer"
    );
    // Bob's downlink narrows to 400 kbit/s: within 10 s he is on the low layer; carol stays high.
    net.clients[bob].pcs[0].downlink = Some(Link::new(400_000, 50));
    let narrowed = net.received(bob).len();
    send(&mut net, 10_000);
    assert_eq!(
        layer_now(&net, bob),
        Some(0),
        "bob moved down to the low layer"
    );
    assert_eq!(layer_now(&net, carol), Some(2), "carol's link is not bob's");
    let tail: Vec<u8> = net.received(bob)[narrowed..]
        .iter()
        .rev()
        .take(50)
        .filter_map(|p| p.payload.last().copied())
        .collect();
    assert!(
        tail.iter().all(|l| *l == 0),
        "settled on the low layer: {tail:?}"
    );
    // The link widens again: back on the high layer within 15 s.
    net.clients[bob].pcs[0].downlink = None;
    let mut back_after = None;
    for s in 0..15u64 {
        send(&mut net, 1_000);
        if layer_now(&net, bob) == Some(2) {
            back_after = Some(s + 1);
            break;
        }
    }
    assert!(
        back_after.is_some(),
        "bob back on the high layer within 15 s"
    );
    let stats = net.core.stats();
    assert!(
        stats.bandwidth_downgrades >= 1 && stats.bandwidth_upgrades >= 1,
        "{stats:?}"
    );
}

/// The layer lists of the `SubscribedLayers` events client `who` got so far (taken out).
fn layers_told(net: &mut Net, who: usize) -> Vec<[bool; 3]> {
    let seen = std::mem::take(&mut net.clients[who].seen);
    let (told, rest): (Vec<_>, Vec<_>) = seen
        .into_iter()
        .partition(|e| matches!(e, SfuEvent::SubscribedLayers { .. }));
    net.clients[who].seen = rest;
    told.into_iter()
        .filter_map(|e| match e {
            SfuEvent::SubscribedLayers { layers, .. } => Some(layers.0),
            _ => None,
        })
        .collect()
}

#[test]
fn dynacast_tells_the_publisher_which_layers_its_subscriber_needs() {
    let mut net = Net::new();
    let alice = net.join("room", "alice", PcLayout::Single);
    let bob = net.join("room", "bob", PcLayout::Dual);
    let rids = ["q", "h", "f"];
    let (track, mid) = net.publish(alice, TrackKind::Video, &rids);
    connect(&mut net, &[alice, bob]);
    let pt = net.pt_of(alice, Codec::Vp8);
    // The publisher sends the layers it was last told to (all before anything is told), a
    // keyframe on each every 20 frames, one frame per layer every 10 ms.
    let mut seq = 1u64;
    let mut on = [true; 3];
    let mut frame_no = 0u32;
    let mut frames_for = |net: &mut Net, on: [bool; 3], ms: u64| {
        for _ in 0..ms / 10 {
            for (l, rid) in rids.iter().enumerate() {
                if on[l] {
                    let key = frame_no.is_multiple_of(20);
                    let p = if key {
                        vp8_keyframe(l as u8)
                    } else {
                        vp8_delta(l as u8)
                    };
                    net.write(alice, mid, Some(rid), pt, seq, p);
                }
            }
            seq += 1;
            frame_no += 1;
            net.run(10);
        }
    };
    frames_for(&mut net, on, 10);
    net.wait_event(alice, |e| {
        matches!(e, SfuEvent::TrackLive { .. }).then_some(())
    });
    let bob_id = net.clients[bob].id;
    net.core.handle_command(
        net.now,
        Command::SetMaxLayer {
            participant: bob_id,
            track,
            layer: Layer::Low,
        },
    );
    net.subscribe(bob, track);
    // Nothing is told in the first 10 s after going live, then the low layer only.
    frames_for(&mut net, on, 9_000);
    assert_eq!(layers_told(&mut net, alice), Vec::<[bool; 3]>::new());
    frames_for(&mut net, on, 1_200);
    assert_eq!(layers_told(&mut net, alice), [[true, false, false]]);
    on = [true, false, false];
    frames_for(&mut net, on, 2_000);
    let low = net.received(bob).len();
    assert!(low > 100, "bob gets the low layer: {low} packets");
    assert!(net.received(bob)[low - 50..]
        .iter()
        .all(|p| p.payload.last() == Some(&0)));
    // Uncapped: told at once; bob moves to the full layer once it flows again.
    net.core.handle_command(
        net.now,
        Command::SetMaxLayer {
            participant: bob_id,
            track,
            layer: Layer::High,
        },
    );
    net.run(1);
    assert_eq!(layers_told(&mut net, alice), [[true; 3]]);
    // Until the publisher restarts the upper layers, bob goes on with the low one.
    let before = net.received(bob).len();
    frames_for(&mut net, on, 300);
    let meanwhile = &net.received(bob)[before..];
    assert!(
        meanwhile.len() > 20,
        "bob starved: {} packets",
        meanwhile.len()
    );
    assert!(meanwhile.iter().all(|p| p.payload.last() == Some(&0)));
    on = [true; 3];
    frames_for(&mut net, on, 1_000);
    assert_eq!(
        net.received(bob).last().and_then(|p| p.payload.last()),
        Some(&2),
        "bob switched to the full layer"
    );
    // Nobody watches any more: every layer off, but only 5 s later.
    net.core.handle_command(
        net.now,
        Command::Unsubscribe {
            participant: bob_id,
            track,
        },
    );
    frames_for(&mut net, on, 4_800);
    assert_eq!(layers_told(&mut net, alice), Vec::<[bool; 3]>::new());
    frames_for(&mut net, on, 400);
    assert_eq!(layers_told(&mut net, alice), [[false; 3]]);
}

/// Every `SpeakersChanged` client `i` got so far, oldest first, as `(participant, level,
/// active)`.
fn speaker_changes(net: &Net, i: usize) -> Vec<Vec<(ParticipantId, f32, bool)>> {
    net.clients[i]
        .seen
        .iter()
        .filter_map(|e| match e {
            SfuEvent::SpeakersChanged { speakers } => Some(
                speakers
                    .iter()
                    .map(|s| (s.participant, s.level, s.active))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

#[test]
fn audio_levels_become_speaker_changes_for_everyone_in_the_room() {
    let mut net = Net::new();
    let alice = net.join("room", "alice", PcLayout::Single);
    let bob = net.join("room", "bob", PcLayout::Dual);
    let carol = net.join("room", "carol", PcLayout::Single);
    let dave = net.join("room", "dave", PcLayout::Dual);
    let other = net.join("elsewhere", "erin", PcLayout::Single);
    let mids: Vec<_> = [alice, bob, carol]
        .iter()
        .map(|who| net.publish(*who, TrackKind::Audio, &[]).1)
        .collect();
    connect(&mut net, &[alice, bob, carol, dave, other]);
    let pts: Vec<_> = [alice, bob, carol]
        .iter()
        .map(|who| net.pt_of(*who, Codec::Opus))
        .collect();
    // alice loud (5 −dBov), bob quieter but speaking (25), carol below the active level (50);
    // 20 ms packets for 3 s, then alice stops sending.
    let levels = [5u8, 25, 50];
    for seq in 1..=150u64 {
        for (k, who) in [alice, bob, carol].into_iter().enumerate() {
            net.write_audio(who, mids[k], pts[k], seq, levels[k]);
        }
        net.run(20);
    }
    let (a, b, c) = (
        net.clients[alice].id,
        net.clients[bob].id,
        net.clients[carol].id,
    );
    let changes = speaker_changes(&net, dave);
    assert!(!changes.is_empty(), "no SpeakersChanged within 3 s");
    assert!(changes
        .iter()
        .flatten()
        .all(|(p, _, _)| *p != c && *p != net.clients[dave].id));
    let first = &changes[0];
    assert_eq!(
        first.iter().map(|s| s.0).collect::<Vec<_>>(),
        [a, b],
        "loudest first"
    );
    assert!(first[0].1 > first[1].1 && first.iter().all(|s| s.2));
    // Steady levels: after the average settles nothing more is sent.
    assert!(changes.len() <= 3, "{changes:?}");
    // Every participant of the room got the same, the speakers themselves included; the other
    // room nothing.
    for who in [alice, bob, carol] {
        assert_eq!(speaker_changes(&net, who), changes);
    }
    assert!(speaker_changes(&net, other).is_empty());
    // A late joiner hears at once who speaks now.
    let frank = net.join("room", "frank", PcLayout::Single);
    net.run(1);
    let now: Vec<_> = speaker_changes(&net, frank)[0]
        .iter()
        .map(|s| (s.0, s.2))
        .collect();
    assert_eq!(now, [(a, true), (b, true)]);
    // alice goes quiet (no packets): within two windows and a tick she is sent inactive, level 0.
    for seq in 151..=200u64 {
        for (k, who) in [bob, carol].into_iter().enumerate() {
            net.write_audio(who, mids[k + 1], pts[k + 1], seq, levels[k + 1]);
        }
        net.run(20);
    }
    let later = speaker_changes(&net, dave);
    let stopped: Vec<_> = later[changes.len()..].iter().flatten().collect();
    assert_eq!(stopped, [&(a, 0.0, false)], "{later:?}");
}

/// The qualities client `i` was last sent, by participant.
fn last_qualities(net: &Net, i: usize) -> Vec<(ParticipantId, ConnectionQuality)> {
    let mut q: Vec<_> = net.clients[i]
        .seen
        .iter()
        .rev()
        .find_map(|e| match e {
            SfuEvent::ConnectionQuality { updates } => {
                Some(updates.iter().map(|u| (u.participant, u.quality)).collect())
            }
            _ => None,
        })
        .unwrap_or_default();
    q.sort();
    q
}

#[test]
fn connection_quality_follows_upstream_loss_and_a_publisher_that_stops_is_lost() {
    let mut net = Net::new();
    let alice = net.join("room", "alice", PcLayout::Single);
    let bob = net.join("room", "bob", PcLayout::Dual);
    let (_, mid) = net.publish(alice, TrackKind::Audio, &[]);
    connect(&mut net, &[alice, bob]);
    let pt = net.pt_of(alice, Codec::Opus);
    let (a, b) = (net.clients[alice].id, net.clients[bob].id);
    let mut seq = 1u64;
    // `secs` of 20 ms packets, every `skip`-th one never sent (0: none skipped).
    let mut send = |net: &mut Net, secs: u64, skip: u64| {
        for _ in 0..secs * 50 {
            if skip == 0 || !seq.is_multiple_of(skip) {
                net.write_audio(alice, mid, pt, seq, 20);
            }
            seq += 1;
            net.run(20);
        }
    };
    send(&mut net, 6, 0);
    use ConnectionQuality::*;
    let mut want = vec![(a, Excellent), (b, Excellent)];
    want.sort();
    assert_eq!(last_qualities(&net, bob), want);
    assert_eq!(
        last_qualities(&net, alice),
        want,
        "everyone gets everyone's"
    );
    let sent = |net: &Net| {
        net.clients[bob]
            .seen
            .iter()
            .filter(|e| matches!(e, SfuEvent::ConnectionQuality { .. }))
            .count()
    };
    let before = sent(&net);
    send(&mut net, 5, 0);
    assert_eq!(sent(&net), before, "no change, nothing sent");
    // 10 % loss: each window scores 100 − 10 × 8 = 20; smoothed it falls through GOOD to POOR.
    send(&mut net, 10, 10);
    let q = last_qualities(&net, bob);
    assert!(
        q.contains(&(a, Poor)) && q.contains(&(b, Excellent)),
        "{q:?}"
    );
    // alice stops sending: within one interval she is lost.
    net.run(10_000);
    assert!(last_qualities(&net, bob).contains(&(a, Lost)));
}

#[test]
fn a_stopped_camera_alone_is_not_a_lost_connection() {
    let mut net = Net::new();
    let alice = net.join("room", "alice", PcLayout::Single);
    let bob = net.join("room", "bob", PcLayout::Dual);
    let (_, audio) = net.publish(alice, TrackKind::Audio, &[]);
    let (_, video) = net.publish(alice, TrackKind::Video, &[]);
    connect(&mut net, &[alice, bob]);
    let opus = net.pt_of(alice, Codec::Opus);
    let vp8 = go_live(&mut net, alice, video, 1);
    let a = net.clients[alice].id;
    let mut seq = 2u64;
    // `secs` of 20 ms audio packets, and a video frame with each when `camera`.
    let mut send = |net: &mut Net, secs: u64, camera: bool| {
        for _ in 0..secs * 50 {
            net.write_audio(alice, audio, opus, seq, 40);
            if camera {
                net.write(alice, video, None, vp8, seq, frame(seq, 1));
            }
            seq += 1;
            net.run(20);
        }
    };
    send(&mut net, 6, true);
    assert!(last_qualities(&net, bob).contains(&(a, ConnectionQuality::Excellent)));
    // The camera stops (livekit-client stops the track on mute), the microphone goes on.
    send(&mut net, 11, false);
    assert!(last_qualities(&net, bob).contains(&(a, ConnectionQuality::Excellent)));
    // Everything stops: lost.
    net.run(10_000);
    assert!(last_qualities(&net, bob).contains(&(a, ConnectionQuality::Lost)));
}
