//! Synthetic media at real rates and sizes (`performance-anchors.md` §8.2), and the trailer
//! every payload carries so the subscriber can measure loss and one-way latency.
//!
//! Payloads are opaque to the server, as E2EE frames are: audio is filler; video starts with a
//! valid VP8 payload descriptor (RFC 7741 §4.2) and, on a frame's first packet, a VP8 frame tag
//! whose key-frame bit (RFC 6386 §9.1) is right, because the SFU switches simulcast layers on
//! keyframes. Every payload ends with a [`TRAILER_BYTES`]-byte trailer:
//! `magic "SBLT" | stream u32 | seq u32 | sent_ns u64` (big-endian), where `sent_ns` is
//! nanoseconds since the tool's start (one process, one monotonic clock).

use std::time::{Duration, Instant};

/// Bytes of the trailer at the end of every payload.
pub const TRAILER_BYTES: usize = 20;
const MAGIC: &[u8; 4] = b"SBLT";

/// Opus: 20 ms frames (50 packets/s), 120-byte payloads (~48 kbps).
pub const AUDIO_PACKET_INTERVAL: Duration = Duration::from_millis(20);
/// Opus payload bytes.
pub const AUDIO_PAYLOAD_BYTES: usize = 120;
/// A keyframe every 3 s on every video layer (and on PLI/FIR).
pub const KEYFRAME_INTERVAL: Duration = Duration::from_secs(3);

/// One VP8 simulcast layer's shape: frames per second, packets per frame cycle, bytes.
#[derive(Debug, Clone, Copy)]
pub struct LayerShape {
    /// The layer's rid as LiveKit clients send it (`q`, `h`, `f`).
    pub rid: &'static str,
    /// Frames per second.
    pub fps: u32,
    /// Packets of each frame, cycled (their mean × fps = packets/s).
    pub packets_per_frame: &'static [u8],
    /// Payload bytes per packet (≤ 1200).
    pub payload_bytes: usize,
    /// Frame width and height announced in `AddTrackRequest` (px).
    pub width: u32,
    /// Frame height (px).
    pub height: u32,
}

/// VP8 simulcast q/h/f: 20 fps × 1 = 20 packets/s (160 kbps), 20 fps × 2.75 = 55 packets/s
/// (450 kbps), 30 fps × 6 = 180 packets/s (1.7 Mbps).
pub const VIDEO_LAYERS: [LayerShape; 3] = [
    LayerShape {
        rid: "q",
        fps: 20,
        packets_per_frame: &[1],
        payload_bytes: 1000,
        width: 320,
        height: 180,
    },
    LayerShape {
        rid: "h",
        fps: 20,
        packets_per_frame: &[3, 3, 3, 2],
        payload_bytes: 1020,
        width: 640,
        height: 360,
    },
    LayerShape {
        rid: "f",
        fps: 30,
        packets_per_frame: &[6],
        payload_bytes: 1180,
        width: 1280,
        height: 720,
    },
];

/// Packets per second of one Opus stream.
pub const AUDIO_PPS: f64 = 50.0;

/// Packets per second of a video layer (mean).
pub fn layer_pps(l: &LayerShape) -> f64 {
    let per_frame: u32 = l.packets_per_frame.iter().map(|n| u32::from(*n)).sum();
    f64::from(per_frame) / l.packets_per_frame.len() as f64 * f64::from(l.fps)
}

/// Stream ids: publisher `i` owns `4i` (audio) and `4i + 1 ..= 4i + 3` (video q, h, f).
pub fn is_video_stream(stream: u32) -> bool {
    !stream.is_multiple_of(4)
}

/// Writes the trailer into the last [`TRAILER_BYTES`] of `buf`.
pub fn write_trailer(buf: &mut [u8], stream: u32, seq: u32, sent_ns: u64) {
    let n = buf.len();
    let t = &mut buf[n - TRAILER_BYTES..];
    t[..4].copy_from_slice(MAGIC);
    t[4..8].copy_from_slice(&stream.to_be_bytes());
    t[8..12].copy_from_slice(&seq.to_be_bytes());
    t[12..20].copy_from_slice(&sent_ns.to_be_bytes());
}

/// A payload's trailer: `(stream, seq, sent_ns)`, or `None` when the payload is not ours.
pub fn read_trailer(payload: &[u8]) -> Option<(u32, u32, u64)> {
    let n = payload.len();
    if n < TRAILER_BYTES {
        return None;
    }
    let t = &payload[n - TRAILER_BYTES..];
    if &t[..4] != MAGIC {
        return None;
    }
    let stream = u32::from_be_bytes(t[4..8].try_into().ok()?);
    let seq = u32::from_be_bytes(t[8..12].try_into().ok()?);
    let sent = u64::from_be_bytes(t[12..20].try_into().ok()?);
    Some((stream, seq, sent))
}

/// Fills a VP8 packet's head: descriptor byte (S bit on a frame's first packet) and, on the
/// first packet, the 3-byte frame tag (P = 0 for a keyframe) and a keyframe's start code and
/// size (RFC 6386 §9.1). `buf` must hold at least 10 + [`TRAILER_BYTES`] bytes.
pub fn write_vp8_head(buf: &mut [u8], first_of_frame: bool, keyframe: bool, w: u32, h: u32) {
    if !first_of_frame {
        buf[0] = 0x00;
        return;
    }
    buf[0] = 0x10;
    // Frame tag: bit 0 = !keyframe, version 0, show_frame 1, first partition size (filler).
    buf[1] = if keyframe { 0x10 } else { 0x11 };
    buf[2] = 0x02;
    buf[3] = 0x00;
    if keyframe {
        buf[4..7].copy_from_slice(&[0x9d, 0x01, 0x2a]);
        buf[7..9].copy_from_slice(&(w as u16 & 0x3fff).to_le_bytes());
        buf[9..11].copy_from_slice(&(h as u16 & 0x3fff).to_le_bytes());
    }
}

/// Nanoseconds since `epoch` (saturating).
pub fn ns_since(epoch: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_round_trips_and_rejects_foreign_payloads() {
        let mut buf = vec![0u8; 120];
        write_trailer(&mut buf, 7, 42, 123_456_789);
        assert_eq!(read_trailer(&buf), Some((7, 42, 123_456_789)));
        assert_eq!(read_trailer(&buf[..10]), None);
        buf[100] = b'X';
        assert_eq!(read_trailer(&buf), None);
    }

    #[test]
    fn layer_rates_match_the_anchor_brief() {
        let pps: Vec<f64> = VIDEO_LAYERS.iter().map(layer_pps).collect();
        assert_eq!(pps, vec![20.0, 55.0, 180.0]);
    }

    #[test]
    fn vp8_head_marks_keyframes_the_way_the_server_reads_them() {
        let mut buf = vec![0u8; 64];
        write_vp8_head(&mut buf, true, true, 320, 180);
        assert_eq!(buf[0] & 0x10, 0x10);
        assert_eq!(buf[1] & 0x01, 0, "P bit clear on a keyframe");
        write_vp8_head(&mut buf, true, false, 320, 180);
        assert_eq!(buf[1] & 0x01, 1);
        write_vp8_head(&mut buf, false, false, 320, 180);
        assert_eq!(buf[0], 0);
    }
}
