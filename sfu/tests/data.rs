//! Data-channel relay through the media plane with str0m peers over loopback UDP.

mod common;

use std::time::{Duration, Instant};

use common::*;
use switchboard_sfu::PcLayout;

/// Connects a single-PC peer with a `_reliable` channel; returns its channel id.
fn connect_with_channel(
    sfu: &switchboard_sfu::SfuHandle,
    peer: &mut Peer,
) -> str0m::channel::ChannelId {
    let mut id = None;
    peer.negotiate(
        sfu,
        |api| {
            id = Some(api.add_channel("_reliable".into()));
        },
        vec![],
    );
    id.unwrap()
}

#[test]
fn large_reliable_messages_in_a_burst_arrive_whole_and_in_order() {
    let sfu = start_sfu();
    let mut sender = Peer::new(&sfu, "room", "alice", PcLayout::Single, |c| c, None);
    let mut receiver = Peer::new(&sfu, "room", "bob", PcLayout::Single, |c| c, None);
    let tx = connect_with_channel(&sfu, &mut sender);
    connect_with_channel(&sfu, &mut receiver);
    pump_until(
        &mut [&mut sender, &mut receiver],
        Duration::from_secs(10),
        |p| p.iter().all(|p| !p.channels.is_empty()),
    );
    // 40 messages of 60 000 bytes (2.4 MB, well over the SCTP send buffer), each tagged.
    let messages: Vec<Vec<u8>> = (0..40u8)
        .map(|i| {
            let mut m = vec![i; 60_000];
            m[0] = i;
            m
        })
        .collect();
    let mut next = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.data.len() < messages.len() {
        assert!(
            Instant::now() < deadline,
            "only {} of 40 arrived",
            receiver.data.len()
        );
        while next < messages.len() {
            let written = sender
                .rtc
                .channel(tx)
                .is_some_and(|mut ch| matches!(ch.write(true, &messages[next]), Ok(true)));
            if !written {
                break;
            }
            next += 1;
        }
        sender.pump(Duration::from_millis(2));
        receiver.pump(Duration::from_millis(2));
        while sender.events.try_recv().is_ok() {}
    }
    assert_eq!(
        receiver.data, messages,
        "messages arrive whole and in order"
    );
    assert!(sender.data.is_empty(), "the sender gets nothing back");
}
