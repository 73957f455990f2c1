//! The per-subscription RTP header rewriter: one outgoing stream per subscription whatever
//! simulcast layer is being forwarded, with contiguous sequence numbers and continuous
//! timestamps across layer switches (which happen only on a keyframe of the new layer).
//!
//! Pure logic, time is an argument; the SSRC and payload type are applied by the caller.

use std::time::Instant;

use crate::layer::Layer;
use crate::vp8::{Vp8Descriptor, Vp8Fields, Vp8Munger};

/// What the forwarder needs to know of one incoming packet.
#[derive(Debug, Clone, Copy)]
pub struct LayerPacket {
    /// Simulcast spatial layer; `Low` for non-simulcast tracks.
    pub layer: Layer,
    /// Extended (rollover-free) incoming sequence number.
    pub seq: u64,
    /// Incoming RTP timestamp (clock of the codec).
    pub ts: u32,
    /// The packet starts a keyframe (always `false` for audio).
    pub keyframe: bool,
    /// Arrival time.
    pub now: Instant,
    /// The VP8 payload descriptor, for VP8 packets that carry a well-formed one.
    pub vp8: Option<Vp8Descriptor>,
}

/// Header fields for the forwarded copy of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedHeader {
    /// Extended outgoing sequence number (starts below 2^16, so the SRTP ROC starts at 0).
    pub seq: u64,
    /// Outgoing RTP timestamp.
    pub ts: u32,
    /// VP8 descriptor fields to write into the payload, when they differ from the packet's
    /// own (after a layer switch); `None`: forward the payload as it came.
    pub vp8: Option<Vp8Fields>,
}

/// The last packet an outgoing stream carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedState {
    /// Extended sequence number.
    pub seq: u64,
    /// RTP timestamp.
    pub ts: u32,
    /// When it was forwarded.
    pub at: Instant,
}

/// Rewrites one subscription's packets. See the module docs.
#[derive(Debug)]
pub struct Forwarder {
    video: bool,
    clock_rate: u32,
    /// Layer currently forwarded, `None` before the first packet (or after a reset).
    current: Option<Layer>,
    /// Incoming seq that maps to `out_base`.
    in_base: u64,
    out_base: u64,
    /// Added (wrapping) to incoming timestamps of the current layer.
    ts_offset: u32,
    last_out: Option<(u64, u32, Instant)>,
    /// Renumbers VP8 PictureID/TL0PICIDX/KEYIDX across switches.
    vp8: Vp8Munger,
}

impl Forwarder {
    /// A forwarder for a video (`video = true`, waits for keyframes) or audio track.
    /// `clock_rate` in Hz (90 000 video, 48 000 Opus). `first_seq` is where outgoing sequence
    /// numbers start (pick it at random, below 2^15).
    pub fn new(video: bool, clock_rate: u32, first_seq: u16) -> Self {
        Self {
            video,
            clock_rate: clock_rate.max(1),
            current: None,
            in_base: 0,
            out_base: u64::from(first_seq),
            ts_offset: 0,
            last_out: None,
            vp8: Vp8Munger::default(),
        }
    }

    /// A forwarder that continues an outgoing stream another forwarder wrote before (the same
    /// SSRC reused for a new track): sequence numbers and timestamps go on from `last`.
    pub fn continuing(video: bool, clock_rate: u32, last: ForwardedState) -> Self {
        let mut f = Self::new(video, clock_rate, 0);
        f.out_base = last.seq + 1;
        f.last_out = Some((last.seq, last.ts, last.at));
        f
    }

    /// Where the outgoing stream stands, if anything was forwarded.
    pub fn state(&self) -> Option<ForwardedState> {
        self.last_out
            .map(|(seq, ts, at)| ForwardedState { seq, ts, at })
    }

    /// The layer being forwarded, if any.
    pub fn current_layer(&self) -> Option<Layer> {
        self.current
    }

    /// Forget the current layer: the next packet forwarded must be a keyframe (video). Used when
    /// a paused subscription resumes.
    pub fn reset(&mut self) {
        self.current = None;
    }

    /// Decides whether to forward `p` given the layer the track wants forwarded now (`target`),
    /// and returns the rewritten header fields if so.
    pub fn forward(&mut self, p: LayerPacket, target: Layer) -> Option<ForwardedHeader> {
        let switch = match self.current {
            // Audio or a single-layer track: switch on anything when not started.
            None if !self.video => true,
            None => p.keyframe && p.layer == target,
            Some(cur) if cur == p.layer => false,
            Some(_) => self.video && p.keyframe && p.layer == target,
        };
        if switch {
            self.switch_to(p);
        } else if self.current != Some(p.layer) {
            return None;
        }
        if p.seq < self.in_base {
            // Reordered packet from before the switch point: it belongs to no output stream.
            return None;
        }
        let seq = self.out_base + (p.seq - self.in_base);
        let ts = p.ts.wrapping_add(self.ts_offset);
        match self.last_out {
            Some((last_seq, _, _)) if seq <= last_seq => {}
            _ => self.last_out = Some((seq, ts, p.now)),
        }
        let vp8 = p.vp8.and_then(|d| match self.vp8.map(&d) {
            (fields, true) => Some(fields),
            (_, false) => None,
        });
        Some(ForwardedHeader { seq, ts, vp8 })
    }

