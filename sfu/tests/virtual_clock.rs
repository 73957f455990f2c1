//! Component tests of the media core on a virtual clock: str0m client peers pumped through a
//! `MediaCore` in memory (no sockets, no wall time). Join, publish, subscribe on both
//! peer-connection layouts, simulcast layer switches, ICE failure of a silent peer, an ICE
//! restart (what a resumed client does), room isolation, and dynacast (which layers the
//! publisher is told to encode).

mod common;
mod virtual_net;

use str0m::format::Codec;
use switchboard_sfu::{Command, Layer, PcLayout, SfuEvent, TrackKind};
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
