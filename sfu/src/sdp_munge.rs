//! The few SDP rewrites single-peer-connection mode needs on top of str0m, done on the text of
//! one message (RFC 8866 lines; `a=mid` names each media section, RFC 5888):
//!
//! * In a client offer, receive-only sections the server has no track for are turned
//!   `inactive` before str0m sees them, so the answer carries no sender (and no stray `msid`
//!   that a client could mistake for a participant's stream).
//! * In our answer, the `msid` of a section that carries a track is set to what LiveKit clients
//!   parse (`PA_…|TR_… TR_…`).

use std::collections::HashMap;

/// Media kind of a section, as in the `m=` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SectionKind {
    Audio,
    Video,
}

/// A receive-only (from the client's view) audio or video section of an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecvSlot {
    pub mid: String,
    pub kind: SectionKind,
}

fn line_ending(sdp: &str) -> &'static str {
    if sdp.contains("\r\n") {
        "\r\n"
    } else {
        "\n"
    }
}

/// Splits into (session part, media sections), each a list of lines.
fn sections(sdp: &str) -> (Vec<&str>, Vec<Vec<&str>>) {
    let mut session = Vec::new();
    let mut media: Vec<Vec<&str>> = Vec::new();
    for line in sdp.lines().filter(|l| !l.is_empty()) {
        if line.starts_with("m=") {
            media.push(vec![line]);
        } else if let Some(m) = media.last_mut() {
            m.push(line);
        } else {
            session.push(line);
        }
    }
    (session, media)
}

fn mid_of<'a>(section: &[&'a str]) -> Option<&'a str> {
    section
        .iter()
        .find_map(|l| l.strip_prefix("a=mid:"))
        .map(str::trim)
}

fn kind_of(section: &[&str]) -> Option<SectionKind> {
    let m = section.first()?;
    if m.starts_with("m=audio") {
        Some(SectionKind::Audio)
    } else if m.starts_with("m=video") {
        Some(SectionKind::Video)
    } else {
        None
    }
}

fn is_rejected(section: &[&str]) -> bool {
    section
        .first()
        .and_then(|m| m.split(' ').nth(1))
        .is_some_and(|port| port == "0")
}

fn join(session: Vec<&str>, media: Vec<Vec<String>>, eol: &str) -> String {
    let mut out = String::new();
    for l in session {
        out.push_str(l);
        out.push_str(eol);
    }
    for section in media {
        for l in section {
            out.push_str(&l);
            out.push_str(eol);
        }
    }
    out
}

/// Drops the transport-wide congestion control extension (`a=extmap:… transport-wide-cc…`)
/// from the audio sections the client only receives on (`a=recvonly`, in its offer or its
/// answer). Sent audio then carries no transport sequence number, so str0m's bandwidth
/// estimator never picks an audio section for padding and probe packets: those go on a
/// probe SSRC with the section's mid, and Chrome, routing an unsignalled SSRC by mid, would
/// move the audio receiver over to it and play silence (seen with a subscriber left with
/// audio only). The estimate comes from video, the traffic it is there for.
pub(crate) fn no_twcc_on_received_audio(sdp: &str) -> String {
    let eol = line_ending(sdp);
    let (session, media) = sections(sdp);
    let media = media
        .into_iter()
        .map(|section| {
            let strip = kind_of(&section) == Some(SectionKind::Audio)
                && section.iter().any(|l| l.trim() == "a=recvonly");
            section
                .into_iter()
                .filter(|l| {
                    !(strip && l.starts_with("a=extmap:") && l.contains("transport-wide-cc"))
                })
                .map(str::to_string)
                .collect()
        })
        .collect();
    join(session, media, eol)
}

/// The client's receive-only audio/video sections (`a=recvonly`). A transceiver keeps offering
/// `recvonly` after we answered it `inactive`, so these are the slots we may fill.
pub(crate) fn recv_slots(offer: &str) -> Vec<RecvSlot> {
    let (_, media) = sections(offer);
    media
        .iter()
        .filter(|s| !is_rejected(s))
        .filter(|s| s.contains(&"a=recvonly"))
        .filter_map(|s| {
            Some(RecvSlot {
                mid: mid_of(s)?.to_string(),
                kind: kind_of(s)?,
            })
        })
        .collect()
}

