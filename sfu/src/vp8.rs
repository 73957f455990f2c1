//! The VP8 payload descriptor (RFC 7741 §4.2) as the forwarder sees it: where its PictureID,
//! TL0PICIDX and KEYIDX fields sit, and a per-subscription [`Vp8Munger`] that renumbers them so
//! a subscriber sees one continuous picture sequence across simulcast layer switches (each
//! layer is its own encoder with its own numbering).
//!
//! Only descriptor bytes are ever read or written: they precede the VP8 frame, which LiveKit's
//! E2EE encrypts (apart from its clear header), so rewriting works on encrypted media too.
//! Field widths are kept: a 7-bit PictureID stays 7-bit, a 15-bit one 15-bit, so the payload
//! keeps its length and every byte after the descriptor is untouched.

/// The fields of one packet's VP8 payload descriptor, with their byte offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8Descriptor {
    /// PictureID and whether it is the 15-bit form (M bit), if present (I bit).
    pub picture_id: Option<(u16, bool)>,
    /// TL0PICIDX, if present (L bit).
    pub tl0picidx: Option<u8>,
    /// Temporal layer index (TID), if present (T bit).
    pub tid: Option<u8>,
    /// KEYIDX, if present (K bit).
    pub keyidx: Option<u8>,
    /// The packet starts a VP8 partition 0 (S = 1, PID = 0): the start of a picture.
    pub picture_start: bool,
    /// Byte offset of the PictureID, TL0PICIDX and TID/Y/KEYIDX bytes (0 = absent).
    pic_at: usize,
    tl0_at: usize,
    tk_at: usize,
}

impl Vp8Descriptor {
    /// Parses the descriptor at the start of `payload`. `None` when it is truncated (a payload
    /// that ends inside the descriptor is malformed: it is forwarded as is, never rewritten).
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let b0 = *payload.first()?;
        let mut d = Self {
            picture_start: b0 & 0x10 != 0 && b0 & 0x07 == 0,
            ..Self::default()
        };
        if b0 & 0x80 == 0 {
            return Some(d);
        }
        let x = *payload.get(1)?;
        let mut i = 2;
        if x & 0x80 != 0 {
            let hi = *payload.get(i)?;
            d.pic_at = i;
            if hi & 0x80 != 0 {
                let lo = *payload.get(i + 1)?;
                d.picture_id = Some((u16::from(hi & 0x7f) << 8 | u16::from(lo), true));
                i += 2;
            } else {
                d.picture_id = Some((u16::from(hi), false));
                i += 1;
            }
        }
        if x & 0x40 != 0 {
            d.tl0picidx = Some(*payload.get(i)?);
            d.tl0_at = i;
            i += 1;
        }
        if x & 0x30 != 0 {
            let tk = *payload.get(i)?;
            d.tk_at = i;
            if x & 0x20 != 0 {
                d.tid = Some(tk >> 6);
            }
            if x & 0x10 != 0 {
                d.keyidx = Some(tk & 0x1f);
            }
        }
        Some(d)
    }

    /// Writes `r` into `payload` (the bytes this descriptor was parsed from), keeping every
    /// field's width; fields the packet does not carry are left alone.
    pub fn write(&self, r: Vp8Fields, payload: &mut [u8]) {
        if let Some((_, long)) = self.picture_id {
            if long {
                if let Some(b) = payload.get_mut(self.pic_at..self.pic_at + 2) {
                    b[0] = 0x80 | ((r.picture_id >> 8) as u8 & 0x7f);
                    b[1] = r.picture_id as u8;
                }
            } else if let Some(b) = payload.get_mut(self.pic_at) {
                *b = r.picture_id as u8 & 0x7f;
            }
        }
        if self.tl0picidx.is_some() {
            if let Some(b) = payload.get_mut(self.tl0_at) {
                *b = r.tl0picidx;
            }
        }
        if self.keyidx.is_some() {
            if let Some(b) = payload.get_mut(self.tk_at) {
                *b = (*b & 0xe0) | (r.keyidx & 0x1f);
            }
        }
    }
}

