//! Media threads: rooms placed on threads, one UDP port for all of them, isolation between
//! threads. str0m client peers over loopback UDP against `switchboard_sfu::start` with two
//! media threads (the single-port dispatcher in front).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use str0m::format::Codec;
use str0m::media::{MediaKind, Mid};
use switchboard_sfu::{PcLayout, PendingTrack, SfuEvent, SfuHandle, TrackId, TrackKind};

/// A room with a video publisher and a subscriber receiving it.
struct Call {
    publisher: Peer,
    subscriber: Peer,
    track: TrackId,
    mid: Mid,
    seq: u64,
}

impl Call {
    fn start(sfu: &SfuHandle, room: &str, layout: PcLayout) -> Self {
        let mut publisher = Peer::new(sfu, room, "pub", PcLayout::PublishOnly, |c| c, None);
        let mut subscriber = Peer::new(sfu, room, "sub", layout, |c| c, None);
        if layout == PcLayout::Dual {
            subscriber.accept_next_offer(sfu, &mut [&mut publisher]);
        }
        let track = TrackId::next();
        let mids = publisher.publish(
            sfu,
            &[(
                MediaKind::Video,
                "cid-v",
                PendingTrack {
                    track,
                    cid: "cid-v".into(),
                    kind: TrackKind::Video,
                    rids: Vec::new(),
                    screen_share: false,
                },
            )],
        );
        let mut call = Call {
            publisher,
            subscriber,
            track,
            mid: mids[0],
            seq: 1,
        };
        let mut live = false;
        for _ in 0..300 {
            call.send(true);
            if let Ok(SfuEvent::TrackLive { .. }) = call.publisher.events.try_recv() {
                live = true;
                break;
            }
        }
        assert!(live, "track went live in {room}");
        sfu.subscribe(call.subscriber.id, track, "PA_p|TR_v".into(), "TR_v".into())
            .unwrap();
        match layout {
            PcLayout::Dual => call
                .subscriber
                .accept_next_offer(sfu, &mut [&mut call.publisher]),
            _ => {
                // One PC: the client offers the receive-only section the server asks for.
                loop {
                    if let SfuEvent::NeedOffer { .. } =
                        call.subscriber.next_event(&mut [&mut call.publisher])
                    {
                        break;
                    }
                }
                call.subscriber.negotiate(
                    sfu,
                    |api| {
                        api.add_media(
                            MediaKind::Video,
                            str0m::media::Direction::RecvOnly,
                            None,
                            None,
                            None,
                        );
                    },
                    Vec::new(),
                );
            }
        }
        call
    }

    /// One VP8 packet (a keyframe when `key`), then a little pumping.
    fn send(&mut self, key: bool) {
        let pt = self.publisher.pt_of(Codec::Vp8);
        let payload: &[u8] = if key { &VP8_KEYFRAME } else { &VP8_DELTA };
        self.publisher.write(
            self.mid,
            pt,
            self.seq,
            self.seq as u32 * 3000,
            payload,
            true,
        );
        self.seq += 1;
        self.publisher.pump(Duration::from_millis(5));
        self.subscriber.pump(Duration::from_millis(2));
    }

    /// Sends `n` packets, a keyframe every 10.
    fn run(&mut self, n: u64) {
        for _ in 0..n {
            let key = self.seq.is_multiple_of(10);
            self.send(key);
        }
    }
}

fn forwarded_on(sfu: &SfuHandle, thread: usize) -> u64 {
    sfu.metrics().threads[thread]
        .rtp_forwarded
        .load(Ordering::Relaxed)
}

#[test]
fn two_rooms_land_on_two_threads_and_both_forward() {
    let sfu = start_sfu_threads(2);
    assert_eq!(sfu.media_threads(), 2);
    let mut a = Call::start(&sfu, "room-a", PcLayout::Dual);
    let mut b = Call::start(&sfu, "room-b", PcLayout::Dual);
    let (ta, tb) = (sfu.thread_of_room("room-a"), sfu.thread_of_room("room-b"));
    assert!(ta.is_some() && tb.is_some() && ta != tb, "{ta:?} {tb:?}");
    for _ in 0..10 {
        a.run(10);
        b.run(10);
    }
    assert!(a.subscriber.received.len() > 30, "room a forwards");
    assert!(b.subscriber.received.len() > 30, "room b forwards");
    assert!(forwarded_on(&sfu, 0) > 0 && forwarded_on(&sfu, 1) > 0);
    // Room b's subscriber asks for room a's track: refused on its own thread.
    sfu.subscribe(b.subscriber.id, a.track, "x".into(), "y".into())
        .unwrap();
    let refused = || sfu.metrics().subscriptions_refused.load(Ordering::Relaxed);
    pump_until(
        &mut [&mut b.publisher, &mut b.subscriber],
        Duration::from_secs(5),
        |_| refused() == 1,
    );
    let before = b.subscriber.received.len();
    a.run(30);
    b.run(30);
    let ssrcs: std::collections::HashSet<_> = b.subscriber.received[before..]
        .iter()
        .map(|p| p.header.ssrc)
        .collect();
    assert_eq!(ssrcs.len(), 1, "only room b's one track reaches room b");
}

#[test]
fn participants_of_a_room_share_its_thread_on_both_signalling_paths() {
    let sfu = start_sfu_threads(2);
    let mut other = Call::start(&sfu, "first", PcLayout::Dual);
    // The second room goes to the other thread; its /rtc and /rtc/v1 participants with it.
    let mut call = Call::start(&sfu, "mixed", PcLayout::Single);
    let mut dual = Peer::new(&sfu, "mixed", "dual", PcLayout::Dual, |c| c, None);
    dual.accept_next_offer(&sfu, &mut [&mut call.publisher]);
    let t = sfu.thread_of_room("mixed").expect("placed");
    assert_ne!(Some(t), sfu.thread_of_room("first"));
    pump_until(
        &mut [&mut call.publisher, &mut call.subscriber, &mut dual],
        Duration::from_secs(5),
        |_| {
            sfu.metrics().threads[t]
                .participants
                .load(Ordering::Relaxed)
                == 3
        },
    );
    call.run(60);
    other.run(10);
    assert!(
        call.subscriber.received.len() > 20,
        "single-PC subscriber receives"
    );
}

#[test]
fn a_room_ending_on_one_thread_leaves_the_other_forwarding() {
    let sfu = start_sfu_threads(2);
    let mut a = Call::start(&sfu, "room-a", PcLayout::Dual);
    let mut b = Call::start(&sfu, "room-b", PcLayout::Single);
    a.run(20);
    b.run(20);
    let ta = sfu.thread_of_room("room-a").expect("placed");
    sfu.leave(a.publisher.id).unwrap();
    sfu.leave(a.subscriber.id).unwrap();
    assert_eq!(sfu.thread_of_room("room-a"), None);
    let before = b.subscriber.received.len();
    b.run(60);
    assert!(
        b.subscriber.received.len() > before + 30,
        "room b goes on: {} -> {}",
        before,
        b.subscriber.received.len()
    );
    assert_eq!(
        sfu.metrics().threads[ta].rooms.load(Ordering::Relaxed),
        0,
        "room a is gone from its thread"
    );
}
