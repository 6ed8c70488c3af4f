//! The native INT8 kernel: a [`Plan`] packed for one ISA level, scoring batches on the engine
//! thread with no allocation, bit-exact with [`reference`](super::reference) at every level.
//!
//! Built on the control path ([`NativeKernel::new`], which packs the weights and sizes every
//! buffer for `max_batch` rows), then moved to and owned by the engine thread, which calls
//! [`NativeKernel::score`]. A batch runs layer by layer over all its rows. Per dense layer and
//! row: the u8 activations are dotted with the int8 weights into exact int32 accumulators that
//! start at `bias_q[c] - za · Σ_k w[c][k]` (the zero point folded in), then requantized to u8
//! (multiply, clamp, round half to even — the default MXCSR mode of `CVTPS2DQ`, or the
//! magic-number add in portable code — plus the zero point). The x86 levels compute wide layers
//! in tiles of 4 rows × several blocks of 8 or 16 outputs, so each weight vector loaded serves 4
//! rows, and layers of at most [`DOT_MAX_OUTPUTS`] outputs (the output layer) as horizontal dot
//! products.
//! The saturation monitor counts, per stage, the values clamped at a saturating integer bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::isa::{Isa, VPMADDUBSW_SAFE_WEIGHT};
use super::plan::{FrontOp, Plan, QParam};

/// Clamped-value counters of one model's kernel, shared with the telemetry thread.
#[derive(Debug)]
pub struct Saturation {
    /// Stage names: `input`, `layer0`, ...
    pub stages: Vec<String>,
    /// Values per row at each stage.
    pub widths: Vec<usize>,
    rows: AtomicU64,
    clamped: Vec<AtomicU64>,
}

impl Saturation {
    fn new(plan: &Plan) -> Self {
        let stages = plan.stage_names();
        let clamped = stages.iter().map(|_| AtomicU64::new(0)).collect();
        Self { stages, widths: plan.stage_widths(), rows: AtomicU64::new(0), clamped }
    }

    /// Rows scored so far and the clamped values per stage.
    pub fn snapshot(&self) -> (u64, Vec<u64>) {
        (self.rows.load(Ordering::Relaxed), self.clamped.iter().map(|c| c.load(Ordering::Relaxed)).collect())
    }

    /// The share of values clamped at each stage between two snapshots (`None` when no row was scored).
    pub fn ratios(&self, before: &(u64, Vec<u64>), after: &(u64, Vec<u64>)) -> Option<Vec<f64>> {
        let rows = after.0.checked_sub(before.0).filter(|&r| r > 0)?;
        Some(
            self.widths
                .iter()
                .zip(before.1.iter().zip(&after.1))
                .map(|(&w, (b, a))| a.saturating_sub(*b) as f64 / (rows as f64 * w as f64))
                .collect(),
        )
    }
}

/// Layers with at most this many outputs (the output layer has one) are computed as horizontal
/// dot products, one vector accumulator per row and output reduced at the end, instead of output
/// blocks of 8 or 16 lanes that would be mostly padding.
const DOT_MAX_OUTPUTS: usize = 2;

/// One dense layer packed for an ISA level.
struct Packed {
    /// Inputs, and inputs rounded up to the packing's step (the padding weights are 0): 4 for
    /// output blocks, the vector width in bytes for dot products.
    k: usize,
    kp: usize,
    /// Outputs rounded up to the level's lane count (the outputs themselves for dot products).
    np: usize,
    /// Computed as dot products (see [`DOT_MAX_OUTPUTS`]; always at the portable level).
    dot: bool,
    /// AVX2 output blocks multiply u8 × s8 with `VPMADDUBSW`: every weight is within
    /// [`VPMADDUBSW_SAFE_WEIGHT`], so its int16 pair sums cannot saturate (else `w16`).
    maddubs: bool,
    /// Weights: output blocks at the VNNI levels (and AVX2 `maddubs`) `[np/L][kp/4][L][4]`; dot
    /// products and portable `[n][kp]`.
    w8: Vec<i8>,
    /// AVX2 output blocks' weights widened to i16: `[np/8][kp/2][8][2]`.
    w16: Vec<i16>,
    /// Accumulator start per output: `bias_q - za · Σ_k w` (0 in padding lanes).
    bias: Vec<i32>,
    /// Requantization multiplier per output (0 in padding lanes).
    scale: Vec<f32>,
    zero: i32,
    floor: i32,
    counts_low: bool,
}