/// Rewrites `a=recvonly` to `a=inactive` in every audio/video section whose mid is not in
/// `keep`.
pub(crate) fn deactivate_unused(offer: &str, keep: &[&str]) -> String {
    let eol = line_ending(offer);
    let (session, media) = sections(offer);
    let media = media
        .into_iter()
        .map(|s| {
            let unused = kind_of(&s).is_some() && !mid_of(&s).is_some_and(|m| keep.contains(&m));
            s.into_iter()
                .map(|l| match l {
                    "a=recvonly" if unused => "a=inactive".into(),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    join(session, media, eol)
}

/// Sets the `msid` (RFC 8830) of the named sections: `a=msid:` and `a=ssrc:<n> msid:` lines.
/// `msids` maps mid → (stream id, track id).
pub(crate) fn set_msids(answer: &str, msids: &HashMap<String, (String, String)>) -> String {
    let eol = line_ending(answer);
    let (session, media) = sections(answer);
    let media = media
        .into_iter()
        .map(|s| {
            let target = mid_of(&s).and_then(|m| msids.get(m));
            s.into_iter()
                .map(|l| match target {
                    Some((stream, track)) if l.starts_with("a=msid:") => {
                        format!("a=msid:{stream} {track}")
                    }
                    Some((stream, track)) if l.starts_with("a=ssrc:") && l.contains(" msid:") => {
                        let head = l.split(" msid:").next().unwrap_or(l);
                        format!("{head} msid:{stream} {track}")
                    }
                    _ => l.to_string(),
                })
                .collect()
        })
        .collect();
    join(session, media, eol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_cc_is_dropped_from_received_audio_only() {
        let twcc =
            "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";
        let sdp = format!(
            "v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\n{twcc}\r\n\
             m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=recvonly\r\n{twcc}\r\n\
             m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=recvonly\r\n{twcc}\r\n"
        );
        let out = no_twcc_on_received_audio(&sdp);
        let (_, media) = sections(&out);
        let has = |i: usize| media[i].iter().any(|l| l.contains("transport-wide-cc"));
        assert!(has(0), "the client's own audio keeps it");
        assert!(!has(1), "audio it receives loses it");
        assert!(has(2), "video keeps it");
        assert!(out.ends_with("\r\n"));
    }

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na=msid:s t\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=recvonly\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=recvonly\r\n\
        m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=recvonly\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:4\r\n";

    #[test]
    fn recv_slots_lists_receive_only_media_sections() {
        let slots = recv_slots(OFFER);
        assert_eq!(
            slots,
            vec![
                RecvSlot {
                    mid: "1".into(),
                    kind: SectionKind::Audio
                },
                RecvSlot {
                    mid: "2".into(),
                    kind: SectionKind::Video
                },
            ]
        );
    }

    #[test]
    fn unused_receive_sections_become_inactive() {
        let out = deactivate_unused(OFFER, &["2"]);
        assert!(out.contains("a=mid:1\r\na=inactive\r\n"), "{out}");
        assert!(out.contains("a=mid:2\r\na=recvonly\r\n"), "{out}");
        assert!(out.contains("a=mid:0\r\na=sendonly\r\n"), "{out}");
        assert!(out.ends_with("a=mid:4\r\n"));
    }

    #[test]
    fn msid_is_replaced_in_the_named_section_only() {
        let answer = "v=0\r\nm=audio 9 X 111\r\na=mid:0\r\na=msid:a b\r\na=ssrc:5 cname:c\r\n\
            a=ssrc:5 msid:a b\r\nm=audio 9 X 111\r\na=mid:1\r\na=msid:a b\r\n";
        let map = HashMap::from([(
            "0".to_string(),
            ("PA_x|TR_y".to_string(), "TR_y".to_string()),
        )]);
        let out = set_msids(answer, &map);
        assert!(
            out.contains("a=mid:0\r\na=msid:PA_x|TR_y TR_y\r\n"),
            "{out}"
        );
        assert!(out.contains("a=ssrc:5 msid:PA_x|TR_y TR_y\r\n"), "{out}");
        assert!(out.contains("a=mid:1\r\na=msid:a b\r\n"), "{out}");
    }
}
