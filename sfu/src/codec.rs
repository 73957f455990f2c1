//! Codec facts the forwarder needs from the clear part of an RTP payload: whether a packet starts
//! a keyframe. Reads only the payload descriptor / NAL header bytes, which stay in the clear under
//! LiveKit E2EE (the encrypted frame body is never touched).

/// Codecs the SFU forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaCodec {
    /// Opus audio (RFC 7587).
    Opus,
    /// VP8 video (RFC 7741).
    Vp8,
    /// H.264 video (RFC 6184).
    H264,
    /// Anything else that was negotiated; forwarded without keyframe knowledge.
    Other,
}

impl MediaCodec {
    /// Maps a str0m codec.
    pub(crate) fn from_str0m(codec: str0m::format::Codec) -> Self {
        use str0m::format::Codec;
        match codec {
            Codec::Opus => Self::Opus,
            Codec::Vp8 => Self::Vp8,
            Codec::H264 => Self::H264,
            _ => Self::Other,
        }
    }

    /// MIME type as LiveKit's `TrackInfo.mime_type` spells it.
    pub fn mime(self, kind_is_video: bool) -> &'static str {
        match (self, kind_is_video) {
            (Self::Opus, _) => "audio/opus",
            (Self::Vp8, _) => "video/VP8",
            (Self::H264, _) => "video/H264",
            (Self::Other, true) => "video/unknown",
            (Self::Other, false) => "audio/unknown",
        }
    }
}

/// Whether this RTP payload is the first packet of a keyframe (or, for H.264, carries an SPS or
/// the start of an IDR slice). Malformed or truncated payloads return `false`.
pub fn is_keyframe_start(codec: MediaCodec, payload: &[u8]) -> bool {
    match codec {
        MediaCodec::Vp8 => vp8_keyframe_start(payload),
        MediaCodec::H264 => h264_keyframe_start(payload),
        MediaCodec::Opus | MediaCodec::Other => false,
    }
}

/// RFC 7741 §4.2 payload descriptor, then the VP8 frame tag's inverse key-frame bit (RFC 6386
/// §9.1): keyframe iff S=1, PID=0 and P=0.
fn vp8_keyframe_start(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let start = b0 & 0x10 != 0;
    let pid = b0 & 0x07;
    if !start || pid != 0 {
        return false;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let Some(&x) = p.get(i) else { return false };
        i += 1;
        if x & 0x80 != 0 {
            // PictureID: 7 or 15 bits (M bit).
            let Some(&pic) = p.get(i) else { return false };
            i += if pic & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID/Y/KEYIDX
        }
    }
    match p.get(i) {
        Some(&tag) => tag & 0x01 == 0,
        None => false,
    }
}

/// RFC 6184 §5.7/§5.8: single NAL unit, STAP-A (24), FU-A (28, start bit). SPS (7) or IDR (5).
fn h264_keyframe_start(p: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    let is_key = |t: u8| t == IDR || t == SPS;
    let Some(&b0) = p.first() else { return false };
    match b0 & 0x1f {
        24 => {
            let mut i = 1;
            while i + 2 < p.len() {
                let size = usize::from(u16::from_be_bytes([p[i], p[i + 1]]));
                if let Some(&nal) = p.get(i + 2) {
                    if size > 0 && is_key(nal & 0x1f) {
                        return true;
                    }
                }
                i += 2 + size;
            }
            false
        }
        28 => match p.get(1) {
            Some(&fu) => fu & 0x80 != 0 && is_key(fu & 0x1f),
            None => false,
        },
        t => is_key(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframe_with_extended_picture_id_is_detected() {
        // X=1,S=1,PID=0 | I=1 | M=1 pic id (2 bytes) | frame tag P=0
        let p = [0x90, 0x80, 0x81, 0x23, 0x10, 0x02, 0x00];
        assert!(is_keyframe_start(MediaCodec::Vp8, &p));
    }

    #[test]
    fn vp8_delta_frame_and_continuation_are_not_keyframes() {
        assert!(!is_keyframe_start(
            MediaCodec::Vp8,
            &[0x90, 0x80, 0x05, 0x01]
        ));
        // S=0: continuation packet
        assert!(!is_keyframe_start(
            MediaCodec::Vp8,
            &[0x80, 0x80, 0x05, 0x00]
        ));
    }

    #[test]
    fn vp8_truncated_descriptor_is_not_a_keyframe() {
        assert!(!is_keyframe_start(MediaCodec::Vp8, &[0x90]));
        assert!(!is_keyframe_start(MediaCodec::Vp8, &[0x90, 0x80]));
        assert!(!is_keyframe_start(MediaCodec::Vp8, &[]));
    }

    #[test]
    fn h264_stap_a_with_sps_is_a_keyframe() {
        let p = [24, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce];
        assert!(is_keyframe_start(MediaCodec::H264, &p));
    }

    #[test]
    fn h264_fu_a_idr_start_is_a_keyframe_but_middle_is_not() {
        assert!(is_keyframe_start(MediaCodec::H264, &[0x7c, 0x85, 0x00]));
        assert!(!is_keyframe_start(MediaCodec::H264, &[0x7c, 0x05, 0x00]));
        assert!(!is_keyframe_start(MediaCodec::H264, &[0x7c, 0x81, 0x00]));
    }

    #[test]
    fn h264_stap_a_with_bad_length_does_not_panic() {
        assert!(!is_keyframe_start(
            MediaCodec::H264,
            &[24, 0xff, 0xff, 0x41]
        ));
    }
}