fn lanes(isa: Isa) -> usize {
    match isa {
        Isa::Avx512Vnni => 16,
        Isa::AvxVnni | Isa::Avx2 => 8,
        Isa::Portable => 1,
    }
}

impl Packed {
    fn new(layer: &super::plan::Dense, isa: Isa) -> Self {
        let (k, n) = (layer.inputs, layer.outputs);
        let l = lanes(isa);
        let dot = isa == Isa::Portable || n <= DOT_MAX_OUTPUTS;
        let (kp, np) =
            if dot { (k.next_multiple_of(4 * l), n) } else { (k.next_multiple_of(4), n.next_multiple_of(l)) };
        let w = |c: usize, j: usize| if c < n && j < k { layer.weights[c * k + j] } else { 0 };
        let (mut w8, mut w16) = (Vec::new(), Vec::new());
        let maddubs =
            isa == Isa::Avx2 && !dot && layer.weights.iter().all(|w| w.unsigned_abs() <= VPMADDUBSW_SAFE_WEIGHT);
        match isa {
            _ if dot => w8.extend((0..n).flat_map(|c| (0..kp).map(move |j| (c, j))).map(|(c, j)| w(c, j))),
            // The VNNI levels, and AVX2 with `maddubs`: groups of 4 inputs per output lane.
            Isa::Avx512Vnni | Isa::AvxVnni | Isa::Avx2 if isa != Isa::Avx2 || maddubs => {
                for nb in 0..np / l {
                    for j in 0..kp / 4 {
                        for lane in 0..l {
                            w8.extend((0..4).map(|b| w(nb * l + lane, j * 4 + b)));
                        }
                    }
                }
            }
            Isa::Avx2 => {
                for nb in 0..np / l {
                    for j in 0..kp / 2 {
                        for lane in 0..l {
                            w16.extend((0..2).map(|b| i16::from(w(nb * l + lane, j * 2 + b))));
                        }
                    }
                }
            }
            Isa::Avx512Vnni | Isa::AvxVnni | Isa::Portable => unreachable!("covered above: dot products and VNNI"),
        }
        let za = layer.input.zero;
        let bias = (0..np)
            .map(|c| if c < n { layer.bias[c] - za * (0..k).map(|j| i32::from(w(c, j))).sum::<i32>() } else { 0 })
            .collect();
        let scale = (0..np).map(|c| if c < n { layer.requant_scale(c) } else { 0.0 }).collect();
        Self {
            k,
            kp,
            np,
            dot,
            maddubs,
            w8,
            w16,
            bias,
            scale,
            zero: layer.output.zero,
            floor: layer.floor(),
            counts_low: layer.counts_low(),
        }
    }
}

/// Round half to even of `t` with `|t| < 2^22`, in the default rounding mode, without SSE4.1.
#[inline(always)]
fn round_even(t: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    ((t + MAGIC) - MAGIC) as i32
}

/// The kernel's input quantization of one float: `(u8, clamped)`.
#[inline(always)]
fn quantize(x: f32, q: QParam) -> (u8, bool) {
    let t = x / q.scale;
    if t.is_nan() {
        return (0, true);
    }
    let r = round_even(t.clamp(-q.zero as f32 - 1.0, (256 - q.zero) as f32)) + q.zero;
    (r.clamp(0, 255) as u8, !(0..=255).contains(&r))
}

/// Requantizes output `c`'s accumulator (scalar, as the vector levels do it 8 or 16 at a time):
/// `(u8, clamped)`.
#[inline(always)]
fn requant_one(p: &Packed, c: usize, acc: i32) -> (u8, bool) {
    let t = acc as f32 * p.scale[c];
    let q = round_even(t.clamp(-p.zero as f32 - 1.0, (256 - p.zero) as f32)) + p.zero;
    (q.clamp(p.floor, 255) as u8, q > 255 || (p.counts_low && q < 0))
}

