//! Simulcast spatial layers: the `Layer` of a video track's encoding (rid `q`/`h`/`f`, LiveKit
//! `VideoQuality` LOW/MEDIUM/HIGH) and `PerLayer`, a value for each of them.

use std::ops::{Index, IndexMut};

/// One simulcast spatial layer, lowest quality first. A single-layer track sends `Low` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Layer {
    /// Lowest resolution (rid `q`, LiveKit `VideoQuality::Low`).
    #[default]
    Low,
    /// Middle resolution (rid `h`, `VideoQuality::Medium`).
    Medium,
    /// Highest resolution (rid `f`, `VideoQuality::High`).
    High,
}

impl Layer {
    /// Every layer, lowest first.
    pub const ALL: [Layer; 3] = [Layer::Low, Layer::Medium, Layer::High];

    /// Spatial index: 0 for `Low` to 2 for `High`.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The layer of spatial index `i`, clamped to `High` above 2 (a publisher that declares more
    /// than three rids has its extra encodings counted as the top layer).
    pub fn from_index(i: usize) -> Layer {
        match i {
            0 => Layer::Low,
            1 => Layer::Medium,
            _ => Layer::High,
        }
    }

    /// This layer and every lower one, highest first.
    pub fn and_below(self) -> impl Iterator<Item = Layer> {
        Layer::ALL.into_iter().rev().filter(move |l| *l <= self)
    }

    /// Every layer above this one, lowest first.
    pub fn above(self) -> impl Iterator<Item = Layer> {
        Layer::ALL.into_iter().filter(move |l| *l > self)
    }
}

/// A value per simulcast layer, indexed by [`Layer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PerLayer<T>(pub [T; 3]);

impl<T> Index<Layer> for PerLayer<T> {
    type Output = T;
    fn index(&self, l: Layer) -> &T {
        &self.0[l.index()]
    }
}

impl<T> IndexMut<Layer> for PerLayer<T> {
    fn index_mut(&mut self, l: Layer) -> &mut T {
        &mut self.0[l.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_round_trip_and_clamp_above_high() {
        for l in Layer::ALL {
            assert_eq!(Layer::from_index(l.index()), l);
        }
        assert_eq!(Layer::from_index(7), Layer::High);
    }

    #[test]
    fn and_below_runs_highest_first_and_above_lowest_first() {
        let below: Vec<_> = Layer::Medium.and_below().collect();
        assert_eq!(below, [Layer::Medium, Layer::Low]);
        let above: Vec<_> = Layer::Low.above().collect();
        assert_eq!(above, [Layer::Medium, Layer::High]);
    }
}
