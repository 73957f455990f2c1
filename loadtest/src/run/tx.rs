//! The publisher's outgoing schedule, the same for every WebRTC stack: which packet of which
//! stream is due when, with which RTP sequence number, timestamp, marker and payload
//! ([`synth`]). It knows no WebRTC library; a peer ([`super::peer`]) only writes the packets it
//! is handed, so both stacks send byte-identical media on the same clock.

use std::time::{Duration, Instant};

use super::synth::{self, LayerShape};

/// One packet to send on stream [`OutPacket::stream`] (an index into the [`Schedule`]).
#[derive(Debug)]
pub struct OutPacket {
    /// The stream: the index [`Schedule::push`] returned.
    pub stream: usize,
    /// Extended RTP sequence number (the wire carries its low 16 bits).
    pub seq: u64,
    /// RTP timestamp.
    pub rtp_ts: u32,
    /// Marker bit (the last packet of a video frame).
    pub marker: bool,
    /// Payload: VP8 descriptor (video) and the trailer.
    pub payload: Vec<u8>,
}

/// Every outgoing stream of one publisher.
#[derive(Debug, Default)]
pub struct Schedule {
    streams: Vec<TxStream>,
}

/// One outgoing stream: audio, or one simulcast layer.
#[derive(Debug)]
struct TxStream {
    /// Trailer stream id (unique in the run).
    id: u32,
    /// `None`: Opus.
    shape: Option<LayerShape>,
    next_due: Instant,
    seq: u64,
    trailer_seq: u32,
    rtp_ts: u32,
    frame: u64,
    next_keyframe: Instant,
    force_keyframe: bool,
}

impl Schedule {
    /// Adds a stream (audio when `shape` is `None`) with trailer id `id`; returns its index.
    /// It sends nothing until [`Schedule::start`].
    pub fn push(&mut self, id: u32, shape: Option<LayerShape>, now: Instant) -> usize {
        self.streams.push(TxStream {
            id,
            shape,
            next_due: now + Duration::from_secs(3600),
            seq: u64::from(rand_u16()),
            trailer_seq: 0,
            rtp_ts: u32::from(rand_u16()) << 8,
            frame: 0,
            next_keyframe: now,
            force_keyframe: false,
        });
        self.streams.len() - 1
    }

    /// Starts every stream's clock (the first video frame is a keyframe).
    pub fn start(&mut self, now: Instant) {
        for s in &mut self.streams {
            s.next_due = now;
            s.next_keyframe = now;
        }
    }

    /// Makes the next frame of `stream` a keyframe (PLI/FIR). Unknown indexes are ignored.
    pub fn force_keyframe(&mut self, stream: usize) {
        if let Some(s) = self.streams.get_mut(stream) {
            s.force_keyframe = true;
        }
    }

    /// Appends every packet due at `now` to `out`; returns when the next one is due. After a
    /// stall a stream catches up at most a few intervals rather than bursting.
    pub fn due(&mut self, now: Instant, epoch: Instant, out: &mut Vec<OutPacket>) -> Instant {
        let mut next = now + Duration::from_secs(1);
        for (index, s) in self.streams.iter_mut().enumerate() {
            let mut rounds = 0;
            while s.next_due <= now && rounds < 4 {
                rounds += 1;
                s.emit(index, now, epoch, out);
            }
            if s.next_due < now {
                s.next_due = now;
            }
            next = next.min(s.next_due);
        }
        next
    }
}

impl TxStream {
    /// One audio packet or one video frame (its packets).
    fn emit(&mut self, stream: usize, now: Instant, epoch: Instant, out: &mut Vec<OutPacket>) {
        let sent_ns = synth::ns_since(epoch, now);
        match self.shape {
            None => {
                let mut payload = vec![0u8; synth::AUDIO_PAYLOAD_BYTES];
                synth::write_trailer(&mut payload, self.id, self.trailer_seq, sent_ns);
                out.push(OutPacket {
                    stream,
                    seq: self.seq,
                    rtp_ts: self.rtp_ts,
                    marker: false,
                    payload,
                });
                self.seq += 1;
                self.trailer_seq += 1;
                self.rtp_ts = self.rtp_ts.wrapping_add(960);
                self.next_due += synth::AUDIO_PACKET_INTERVAL;
            }
            Some(shape) => {
                let cycle = shape.packets_per_frame.len().max(1) as u64;
                let n = shape
                    .packets_per_frame
                    .get((self.frame % cycle) as usize)
                    .copied()
                    .unwrap_or(1);
                let key = self.force_keyframe || now >= self.next_keyframe;
                for i in 0..n {
                    let mut payload = vec![0u8; shape.payload_bytes];
                    synth::write_vp8_head(&mut payload, i == 0, key, shape.width, shape.height);
                    synth::write_trailer(&mut payload, self.id, self.trailer_seq, sent_ns);
                    out.push(OutPacket {
                        stream,
                        seq: self.seq,
                        rtp_ts: self.rtp_ts,
                        marker: i + 1 == n,
                        payload,
                    });
                    self.seq += 1;
                    self.trailer_seq += 1;
                }
                if key {
                    self.force_keyframe = false;
                    self.next_keyframe = now + synth::KEYFRAME_INTERVAL;
                }
                self.frame += 1;
                self.rtp_ts = self.rtp_ts.wrapping_add(90_000 / shape.fps);
                self.next_due += Duration::from_secs(1) / shape.fps;
            }
        }
    }
}

/// A start value for sequence numbers and timestamps (not cryptographic).
pub fn rand_u16() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (t ^ (t >> 16)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::synth::VIDEO_LAYERS;

    #[test]
    fn one_second_sends_the_layer_rates_with_a_keyframe_first() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        let audio = s.push(1, None, t0);
        let f = s.push(2, Some(VIDEO_LAYERS[2]), t0);
        s.start(t0);
        let mut out = Vec::new();
        let mut now = t0;
        // Frame intervals round down to whole nanoseconds: stop just short of 1 s.
        while now < t0 + Duration::from_millis(999) {
            let next = s.due(now, t0, &mut out);
            now = next.max(now + Duration::from_micros(1));
        }
        let count = |i| out.iter().filter(|p| p.stream == i).count();
        assert_eq!(count(audio), 50);
        assert_eq!(count(f), 180);
        let first_video = out
            .iter()
            .find(|p| p.stream == f)
            .map(|p| p.payload[1] & 0x01);
        assert_eq!(first_video, Some(0), "first frame is a keyframe");
        assert!(
            out.iter()
                .filter(|p| p.stream == f)
                .filter(|p| p.marker)
                .count()
                == 30
        );
    }

    #[test]
    fn forced_keyframe_applies_to_the_next_frame_only() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        let q = s.push(1, Some(VIDEO_LAYERS[0]), t0);
        s.start(t0);
        let mut out = Vec::new();
        s.due(t0, t0, &mut out);
        out.clear();
        let t1 = t0 + Duration::from_millis(50);
        s.due(t1, t0, &mut out);
        assert!(out.iter().all(|p| p.payload[1] & 0x01 == 1), "delta frames");
        out.clear();
        s.force_keyframe(q);
        s.force_keyframe(99);
        s.due(t1 + Duration::from_millis(50), t0, &mut out);
        assert_eq!(out.first().map(|p| p.payload[1] & 0x01), Some(0));
    }
}