/// A packed plan: see the module doc. Owned by the engine thread once built.
pub struct NativeKernel {
    isa: Isa,
    features: usize,
    front: Vec<FrontOp>,
    /// One row through the front end, padded with zeros to a multiple of 8 (which quantize to
    /// the zero point and meet zero weights).
    front_row: Vec<f32>,
    input: QParam,
    output: QParam,
    layers: Vec<Packed>,
    /// Bytes per row in the activation buffers (every layer's `kp` and `np` fit in it).
    stride: usize,
    /// Activation buffers, `max_batch` rows of `stride` bytes (the layers alternate between them).
    a: Vec<u8>,
    b: Vec<u8>,
    /// The AVX2 level's layer input widened to u16, `max_batch` rows of `stride` (empty at the
    /// other levels): one 32-bit broadcast then loads a pair of activations.
    wide: Vec<u16>,
    out: Vec<f32>,
    clamped: Vec<u64>,
    monitor: Arc<Saturation>,
}

impl NativeKernel {
    /// Packs `plan` for `isa` with buffers for batches of up to `max_batch` rows. Fails when this
    /// CPU cannot run `isa`.
    pub fn new(plan: &Plan, isa: Isa, max_batch: usize) -> Result<Self, String> {
        if !isa.available() {
            return Err(format!("this CPU cannot run the native kernel's {isa} level ({})", super::isa::cpu_flags()));
        }
        let layers: Vec<Packed> = plan.layers.iter().map(|l| Packed::new(l, isa)).collect();
        let widest = layers.iter().flat_map(|l| [l.kp, l.np]).chain([plan.features.next_multiple_of(8)]).max();
        let stride = widest.unwrap_or(0).next_multiple_of(64);
        let max_batch = max_batch.max(1);
        Ok(Self {
            isa,
            features: plan.features,
            front: plan.front.clone(),
            front_row: vec![0.0; plan.features.next_multiple_of(8)],
            input: plan.input,
            output: plan.output(),
            stride,
            a: vec![0; max_batch * stride],
            b: vec![0; max_batch * stride],
            wide: if isa == Isa::Avx2 { vec![0; max_batch * stride] } else { Vec::new() },
            out: vec![0.0; max_batch],
            clamped: vec![0; layers.len() + 1],
            layers,
            monitor: Arc::new(Saturation::new(plan)),
        })
    }

    /// The ISA level this kernel runs.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Largest batch [`score`](Self::score) takes.
    pub fn max_batch(&self) -> usize {
        self.out.len()
    }

    /// Floats per input row.
    pub fn width(&self) -> usize {
        self.features
    }

    /// The saturation counters this kernel adds to after every call.
    pub fn monitor(&self) -> Arc<Saturation> {
        Arc::clone(&self.monitor)
    }

    /// Scores `rows` (`n * width` floats, `n` in `1..=max_batch`): one score per row. Each layer
    /// runs over the whole batch before the next, so each weight vector loaded serves several rows.
    pub fn score(&mut self, rows: &[f32]) -> &[f32] {
        let n = rows.len() / self.features;
        assert!(n >= 1 && n <= self.out.len() && rows.len() == n * self.features, "a batch of 1..=max_batch rows");
        for (row, a) in rows.chunks_exact(self.features).zip(self.a.chunks_exact_mut(self.stride)) {
            self.front_row[..self.features].copy_from_slice(row);
            for op in &self.front {
                op.apply_row(&mut self.front_row[..self.features]);
            }
            self.clamped[0] += quantize_row(self.isa, &self.front_row, a, self.input);
        }
        let (mut src, mut dst) = (&mut self.a, &mut self.b);
        for (l, p) in self.layers.iter().enumerate() {
            self.clamped[l + 1] += run_layer(self.isa, p, src, dst, n, self.stride, &mut self.wide);
            std::mem::swap(&mut src, &mut dst);
        }
        for (out, y) in self.out[..n].iter_mut().zip(src.chunks_exact(self.stride)) {
            *out = (i32::from(y[0]) - self.output.zero) as f32 * self.output.scale;
        }
        self.monitor.rows.fetch_add(n as u64, Ordering::Relaxed);
        for (c, local) in self.monitor.clamped.iter().zip(&mut self.clamped) {
            if *local != 0 {
                c.fetch_add(std::mem::take(local), Ordering::Relaxed);
            }
        }
        &self.out[..n]
    }
}