    fn switch_to(&mut self, p: LayerPacket) {
        self.current = Some(p.layer);
        if let Some(d) = &p.vp8 {
            self.vp8.switch(d);
        }
        self.in_base = p.seq;
        match self.last_out {
            None => {
                self.out_base = self.out_base.max(1);
                self.ts_offset = 0;
            }
            Some((last_seq, last_ts, last_at)) => {
                self.out_base = last_seq + 1;
                let elapsed_ms = p.now.saturating_duration_since(last_at).as_millis();
                let ticks = (elapsed_ms * u128::from(self.clock_rate) / 1000).max(1);
                let want = last_ts.wrapping_add(ticks as u32);
                self.ts_offset = want.wrapping_sub(p.ts);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pkt(layer: Layer, seq: u64, ts: u32, keyframe: bool, at: Instant) -> LayerPacket {
        LayerPacket {
            layer,
            seq,
            ts,
            keyframe,
            now: at,
            vp8: None,
        }
    }

    #[test]
    fn video_waits_for_keyframe_before_forwarding() {
        let t = Instant::now();
        let mut f = Forwarder::new(true, 90_000, 100);
        assert_eq!(
            f.forward(pkt(Layer::Low, 5000, 10, false, t), Layer::Low),
            None
        );
        let h = f
            .forward(pkt(Layer::Low, 5001, 20, true, t), Layer::Low)
            .unwrap();
        assert_eq!(h.seq, 100);
        assert_eq!(
            f.forward(pkt(Layer::Low, 5002, 20, false, t), Layer::Low)
                .unwrap()
                .seq,
            101
        );
    }

    #[test]
    fn sequence_numbers_keep_upstream_gaps_only() {
        let t = Instant::now();
        let mut f = Forwarder::new(false, 48_000, 10);
        assert_eq!(
            f.forward(pkt(Layer::Low, 70_000, 0, false, t), Layer::Low)
                .unwrap()
                .seq,
            10
        );
        assert_eq!(
            f.forward(pkt(Layer::Low, 70_002, 960, false, t), Layer::Low)
                .unwrap()
                .seq,
            12
        );
    }

    #[test]
    fn layer_switch_waits_for_keyframe_and_stays_contiguous() {
        let t = Instant::now();
        let mut f = Forwarder::new(true, 90_000, 1);
        f.forward(pkt(Layer::Low, 100, 1000, true, t), Layer::Low)
            .unwrap();
        let last = f
            .forward(pkt(Layer::Low, 101, 1000, false, t), Layer::Low)
            .unwrap();
        // Target moves to layer 2; a delta frame of layer 2 is not forwarded, layer 0 goes on.
        assert_eq!(
            f.forward(pkt(Layer::High, 9000, 555_000, false, t), Layer::High),
            None
        );
        assert!(f
            .forward(pkt(Layer::Low, 102, 4000, false, t), Layer::High)
            .is_some());
        // Keyframe on layer 2: switch.
        let later = t + Duration::from_millis(33);
        let h = f
            .forward(pkt(Layer::High, 9001, 555_000, true, later), Layer::High)
            .unwrap();
        assert_eq!(h.seq, last.seq + 2);
        assert_eq!(h.ts, 4000u32.wrapping_add(90 * 33));
        assert_eq!(f.current_layer(), Some(Layer::High));
        // The old layer is no longer forwarded.
        assert_eq!(
            f.forward(pkt(Layer::Low, 103, 7000, false, later), Layer::High),
            None
        );
        assert_eq!(
            f.forward(pkt(Layer::High, 9002, 558_000, false, later), Layer::High)
                .unwrap()
                .seq,
            h.seq + 1
        );
    }

    #[test]
    fn continuing_forwarder_picks_up_where_the_last_one_stopped() {
        let t = Instant::now();
        let mut a = Forwarder::new(false, 48_000, 500);
        a.forward(pkt(Layer::Low, 10, 1000, false, t), Layer::Low)
            .unwrap();
        let last = a.state().unwrap();
        let later = t + Duration::from_millis(100);
        let mut b = Forwarder::continuing(false, 48_000, last);
        let h = b
            .forward(pkt(Layer::Low, 77_777, 123, false, later), Layer::Low)
            .unwrap();
        assert_eq!(h.seq, last.seq + 1);
        assert_eq!(h.ts, 1000 + 4800);
    }

    #[test]
    fn timestamps_wrap_without_panic() {
        let t = Instant::now();
        let mut f = Forwarder::new(false, 48_000, 1);
        f.forward(pkt(Layer::Low, 1, u32::MAX - 10, false, t), Layer::Low)
            .unwrap();
        let h = f
            .forward(pkt(Layer::Low, 2, 949, false, t), Layer::Low)
            .unwrap();
        assert_eq!(h.ts, 949);
    }

    #[test]
    fn reset_makes_video_wait_for_next_keyframe() {
        let t = Instant::now();
        let mut f = Forwarder::new(true, 90_000, 1);
        f.forward(pkt(Layer::Low, 1, 0, true, t), Layer::Low)
            .unwrap();
        f.reset();
        assert_eq!(f.forward(pkt(Layer::Low, 2, 0, false, t), Layer::Low), None);
        let h = f
            .forward(pkt(Layer::Low, 3, 3000, true, t), Layer::Low)
            .unwrap();
        assert_eq!(h.seq, 2);
    }
}