/// Outgoing values of the renumbered fields (PictureID in 15-bit space, written modulo 2^7
/// when the packet carries the short form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Vp8Fields {
    /// PictureID, 0..2^15.
    pub picture_id: u16,
    /// TL0PICIDX.
    pub tl0picidx: u8,
    /// KEYIDX, 0..32.
    pub keyidx: u8,
}

const PIC_MOD: u16 = 1 << 15;

/// Renumbers one outgoing stream's VP8 descriptors: the first layer forwarded keeps its own
/// numbers; on a switch, the new layer's numbers are shifted to continue one past the last
/// values sent, and stay shifted until the next switch.
#[derive(Debug, Clone, Default)]
pub struct Vp8Munger {
    pic_offset: u16,
    tl0_offset: u8,
    keyidx_offset: u8,
    /// The highest values sent (`None` before the first packet with a descriptor).
    last: Option<Vp8Fields>,
}

impl Vp8Munger {
    /// A layer switch happens at `d` (a keyframe of the new layer): later packets of that
    /// layer continue the numbering sent so far.
    pub fn switch(&mut self, d: &Vp8Descriptor) {
        let Some(last) = self.last else {
            return;
        };
        if let Some((pic, _)) = d.picture_id {
            let want = (last.picture_id + 1) % PIC_MOD;
            self.pic_offset = want.wrapping_sub(pic) % PIC_MOD;
        }
        if let Some(tl0) = d.tl0picidx {
            self.tl0_offset = last.tl0picidx.wrapping_add(1).wrapping_sub(tl0);
        }
        if let Some(k) = d.keyidx {
            self.keyidx_offset = last.keyidx.wrapping_add(1).wrapping_sub(k) & 0x1f;
        }
    }

