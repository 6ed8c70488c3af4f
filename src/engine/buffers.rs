//! The engine's batch buffers and their three index spaces, owned in one place (engine thread
//! only; sized at start-up, never reallocated):
//!
//! - `inputs`, by batch position `i`: that tick's model input (its symbol's window of feature
//!   rows as of its own update, oldest first) at a stride of `max_window * NUM_FEATURES`;
//! - `rows`, by row number `n`: the inputs to score, compacted at the model's width;
//! - `windows`, by symbol slot: each symbol's ring of its last `max_window` feature rows, at the
//!   same stride (only allocated for windowed models; zeroed pages are touched as used).

use crate::features::NUM_FEATURES;

pub(super) struct Buffers {
    inputs: Vec<f32>,
    rows: Vec<f32>,
    windows: Vec<f32>,
    max_window: usize,
    stride: usize,
}

impl Buffers {
    pub(super) fn new(max_batch: usize, max_symbols: usize, max_window: usize) -> Self {
        let stride = max_window * NUM_FEATURES;
        Self {
            inputs: vec![0.0; max_batch * stride],
            rows: vec![0.0; max_batch * stride],
            windows: if max_window > 1 { vec![0.0; max_symbols * stride] } else { Vec::new() },
            max_window,
            stride,
        }
    }

    /// Feature rows kept per symbol (the widest window a model may read).
    pub(super) fn max_window(&self) -> usize {
        self.max_window
    }

    /// Makes `row`, the symbol's row number `written`, part of its history, and writes batch
    /// position `i`'s input: the last `window` rows of slot `slot`, oldest first.
    pub(super) fn write_input(
        &mut self,
        i: usize,
        slot: usize,
        written: u64,
        row: &[f32; NUM_FEATURES],
        window: usize,
    ) {
        let input = &mut self.inputs[i * self.stride..(i + 1) * self.stride];
        if self.max_window == 1 {
            input[..NUM_FEATURES].copy_from_slice(row);
        } else {
            let ring = &mut self.windows[slot * self.stride..(slot + 1) * self.stride];
            fill_window(ring, written, row, window, input);
        }
    }

    /// Copies batch position `i`'s input (`width` floats) to row `n` of the rows to score.
    pub(super) fn compact(&mut self, i: usize, n: usize, width: usize) {
        let from = i * self.stride;
        self.rows[n * width..(n + 1) * width].copy_from_slice(&self.inputs[from..from + width]);
    }

    /// The first `n` rows to score.
    pub(super) fn rows(&self, n: usize, width: usize) -> &[f32] {
        &self.rows[..n * width]
    }

    /// The newest feature row of batch position `i`'s input (a window's last row).
    pub(super) fn newest_row(&self, i: usize, width: usize) -> &[f32] {
        &self.inputs[i * self.stride + width - NUM_FEATURES..i * self.stride + width]
    }
}

/// Writes `row` as the symbol's row number `written` into its ring (`max_window` rows), then
/// copies the last `window` rows, oldest first, into `input`. Before the symbol has `window`
/// rows the oldest one it has stands in for the missing ones (those ticks are warming up).
fn fill_window(ring: &mut [f32], written: u64, row: &[f32; NUM_FEATURES], window: usize, input: &mut [f32]) {
    let max_window = (ring.len() / NUM_FEATURES) as u64;
    let at = (written % max_window) as usize * NUM_FEATURES;
    ring[at..at + NUM_FEATURES].copy_from_slice(row);
    let have = written + 1;
    for j in 0..window {
        let age = ((window - 1 - j) as u64).min(have - 1);
        let r = ((have - 1 - age) % max_window) as usize * NUM_FEATURES;
        input[j * NUM_FEATURES..(j + 1) * NUM_FEATURES].copy_from_slice(&ring[r..r + NUM_FEATURES]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: f32) -> [f32; NUM_FEATURES] {
        [v; NUM_FEATURES]
    }

    fn firsts(input: &[f32]) -> Vec<f32> {
        input.chunks(NUM_FEATURES).map(|r| r[0]).collect()
    }

    /// The window as of each row, oldest first, with the first row standing in before the
    /// symbol has `window` rows, and the ring wrapping around past `max_window` rows.
    #[test]
    fn windows_are_the_last_rows_oldest_first() {
        let (max_window, window) = (4, 3);
        let mut ring = vec![0.0; max_window * NUM_FEATURES];
        let mut input = vec![0.0; window * NUM_FEATURES];
        let expected: [[f32; 3]; 7] =
            [[1., 1., 1.], [1., 1., 2.], [1., 2., 3.], [2., 3., 4.], [3., 4., 5.], [4., 5., 6.], [5., 6., 7.]];
        for (written, want) in expected.iter().enumerate() {
            fill_window(&mut ring, written as u64, &row(written as f32 + 1.0), window, &mut input);
            assert_eq!(firsts(&input), want, "after row {}", written + 1);
        }
        // A window as wide as the ring still reads every row once.
        let mut wide = vec![0.0; max_window * NUM_FEATURES];
        fill_window(&mut ring, 7, &row(8.0), max_window, &mut wide);
        assert_eq!(firsts(&wide), [5., 6., 7., 8.]);
    }

    /// Inputs by batch position, rings by slot and compacted rows do not overlap: two symbols
    /// interleaved in one batch each see only their own history.
    #[test]
    fn the_three_index_spaces_stay_apart() {
        let (window, width) = (2, 2 * NUM_FEATURES);
        let mut b = Buffers::new(4, 3, 3);
        b.write_input(0, 2, 0, &row(1.0), window);
        b.write_input(1, 0, 0, &row(10.0), window);
        b.write_input(2, 2, 1, &row(2.0), window);
        b.write_input(3, 0, 1, &row(20.0), window);
        for (n, i) in [3, 2, 1].into_iter().enumerate() {
            b.compact(i, n, width);
        }
        assert_eq!(firsts(b.rows(3, width)), [10., 20., 1., 2., 10., 10.]);
        assert_eq!(b.newest_row(2, width)[0], 2.0);
        assert_eq!(b.newest_row(0, width)[0], 1.0);
    }
}
