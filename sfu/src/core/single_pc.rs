//! `/rtc/v1`'s single peer connection: the client always offers, so subscribed tracks ride on
//! the receive-only sections of its offers. Before an offer is applied its free sections are
//! given to unplaced subscriptions and the rest turned `inactive` (so str0m creates no sender
//! with a random msid); after it is answered the answer's msids are set to LiveKit's form; when
//! sections are short the client is asked for more (`SfuEvent::NeedOffer`, LiveKit
//! `MediaSectionsRequirement`).

use std::collections::HashMap;

use crate::forwarder::Forwarder;
use crate::room::Room;
use crate::sdp_munge::{self, SectionKind};
use crate::session::Section;
use crate::{ParticipantId, SfuEvent, TrackId, TrackKind};

/// Before a client offer is applied: remembers its receive-only sections, puts every
/// subscription without a section on a free one of its kind, and returns the offer with the
/// sections that stay unused turned `inactive`.
pub(super) fn assign_recv_slots(room: &mut Room, participant: ParticipantId, sdp: &str) -> String {
    let Room {
        participants,
        tracks,
        ..
    } = room;
    let Some(p) = participants.get_mut(&participant) else {
        return sdp.to_string();
    };
    let plan = &mut p.plan;
    plan.recv_slots = sdp_munge::recv_slots(sdp);
    plan.requested = (0, 0);
    plan.reoffer_requested = false;
    // Sections the client no longer offers as receive-only lose their track.
    let gone: Vec<Section> = plan
        .carried
        .keys()
        .filter(|m| !plan.recv_slots.iter().any(|s| s.mid == m.to_string()))
        .copied()
        .collect();
    for section in gone {
        if let Some(track) = plan.carried.remove(&section) {
            if let Some(sub) = tracks
                .get_mut(&track)
                .and_then(|t| t.subscription_mut(participant))
            {
                sub.section = None;
                sub.ready = false;
            }
        }
    }
    for track_id in &p.subscribed {
        let Some(track) = tracks.get_mut(track_id) else {
            continue;
        };
        let kind = match track.kind {
            TrackKind::Audio => SectionKind::Audio,
            TrackKind::Video => SectionKind::Video,
        };
        let clock = track.clock_rate();
        let video = track.is_video();
        let Some(sub) = track.subscription_mut(participant) else {
            continue;
        };
        if sub.section.is_some() {
            continue;
        }
        let free = plan
            .recv_slots
            .iter()
            .find(|s| s.kind == kind && !plan.carried.keys().any(|m| m.to_string() == s.mid));
        if let Some(slot) = free {
            let section = Section::parse(&slot.mid);
            plan.carried.insert(section, *track_id);
            sub.section = Some(section);
            sub.ready = false;
            if let Some(last) = plan.last_state.get(&section) {
                sub.forwarder = Forwarder::continuing(video, clock, *last);
            }
        }
    }
    let keep: Vec<String> = plan.carried.keys().map(|m| m.to_string()).collect();
    let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
    sdp_munge::deactivate_unused(sdp, &keep)
}

/// After a client offer was answered: names the carried tracks in the answer's msids and marks
/// their subscriptions ready. Returns the answer, its mid → track map, and the tracks whose
/// publishers should be asked for a keyframe.
pub(super) fn answered(
    room: &mut Room,
    participant: ParticipantId,
    answer: String,
) -> (String, Vec<(String, TrackId)>, Vec<TrackId>) {
    let Room {
        participants,
        tracks,
        ..
    } = room;
    let Some(p) = participants.get(&participant) else {
        return (answer, Vec::new(), Vec::new());
    };
    let mut msids = HashMap::new();
    let mut mid_to_track = Vec::new();
    let mut woken = Vec::new();
    for (section, track) in &p.plan.carried {
        let Some(sub) = tracks
            .get_mut(track)
            .and_then(|t| t.subscription_mut(participant))
        else {
            continue;
        };
        msids.insert(
            section.to_string(),
            (sub.stream_id.clone(), sub.track_label.clone()),
        );
        mid_to_track.push((section.to_string(), *track));
        if !sub.ready {
            sub.ready = true;
            sub.forwarder.reset();
            woken.push(*track);
        }
    }
    (sdp_munge::set_msids(&answer, &msids), mid_to_track, woken)
}

/// Asks the client for the receive-only sections its unplaced subscriptions need, or just for
/// a new offer when free sections exist.
pub(super) fn request_sections(room: &mut Room, participant: ParticipantId) {
    let Room {
        participants,
        tracks,
        ..
    } = room;
    let Some(p) = participants.get_mut(&participant) else {
        return;
    };
    let (mut want_a, mut want_v) = (0u32, 0u32);
    for track_id in &p.subscribed {
        let Some(track) = tracks.get_mut(track_id) else {
            continue;
        };
        let video = track.is_video();
        let unplaced = track
            .subscription_mut(participant)
            .is_some_and(|s| s.section.is_none());
        if unplaced {
            if video {
                want_v += 1;
            } else {
                want_a += 1;
            }
        }
    }
    if want_a == 0 && want_v == 0 {
        return;
    }
    let plan = &mut p.plan;
    let free = |kind: SectionKind| {
        plan.recv_slots
            .iter()
            .filter(|s| s.kind == kind && !plan.carried.keys().any(|m| m.to_string() == s.mid))
            .count() as u32
    };
    let need_a = want_a.saturating_sub(free(SectionKind::Audio) + plan.requested.0);
    let need_v = want_v.saturating_sub(free(SectionKind::Video) + plan.requested.1);
    let event = if need_a > 0 || need_v > 0 {
        plan.requested.0 += need_a;
        plan.requested.1 += need_v;
        Some(SfuEvent::NeedOffer {
            audio: need_a,
            video: need_v,
        })
    } else if !plan.reoffer_requested {
        Some(SfuEvent::NeedOffer { audio: 0, video: 0 })
    } else {
        None
    };
    if let Some(e) = event {
        plan.reoffer_requested = true;
        p.emit(e);
    }
}