/// Quantizes a front-end row (a multiple of 8 floats) into the first bytes of `q`; returns the
/// clamped count.
fn quantize_row(isa: Isa, x: &[f32], q: &mut [u8], p: QParam) -> u64 {
    assert!(x.len().is_multiple_of(8) && q.len() >= x.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: every x86 level includes AVX2, and the kernel is built only where its level runs.
        Isa::Avx512Vnni | Isa::AvxVnni | Isa::Avx2 => unsafe { x86::quantize_avx2(x, q, p) },
        _ => x
            .iter()
            .zip(q)
            .map(|(&x, q)| {
                let sat;
                (*q, sat) = quantize(x, p);
                u64::from(sat)
            })
            .sum(),
    }
}

/// One layer on `rows` rows of `stride` bytes: `x` (each row's first `kp` bytes) → `y` (each
/// row's first `np` bytes), with `wide` the AVX2 level's scratch. Returns the clamped count.
fn run_layer(isa: Isa, p: &Packed, x: &[u8], y: &mut [u8], rows: usize, stride: usize, wide: &mut [u16]) -> u64 {
    assert!(p.kp <= stride && p.np <= stride && x.len() >= rows * stride && y.len() >= rows * stride);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a kernel is built only for a level `Isa::available` confirmed on this CPU, and
        // every row's reads (`kp` bytes) and writes (`np` bytes) lie inside its `stride` (asserted).
        Isa::Avx512Vnni => unsafe { x86::layer_avx512vnni(p, x, y, rows, stride) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::AvxVnni => unsafe { x86::layer_avxvnni(p, x, y, rows, stride) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => {
            assert!(wide.len() >= rows * stride);
            // SAFETY: as above; `wide` holds `rows` rows of `stride` too.
            unsafe { x86::layer_avx2(p, x, y, rows, stride, wide) }
        }
        _ => dot_rows(p, x, y, rows, stride, |x, w| {
            x[..p.k].iter().zip(&w[..p.k]).map(|(&a, &w)| i32::from(a) * i32::from(w)).sum()
        }),
    }
}

/// A dot-product layer: for every row and output, `dot(row, weights of the output)` plus the
/// bias, requantized. `dot` gets the row's `kp` bytes and the output's `kp` weights.
#[inline(always)]
fn dot_rows(p: &Packed, x: &[u8], y: &mut [u8], rows: usize, stride: usize, dot: impl Fn(&[u8], &[i8]) -> i32) -> u64 {
    let mut clamped = 0;
    for (xr, yr) in x.chunks_exact(stride).zip(y.chunks_exact_mut(stride)).take(rows) {
        for (c, (w, out)) in p.w8.chunks_exact(p.kp).zip(yr.iter_mut()).enumerate() {
            let sat;
            (*out, sat) = requant_one(p, c, p.bias[c] + dot(&xr[..p.kp], w));
            clamped += u64::from(sat);
        }
    }
    clamped
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The x86 levels. Each `layer_*` runs with its target features enabled; the caller
    //! guarantees the CPU has them. Output blocks run in tiles of `ROWS` rows × `B` blocks: each
    //! weight vector loaded serves `ROWS` rows, and the `ROWS · B` accumulator chains are
    //! independent, which hides the latency of the dot-product instructions.

    use std::arch::x86_64::*;

    use super::{Packed, QParam, dot_rows};

    /// A tile function over groups of 4 inputs per output lane (`w8` packed `[np/L][kp/4][L][4]`):
    /// a tile of `R` rows × `B` blocks of `$lanes` outputs, rows `stride` bytes apart from `x`
    /// and `y`. Per group of 4 inputs each row's 4 activation bytes are broadcast and folded into
    /// the accumulators by `|s, x, w| ...`; `$finish` requantizes and stores a block.
    macro_rules! quad_tile {
        ($(#[$doc:meta])* $name:ident, $features:literal, $lanes:literal, $zero:ident, $load:ident, $set1:ident,
         $finish:ident, |$s:ident, $x:ident, $w:ident| $dot:expr) => {
            $(#[$doc])*
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn $name<const B: usize, const R: usize>(
                p: &Packed,
                x: *const u8,
                y: *mut u8,
                stride: usize,
                nb: usize,
            ) -> u64 {
                let steps = p.kp / 4;
                // SAFETY: every read is inside `bias` (np), `w8` (np·kp) or a row's `kp` bytes,
                // every write inside a row's `np` bytes (see `run_layer`).
                unsafe {
                    let mut s = [[$zero(); B]; R];
                    for row in s.iter_mut() {
                        for (b, s) in row.iter_mut().enumerate() {
                            *s = $load(p.bias.as_ptr().add((nb + b) * $lanes).cast());
                        }
                    }
                    for j in 0..steps {
                        let mut w = [$zero(); B];
                        for (b, w) in w.iter_mut().enumerate() {
                            *w = $load(p.w8.as_ptr().add(((nb + b) * steps + j) * 4 * $lanes).cast());
                        }
                        for (r, row) in s.iter_mut().enumerate() {
                            let $x = $set1(quad(x.add(r * stride), j));
                            for (acc, &$w) in row.iter_mut().zip(&w) {
                                let $s = *acc;
                                *acc = $dot;
                            }
                        }
                    }
                    let mut clamped = 0;
                    for (r, row) in s.iter().enumerate() {
                        for (b, s) in row.iter().enumerate() {
                            clamped += $finish(p, *s, nb + b, y.add(r * stride));
                        }
                    }
                    clamped
                }
            }
        };
    }

    /// Rows per tile.
    const ROWS: usize = 4;

    /// Runs `$tile` over `rows` rows × `p.np / $lanes` output blocks as tiles of `ROWS` rows ×
    /// `$b` blocks, then narrower tiles for the remainders (`x`, `y`: row 0's pointers, rows
    /// `stride` apart); returns the clamped count.
    macro_rules! tiled {
        ($tile:ident::<$b:literal>, $lanes:literal, $p:expr, $x:expr, $y:expr, $rows:expr, $stride:expr) => {{
            let (p, x, y, stride) = ($p, $x, $y, $stride);
            // SAFETY: as the tile function; row `r` starts `r * stride` in, and `r < rows`.
            in_tiles::<$b>($rows, p.np / $lanes, |r, nb, full_rows, full_blocks| unsafe {
                let (x, y) = (x.add(r * stride), y.add(r * stride));
                match (full_rows, full_blocks) {
                    (true, true) => $tile::<$b, ROWS>(p, x, y, stride, nb),
                    (true, false) => $tile::<1, ROWS>(p, x, y, stride, nb),
                    (false, true) => $tile::<$b, 1>(p, x, y, stride, nb),
                    (false, false) => $tile::<1, 1>(p, x, y, stride, nb),
                }
            })
        }};
    }

    /// Runs `rows` × `blocks` as tiles of `ROWS` rows × `B` blocks, then narrower tiles for the
    /// remainders: `tile(row, block, full_rows, full_blocks)`; returns the clamped count.
    #[inline(always)]
    fn in_tiles<const B: usize>(
        rows: usize,
        blocks: usize,
        mut tile: impl FnMut(usize, usize, bool, bool) -> u64,
    ) -> u64 {
        let (mut r, mut clamped) = (0, 0);
        while r < rows {
            let full_rows = r + ROWS <= rows;
            let mut nb = 0;
            while nb + B <= blocks {
                clamped += tile(r, nb, full_rows, true);
                nb += B;
            }
            while nb < blocks {
                clamped += tile(r, nb, full_rows, false);
                nb += 1;
            }
            r += if full_rows { ROWS } else { 1 };
        }
        clamped
    }

    /// Sum of 8 i32 lanes.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn hsum8(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }

    /// Requantizes 8 accumulators (AVX2): returns the u8 values in the low 8 bytes and the
    /// clamped count.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn requant8(p: &Packed, acc: __m256i, c: usize) -> (u64, u64) {
        // SAFETY: `c + 8 <= np`, the length of `scale`.
        let scale = unsafe { _mm256_loadu_ps(p.scale.as_ptr().add(c)) };
        let t = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), scale);
        let t = _mm256_min_ps(
            _mm256_max_ps(t, _mm256_set1_ps(-p.zero as f32 - 1.0)),
            _mm256_set1_ps((256 - p.zero) as f32),
        );
        let q = _mm256_add_epi32(_mm256_cvtps_epi32(t), _mm256_set1_epi32(p.zero));
        let mut sat = _mm256_cmpgt_epi32(q, _mm256_set1_epi32(255));
        if p.counts_low {
            sat = _mm256_or_si256(sat, _mm256_cmpgt_epi32(_mm256_setzero_si256(), q));
        }
        let clamped = _mm256_movemask_ps(_mm256_castsi256_ps(sat)).count_ones() as u64;
        let q = _mm256_min_epi32(_mm256_max_epi32(q, _mm256_set1_epi32(p.floor)), _mm256_set1_epi32(255));
        (pack8(q), clamped)
    }

    /// 8 i32 lanes in 0..=255 as 8 bytes.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn pack8(q: __m256i) -> u64 {
        let q16 = _mm256_packus_epi32(q, q);
        let q8 = _mm256_packus_epi16(q16, q16);
        let lo = _mm256_cvtsi256_si32(q8) as u32 as u64;
        let hi = _mm256_extract_epi32::<4>(q8) as u32 as u64;
        lo | (hi << 32)
    }

    /// The input quantization (see `super::quantize`) 8 floats at a time: `MAXPS` returns its
    /// second operand, the lower bound, for a NaN, which then clamps to 0 and counts.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_avx2(x: &[f32], q: &mut [u8], p: QParam) -> u64 {
        let scale = _mm256_set1_ps(p.scale);
        let (lo, hi) = (_mm256_set1_ps(-p.zero as f32 - 1.0), _mm256_set1_ps((256 - p.zero) as f32));
        let zero = _mm256_set1_epi32(p.zero);
        let mut clamped = 0;
        for (x, q) in x.chunks_exact(8).zip(q.chunks_exact_mut(8)) {
            // SAFETY: 8-float reads and 8-byte writes of chunks of those lengths.
            let t = _mm256_div_ps(unsafe { _mm256_loadu_ps(x.as_ptr()) }, scale);
            let r = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(t, lo), hi)), zero);
            let sat = _mm256_or_si256(
                _mm256_cmpgt_epi32(r, _mm256_set1_epi32(255)),
                _mm256_cmpgt_epi32(_mm256_setzero_si256(), r),
            );
            clamped += _mm256_movemask_ps(_mm256_castsi256_ps(sat)).count_ones() as u64;
            let r = _mm256_min_epi32(_mm256_max_epi32(r, _mm256_setzero_si256()), _mm256_set1_epi32(255));
            // SAFETY: as above.
            unsafe { std::ptr::write_unaligned(q.as_mut_ptr().cast::<u64>(), pack8(r)) };
        }
        clamped
    }

    /// Stores 8 requantized lanes of block `nb` at row `y`; returns the clamped count.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn finish8(p: &Packed, s: __m256i, nb: usize, y: *mut u8) -> u64 {
        // SAFETY: `(nb + 1) * 8 <= np <= stride`, the bytes of the row at `y`.
        unsafe {
            let (bytes, clamped) = requant8(p, s, nb * 8);
            std::ptr::write_unaligned(y.add(nb * 8).cast::<u64>(), bytes);
            clamped
        }
    }

    /// The 4 activation bytes `4j..4j+4` of the row at `x`, as one i32 (for the VNNI broadcasts).
    #[inline(always)]
    unsafe fn quad(x: *const u8, j: usize) -> i32 {
        // SAFETY: the caller reads within `kp <= stride`.
        unsafe { std::ptr::read_unaligned(x.add(4 * j).cast::<i32>()) }
    }

    /// AVX2, no saturation: `VPMADDWD` on i16-widened pairs; a tile of `R` rows × `B` blocks of
    /// 8 outputs, rows `stride` values apart from `x` (the widened activations) and `y`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn tile_avx2<const B: usize, const R: usize>(
        p: &Packed,
        x: *const u16,
        y: *mut u8,
        stride: usize,
        nb: usize,
    ) -> u64 {
        let steps = p.kp / 2;
        // SAFETY: every read is inside `bias` (np), `w16` (np·kp) or a row's `kp` bytes; see `run_layer`.
        unsafe {
            let mut s = [[_mm256_setzero_si256(); B]; R];
            for row in s.iter_mut() {
                for (b, s) in row.iter_mut().enumerate() {
                    *s = _mm256_loadu_si256(p.bias.as_ptr().add((nb + b) * 8).cast());
                }
            }
            for j in 0..steps {
                let mut w = [_mm256_setzero_si256(); B];
                for (b, w) in w.iter_mut().enumerate() {
                    *w = _mm256_loadu_si256(p.w16.as_ptr().add(((nb + b) * steps + j) * 16).cast());
                }
                for (r, row) in s.iter_mut().enumerate() {
                    let xp = _mm256_set1_epi32(std::ptr::read_unaligned(x.add(r * stride + 2 * j).cast::<i32>()));
                    for (s, w) in row.iter_mut().zip(&w) {
                        *s = _mm256_add_epi32(*s, _mm256_madd_epi16(xp, *w));
                    }
                }
            }
            let mut clamped = 0;
            for (r, row) in s.iter().enumerate() {
                for (b, s) in row.iter().enumerate() {
                    clamped += finish8(p, *s, nb + b, y.add(r * stride));
                }
            }
            clamped
        }
    }

    quad_tile!(
        /// AVX2 with weights within `VPMADDUBSW_SAFE_WEIGHT`: `VPMADDUBSW` (u8 × s8 pair sums to
        /// i16, exact here) then `VPMADDWD` by 1 (to i32); a tile of `R` rows × `B` blocks of 8 outputs.
        tile_avx2_maddubs, "avx2", 8, _mm256_setzero_si256, _mm256_loadu_si256, _mm256_set1_epi32, finish8,
        |s, x, w| _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), _mm256_set1_epi16(1)))
    );

    /// AVX2 dot product of one row and one output's weights (`kp` a multiple of 16), widened to
    /// i16 and summed with `VPMADDWD`: exact.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn dot_avx2(x: &[u8], w: &[i8]) -> i32 {
        let mut acc = _mm256_setzero_si256();
        for (x, w) in x.chunks_exact(16).zip(w.chunks_exact(16)) {
            // SAFETY: 16-byte reads of 16-byte chunks.
            let (x, w) = unsafe { (_mm_loadu_si128(x.as_ptr().cast()), _mm_loadu_si128(w.as_ptr().cast())) };
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_cvtepu8_epi16(x), _mm256_cvtepi8_epi16(w)));
        }
        hsum8(acc)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn layer_avx2(
        p: &Packed,
        x: &[u8],
        y: &mut [u8],
        rows: usize,
        stride: usize,
        wide: &mut [u16],
    ) -> u64 {
        if p.dot {
            return dot_rows(p, x, y, rows, stride, |x, w| dot_avx2(x, w));
        }
        if p.maddubs {
            let (x, y) = (x.as_ptr(), y.as_mut_ptr());
            return tiled!(tile_avx2_maddubs::<2>, 8, p, x, y, rows, stride);
        }
        // Each row's `kp` activations widened once, 16 at a time (`kp` rounded up to 16 lies
        // within `stride`, a multiple of 64).
        for (xr, wr) in x.chunks_exact(stride).zip(wide.chunks_exact_mut(stride)).take(rows) {
            for (x16, w16) in xr[..p.kp.next_multiple_of(16)].chunks_exact(16).zip(wr.chunks_exact_mut(16)) {
                // SAFETY: 16-byte reads and 16-value writes of chunks of those lengths.
                unsafe {
                    let v = _mm256_cvtepu8_epi16(_mm_loadu_si128(x16.as_ptr().cast()));
                    _mm256_storeu_si256(w16.as_mut_ptr().cast(), v);
                }
            }
        }
        let (x, y) = (wide.as_ptr(), y.as_mut_ptr());
        tiled!(tile_avx2::<2>, 8, p, x, y, rows, stride)
    }

    quad_tile!(
        /// AVX-VNNI: 256-bit `VPDPBUSD`; a tile of `R` rows × `B` blocks of 8 outputs.
        tile_avxvnni, "avx2,avxvnni", 8, _mm256_setzero_si256, _mm256_loadu_si256, _mm256_set1_epi32, finish8,
        |s, x, w| _mm256_dpbusd_avx_epi32(s, x, w)
    );

    /// AVX-VNNI dot product (`kp` a multiple of 32).
    #[target_feature(enable = "avx2,avxvnni")]
    #[inline]
    fn dot_avxvnni(x: &[u8], w: &[i8]) -> i32 {
        let mut acc = _mm256_setzero_si256();
        for (x, w) in x.chunks_exact(32).zip(w.chunks_exact(32)) {
            // SAFETY: 32-byte reads of 32-byte chunks.
            let (x, w) = unsafe { (_mm256_loadu_si256(x.as_ptr().cast()), _mm256_loadu_si256(w.as_ptr().cast())) };
            acc = _mm256_dpbusd_avx_epi32(acc, x, w);
        }
        hsum8(acc)
    }

    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) unsafe fn layer_avxvnni(p: &Packed, x: &[u8], y: &mut [u8], rows: usize, stride: usize) -> u64 {
        if p.dot {
            return dot_rows(p, x, y, rows, stride, |x, w| dot_avxvnni(x, w));
        }
        let (x, y) = (x.as_ptr(), y.as_mut_ptr());
        tiled!(tile_avxvnni::<2>, 8, p, x, y, rows, stride)
    }

    /// Requantizes and stores 16 lanes of block `nb` at row `y` (AVX-512); returns the clamped count.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn finish16(p: &Packed, acc: __m512i, nb: usize, y: *mut u8) -> u64 {
        let c = nb * 16;
        // SAFETY: `c + 16 <= np`, the length of `scale` and at most `stride`, the bytes of the row at `y`.
        unsafe {
            let scale = _mm512_loadu_ps(p.scale.as_ptr().add(c));
            let t = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), scale);
            let t = _mm512_min_ps(
                _mm512_max_ps(t, _mm512_set1_ps(-p.zero as f32 - 1.0)),
                _mm512_set1_ps((256 - p.zero) as f32),
            );
            let q = _mm512_add_epi32(_mm512_cvtps_epi32(t), _mm512_set1_epi32(p.zero));
            let mut sat = _mm512_cmpgt_epi32_mask(q, _mm512_set1_epi32(255));
            if p.counts_low {
                sat |= _mm512_cmplt_epi32_mask(q, _mm512_setzero_si512());
            }
            let q = _mm512_min_epi32(_mm512_max_epi32(q, _mm512_set1_epi32(p.floor)), _mm512_set1_epi32(255));
            _mm_storeu_si128(y.add(c).cast(), _mm512_cvtepi32_epi8(q));
            u64::from(sat.count_ones())
        }
    }

    quad_tile!(
        /// AVX-512 VNNI: 512-bit `VPDPBUSD`; a tile of `R` rows × `B` blocks of 16 outputs.
        tile_avx512vnni, "avx512f,avx512bw,avx512vnni", 16, _mm512_setzero_si512, _mm512_loadu_si512,
        _mm512_set1_epi32, finish16, |s, x, w| _mm512_dpbusd_epi32(s, x, w)
    );

    /// AVX-512 VNNI dot product (`kp` a multiple of 64).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    fn dot_avx512vnni(x: &[u8], w: &[i8]) -> i32 {
        let mut acc = _mm512_setzero_si512();
        for (x, w) in x.chunks_exact(64).zip(w.chunks_exact(64)) {
            // SAFETY: 64-byte reads of 64-byte chunks.
            let (x, w) = unsafe { (_mm512_loadu_si512(x.as_ptr().cast()), _mm512_loadu_si512(w.as_ptr().cast())) };
            acc = _mm512_dpbusd_epi32(acc, x, w);
        }
        _mm512_reduce_add_epi32(acc)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn layer_avx512vnni(p: &Packed, x: &[u8], y: &mut [u8], rows: usize, stride: usize) -> u64 {
        if p.dot {
            return dot_rows(p, x, y, rows, stride, |x, w| dot_avx512vnni(x, w));
        }
        let (x, y) = (x.as_ptr(), y.as_mut_ptr());
        tiled!(tile_avx512vnni::<4>, 16, p, x, y, rows, stride)
    }
}