    /// The outgoing values for a packet of the layer being forwarded, and whether they differ
    /// from the packet's own (whether its payload must be rewritten).
    pub fn map(&mut self, d: &Vp8Descriptor) -> (Vp8Fields, bool) {
        let prev = self.last.unwrap_or_default();
        let out = Vp8Fields {
            picture_id: d.picture_id.map_or(prev.picture_id, |(p, _)| {
                p.wrapping_add(self.pic_offset) % PIC_MOD
            }),
            tl0picidx: d
                .tl0picidx
                .map_or(prev.tl0picidx, |t| t.wrapping_add(self.tl0_offset)),
            keyidx: d
                .keyidx
                .map_or(prev.keyidx, |k| k.wrapping_add(self.keyidx_offset) & 0x1f),
        };
        // Track the newest values (modular: a reordered older packet does not move them back).
        let newer = |a: u16, b: u16| a != b && (a.wrapping_sub(b) % PIC_MOD) < PIC_MOD / 2;
        match self.last {
            None => self.last = Some(out),
            Some(ref mut last) => {
                if d.picture_id.is_some() && newer(out.picture_id, last.picture_id) {
                    last.picture_id = out.picture_id;
                }
                if d.tl0picidx.is_some() && out.tl0picidx.wrapping_sub(last.tl0picidx) < 128 {
                    last.tl0picidx = out.tl0picidx;
                }
                if d.keyidx.is_some() {
                    last.keyidx = out.keyidx;
                }
            }
        }
        let changed = self.pic_offset != 0 || self.tl0_offset != 0 || self.keyidx_offset != 0;
        (out, changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor with X, I (15-bit when `long`), L, T and K.
    fn packet(pic: u16, long: bool, tl0: u8, tid: u8, keyidx: u8, start: bool) -> Vec<u8> {
        let mut p = vec![0x80 | if start { 0x10 } else { 0 }, 0xf0];
        if long {
            p.push(0x80 | (pic >> 8) as u8);
            p.push(pic as u8);
        } else {
            p.push(pic as u8 & 0x7f);
        }
        p.push(tl0);
        p.push(tid << 6 | 0x20 | keyidx);
        p.extend_from_slice(&[0x9d, 0x01, 0x2a, 0xde, 0xad]);
        p
    }

    #[test]
    fn parses_every_field_and_rejects_truncation() {
        let p = packet(0x1234, true, 7, 2, 5, true);
        let d = Vp8Descriptor::parse(&p).unwrap();
        assert_eq!(d.picture_id, Some((0x1234, true)));
        assert_eq!(d.tl0picidx, Some(7));
        assert_eq!(d.tid, Some(2));
        assert_eq!(d.keyidx, Some(5));
        assert!(d.picture_start);
        for n in 0..6 {
            assert!(
                Vp8Descriptor::parse(&p[..n]).is_none(),
                "truncated to {n} bytes"
            );
        }
        assert!(Vp8Descriptor::parse(&p[..6]).is_some());
        // No X bit: nothing to renumber.
        let d = Vp8Descriptor::parse(&[0x10, 0x9d]).unwrap();
        assert_eq!(d.picture_id, None);
    }

    #[test]
    fn numbering_continues_across_a_switch_and_keeps_widths() {
        let mut m = Vp8Munger::default();
        // Layer A: pictures 100, 101 (15-bit), tl0 10, keyidx 3.
        for pic in [100u16, 101] {
            let p = packet(pic, true, 10, 0, 3, true);
            let d = Vp8Descriptor::parse(&p).unwrap();
            let (f, changed) = m.map(&d);
            assert_eq!(f.picture_id, pic);
            assert!(!changed, "the first layer keeps its own numbers");
        }
        // Switch to layer B at its keyframe: picture 7000, tl0 200, keyidx 30.
        let mut p = packet(7000, true, 200, 0, 30, true);
        let d = Vp8Descriptor::parse(&p).unwrap();
        m.switch(&d);
        let (f, changed) = m.map(&d);
        assert!(changed);
        assert_eq!((f.picture_id, f.tl0picidx, f.keyidx), (102, 11, 4));
        let len = p.len();
        let tail = p[6..].to_vec();
        d.write(f, &mut p);
        assert_eq!(p.len(), len);
        assert_eq!(
            &p[6..],
            &tail[..],
            "bytes past the descriptor are never touched"
        );
        let again = Vp8Descriptor::parse(&p).unwrap();
        assert_eq!(again.picture_id, Some((102, true)));
        assert_eq!(again.tl0picidx, Some(11));
        assert_eq!((again.tid, again.keyidx), (Some(0), Some(4)));
        // The next picture of layer B goes on from there.
        let d = Vp8Descriptor::parse(&packet(7001, true, 200, 1, 30, true)).unwrap();
        assert_eq!(m.map(&d).0.picture_id, 103);
    }

    #[test]
    fn short_picture_ids_stay_short_and_wrap() {
        let mut m = Vp8Munger::default();
        let d = Vp8Descriptor::parse(&packet(126, false, 0, 0, 0, true)).unwrap();
        m.map(&d);
        let mut p = packet(5, false, 0, 0, 0, true);
        let d = Vp8Descriptor::parse(&p).unwrap();
        m.switch(&d);
        let (f, _) = m.map(&d);
        d.write(f, &mut p);
        let again = Vp8Descriptor::parse(&p).unwrap();
        assert_eq!(again.picture_id, Some((127, false)));
        let mut p = packet(6, false, 0, 0, 0, true);
        let d = Vp8Descriptor::parse(&p).unwrap();
        let (f, _) = m.map(&d);
        d.write(f, &mut p);
        assert_eq!(
            Vp8Descriptor::parse(&p).unwrap().picture_id,
            Some((0, false))
        );
    }

    #[test]
    fn fifteen_bit_ids_wrap_and_reordered_packets_keep_their_numbers() {
        let mut m = Vp8Munger::default();
        let d = Vp8Descriptor::parse(&packet(PIC_MOD - 1, true, 0, 0, 0, true)).unwrap();
        m.map(&d);
        let d = Vp8Descriptor::parse(&packet(40, true, 0, 0, 0, true)).unwrap();
        m.switch(&d);
        assert_eq!(m.map(&d).0.picture_id, 0);
        let d41 = Vp8Descriptor::parse(&packet(41, true, 0, 0, 0, true)).unwrap();
        assert_eq!(m.map(&d41).0.picture_id, 1);
        // A late packet of picture 40 maps to 0 again and does not move the newest back.
        assert_eq!(m.map(&d).0.picture_id, 0);
        let d = Vp8Descriptor::parse(&packet(9, true, 0, 0, 0, true)).unwrap();
        m.switch(&d);
        assert_eq!(m.map(&d).0.picture_id, 2);
    }
}
