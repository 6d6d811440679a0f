//! The OTA v3 receive window (reference 2.2): the cumulative chunk index and the selective-ack
//! bitmap of the chunks received beyond it, as `communication/src/firmware_update.cpp` keeps
//! them (`chunkIndex_`, `chunks_`).
//!
//! Bit `b` of word `w` stands for chunk `cumulative + 32*w + b + 1`. A chunk more than
//! `window` chunks beyond the cumulative index is out of the window and not recorded. When the
//! chunk right after the cumulative index arrives, the run of received chunks that follows it
//! is folded into the cumulative index and the bitmap shifts down (the window slides).

use protocol::message::UpdateAck;

/// Where a chunk landed in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// At or below the cumulative index, or its bit was already set: not written again.
    Duplicate,
    /// More than `window` chunks beyond the cumulative index: ignored.
    OutOfWindow,
    /// A new chunk, to be written.
    New {
        /// 0-based position relative to the cumulative index before this chunk.
        relative: u32,
        /// The chunk right before it is still missing (Device OS's `ooo_chunks` rule).
        out_of_order: bool,
        /// Chunks folded into the cumulative index by this one (0 when it left a gap).
        advanced: u32,
    },
}

/// Cumulative index plus bitmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveWindow {
    cumulative: u32,
    window: u32,
    bitmap: Vec<u32>,
}

impl ReceiveWindow {
    /// A window of `window` chunks (at least 1), nothing received.
    pub fn new(window: u32) -> ReceiveWindow {
        let window = window.max(1);
        ReceiveWindow {
            cumulative: 0,
            window,
            bitmap: vec![0; window.div_ceil(32) as usize],
        }
    }

    /// Chunks 1..=cumulative are all received.
    pub fn cumulative(&self) -> u32 {
        self.cumulative
    }

    /// Window size in chunks.
    pub fn window(&self) -> u32 {
        self.window
    }

    fn bit(&self, relative: u32) -> bool {
        self.bitmap
            .get((relative / 32) as usize)
            .is_some_and(|w| w & (1 << (relative % 32)) != 0)
    }

    /// Records chunk `index` (1-based; the caller has checked it against the chunk count).
    pub fn place(&mut self, index: u32) -> Placement {
        if index <= self.cumulative {
            return Placement::Duplicate;
        }
        let relative = index - self.cumulative - 1;
        if relative >= self.window {
            return Placement::OutOfWindow;
        }
        if self.bit(relative) {
            return Placement::Duplicate;
        }
        let word = (relative / 32) as usize;
        if let Some(w) = self.bitmap.get_mut(word) {
            *w |= 1 << (relative % 32);
        }
        let out_of_order = relative > 0 && !self.bit(relative - 1);
        let advanced = if relative == 0 { self.slide() } else { 0 };
        Placement::New {
            relative,
            out_of_order,
            advanced,
        }
    }

    /// Folds the leading run of set bits into the cumulative index.
    fn slide(&mut self) -> u32 {
        let mut run = 0u32;
        for w in &self.bitmap {
            let ones = w.trailing_ones();
            run += ones;
            if ones < 32 {
                break;
            }
        }
        if run == 0 {
            return 0;
        }
        let (words, bits) = ((run / 32) as usize, run % 32);
        let n = self.bitmap.len();
        for i in 0..n {
            let lo = self.bitmap.get(i + words).copied().unwrap_or(0);
            let hi = self.bitmap.get(i + words + 1).copied().unwrap_or(0);
            self.bitmap[i] = if bits == 0 {
                lo
            } else {
                (lo >> bits) | (hi << (32 - bits))
            };
        }
        self.cumulative += run;
        run
    }

    /// Some chunk beyond the cumulative index is received while one before it is missing.
    pub fn has_gaps(&self) -> bool {
        self.bitmap.iter().any(|w| *w != 0)
    }

    /// The UpdateAck for the current state: trailing zero words left out.
    pub fn ack(&self) -> UpdateAck {
        let used = self
            .bitmap
            .iter()
            .rposition(|w| *w != 0)
            .map_or(0, |i| i + 1);
        UpdateAck {
            cumulative: self.cumulative,
            bitmap: self.bitmap[..used].to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_chunks_advance_the_cumulative_index() {
        let mut w = ReceiveWindow::new(256);
        assert_eq!(
            w.place(1),
            Placement::New {
                relative: 0,
                out_of_order: false,
                advanced: 1
            }
        );
        assert_eq!(w.cumulative(), 1);
        assert_eq!(w.place(1), Placement::Duplicate);
        assert!(!w.has_gaps());
        assert_eq!(w.ack(), UpdateAck::from_received(1, []));
    }

    #[test]
    fn a_gap_is_acked_selectively_and_filling_it_slides_the_window() {
        let mut w = ReceiveWindow::new(256);
        assert!(matches!(
            w.place(2),
            Placement::New {
                relative: 1,
                out_of_order: true,
                advanced: 0
            }
        ));
        // Reference example: cumulative 0, chunk 2 received => bitmap 02 00 00 00.
        assert_eq!(
            w.ack(),
            UpdateAck {
                cumulative: 0,
                bitmap: vec![2]
            }
        );
        // Chunk 3 follows chunk 2: not out of order.
        assert!(matches!(
            w.place(3),
            Placement::New {
                out_of_order: false,
                ..
            }
        ));
        assert_eq!(w.place(3), Placement::Duplicate);
        assert!(matches!(w.place(1), Placement::New { advanced: 3, .. }));
        assert_eq!(w.cumulative(), 3);
        assert!(!w.has_gaps());
    }

    #[test]
    fn sliding_crosses_word_boundaries() {
        let mut w = ReceiveWindow::new(256);
        for i in 2..=70 {
            w.place(i);
        }
        w.place(72);
        w.place(100);
        assert_eq!(w.ack().bitmap.len(), 4);
        assert!(matches!(w.place(1), Placement::New { advanced: 70, .. }));
        // Left: 72 and 100 beyond cumulative 70 => bits 1 and 29.
        assert_eq!(
            w.ack(),
            UpdateAck {
                cumulative: 70,
                bitmap: vec![(1 << 1) | (1 << 29)]
            }
        );
        assert_eq!(w.ack(), UpdateAck::from_received(70, [72, 100]));
    }

    #[test]
    fn chunks_beyond_the_window_are_not_recorded() {
        let mut w = ReceiveWindow::new(115);
        assert_eq!(w.bitmap.len(), 4);
        assert_eq!(w.place(116), Placement::OutOfWindow);
        assert!(matches!(w.place(115), Placement::New { relative: 114, .. }));
        assert_eq!(w.ack(), UpdateAck::from_received(0, [115]));
    }

    #[test]
    fn a_full_window_slides_completely() {
        let mut w = ReceiveWindow::new(64);
        for i in 2..=64 {
            w.place(i);
        }
        assert!(matches!(w.place(1), Placement::New { advanced: 64, .. }));
        assert_eq!(w.cumulative(), 64);
        assert!(!w.has_gaps());
        assert!(matches!(w.place(128), Placement::New { relative: 63, .. }));
        assert_eq!(w.place(129), Placement::OutOfWindow);
    }
}
