//! The native INT8 kernel: a [`Plan`] packed for one ISA level, scoring batches on the engine
//! thread with no allocation, bit-exact with [`reference`](super::reference) at every level.
//!
//! Built on the control path ([`NativeKernel::new`], which packs the weights and sizes every
//! buffer for `max_batch` rows), then moved to and owned by the engine thread, which calls
//! [`NativeKernel::score`]. Per dense layer and row: the u8 activations are dotted with the int8
//! weights into exact int32 accumulators that start at `bias_q[c] - za · Σ_k w[c][k]` (the zero
//! point folded in), then requantized to u8 (multiply, clamp, round half to even — the default
//! MXCSR mode of `CVTPS2DQ`, or the magic-number add in portable code — plus the zero point).
//! The saturation monitor counts, per stage, the values clamped at a saturating integer bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::isa::Isa;
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

/// One dense layer packed for an ISA level.
struct Packed {
    /// Inputs, and inputs rounded up to a multiple of 4 (the padding weights are 0).
    k: usize,
    kp: usize,
    /// Outputs, and outputs rounded up to the level's lane count.
    n: usize,
    np: usize,
    /// Weights: VNNI levels `[np/L][kp/4][L][4]`, portable `[n][kp]`.
    w8: Vec<i8>,
    /// AVX2 weights widened to i16: `[np/8][kp/2][8][2]`.
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
        let kp = k.div_ceil(4) * 4;
        let l = lanes(isa);
        let np = n.div_ceil(l) * l;
        let w = |c: usize, j: usize| if c < n && j < k { layer.weights[c * k + j] } else { 0 };
        let (mut w8, mut w16) = (Vec::new(), Vec::new());
        match isa {
            Isa::Avx512Vnni | Isa::AvxVnni => {
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
            Isa::Portable => w8.extend((0..n).flat_map(|c| (0..kp).map(move |j| (c, j))).map(|(c, j)| w(c, j))),
        }
        let za = layer.input.zero;
        let bias = (0..np)
            .map(|c| if c < n { layer.bias[c] - za * (0..k).map(|j| i32::from(w(c, j))).sum::<i32>() } else { 0 })
            .collect();
        let scale = (0..np).map(|c| if c < n { layer.requant_scale(c) } else { 0.0 }).collect();
        Self {
            k,
            kp,
            n,
            np,
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

/// A packed plan: see the module doc. Owned by the engine thread once built.
pub struct NativeKernel {
    isa: Isa,
    features: usize,
    front: Vec<FrontOp>,
    input: QParam,
    output: QParam,
    layers: Vec<Packed>,
    /// Activation buffers (the layers alternate between them), padded for whole-vector reads.
    a: Vec<u8>,
    b: Vec<u8>,
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
        let width = layers.iter().flat_map(|l| [l.kp, l.np]).chain([plan.features]).max().unwrap_or(0) + 64;
        Ok(Self {
            isa,
            features: plan.features,
            front: plan.front.clone(),
            input: plan.input,
            output: plan.output(),
            a: vec![0; width],
            b: vec![0; width],
            out: vec![0.0; max_batch.max(1)],
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

    /// Scores `rows` (`n * width` floats, `n` in `1..=max_batch`): one score per row.
    pub fn score(&mut self, rows: &[f32]) -> &[f32] {
        let n = rows.len() / self.features;
        debug_assert!(n >= 1 && n <= self.out.len() && rows.len() == n * self.features);
        for r in 0..n {
            let row = &rows[r * self.features..(r + 1) * self.features];
            for (i, &x) in row.iter().enumerate() {
                let x = self.front.iter().fold(x, |x, op| op.apply(i, x));
                let (q, sat) = quantize(x, self.input);
                self.a[i] = q;
                self.clamped[0] += u64::from(sat);
            }
            let (mut src, mut dst) = (&mut self.a, &mut self.b);
            for (l, p) in self.layers.iter().enumerate() {
                self.clamped[l + 1] += run_layer(self.isa, p, src, dst);
                std::mem::swap(&mut src, &mut dst);
            }
            self.out[r] = (i32::from(src[0]) - self.output.zero) as f32 * self.output.scale;
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

/// One layer on one row: `x` (at least `kp` bytes) → `y` (at least `np` bytes). Returns the
/// clamped count.
fn run_layer(isa: Isa, p: &Packed, x: &[u8], y: &mut [u8]) -> u64 {
    debug_assert!(x.len() >= p.kp + 4 && y.len() >= p.np);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a kernel is built only for a level `Isa::available` confirmed on this CPU, and
        // the buffers are at least as long as the packed layer reads and writes (debug-asserted).
        Isa::Avx512Vnni => unsafe { x86::layer_avx512vnni(p, x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::AvxVnni => unsafe { x86::layer_avxvnni(p, x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::layer_avx2(p, x, y) },
        _ => layer_portable(p, x, y),
    }
}

fn layer_portable(p: &Packed, x: &[u8], y: &mut [u8]) -> u64 {
    let mut clamped = 0;
    let rows = p.w8.chunks_exact(p.kp).zip(&p.bias).zip(&p.scale);
    for (out, ((w, &bias), &scale)) in y[..p.n].iter_mut().zip(rows) {
        let acc = bias + x[..p.k].iter().zip(&w[..p.k]).map(|(&a, &w)| i32::from(a) * i32::from(w)).sum::<i32>();
        let t = acc as f32 * scale;
        let q = round_even(t.clamp(-p.zero as f32 - 1.0, (256 - p.zero) as f32)) + p.zero;
        clamped += u64::from(q > 255 || (p.counts_low && q < 0));
        *out = q.clamp(p.floor, 255) as u8;
    }
    clamped
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The x86 levels. Each `layer_*` runs with its target features enabled; the caller
    //! guarantees the CPU has them.

    use std::arch::x86_64::*;

    use super::Packed;

    /// Runs `blocks` output blocks four at a time (`group(nb, true)`: four accumulator chains share
    /// each activation broadcast), then the rest one at a time (`group(nb, false)`); returns the
    /// clamped count.
    #[inline(always)]
    fn in_groups(blocks: usize, mut group: impl FnMut(usize, bool) -> u64) -> u64 {
        let (mut nb, mut clamped) = (0, 0);
        while nb + 4 <= blocks {
            clamped += group(nb, true);
            nb += 4;
        }
        while nb < blocks {
            clamped += group(nb, false);
            nb += 1;
        }
        clamped
    }

    /// Reads 4 activation bytes as one i32 (for the VNNI broadcasts).
    #[inline(always)]
    unsafe fn quad(x: &[u8], j: usize) -> i32 {
        // SAFETY: the caller reads within `kp`, and `x.len() >= kp`.
        unsafe { std::ptr::read_unaligned(x.as_ptr().add(4 * j).cast::<i32>()) }
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
        let q16 = _mm256_packus_epi32(q, q);
        let q8 = _mm256_packus_epi16(q16, q16);
        let lo = _mm256_cvtsi256_si32(q8) as u32 as u64;
        let hi = _mm256_extract_epi32::<4>(q8) as u32 as u64;
        (lo | (hi << 32), clamped)
    }

    /// Stores 8 requantized lanes of block `nb`; returns the clamped count.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn finish8(p: &Packed, s: __m256i, nb: usize, y: &mut [u8]) -> u64 {
        // SAFETY: `(nb + 1) * 8 <= np <= y.len()`.
        unsafe {
            let (bytes, clamped) = requant8(p, s, nb * 8);
            std::ptr::write_unaligned(y.as_mut_ptr().add(nb * 8).cast::<u64>(), bytes);
            clamped
        }
    }

    /// AVX2, no saturation: `VPMADDWD` on i16-widened pairs, `B` blocks of 8 outputs at a time.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn group_avx2<const B: usize>(p: &Packed, x: &[u8], nb: usize, y: &mut [u8]) -> u64 {
        let steps = p.kp / 2;
        // SAFETY: every read is inside `bias` (np), `w16` (np·kp) or `x` (kp); see `run_layer`.
        unsafe {
            let mut s = [_mm256_setzero_si256(); B];
            for (b, s) in s.iter_mut().enumerate() {
                *s = _mm256_loadu_si256(p.bias.as_ptr().add((nb + b) * 8).cast());
            }
            for j in 0..steps {
                let pair = i32::from(*x.get_unchecked(2 * j)) | (i32::from(*x.get_unchecked(2 * j + 1)) << 16);
                let xp = _mm256_set1_epi32(pair);
                for (b, s) in s.iter_mut().enumerate() {
                    let w = _mm256_loadu_si256(p.w16.as_ptr().add(((nb + b) * steps + j) * 16).cast());
                    *s = _mm256_add_epi32(*s, _mm256_madd_epi16(xp, w));
                }
            }
            s.iter().enumerate().map(|(b, s)| finish8(p, *s, nb + b, y)).sum()
        }
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn layer_avx2(p: &Packed, x: &[u8], y: &mut [u8]) -> u64 {
        // SAFETY: as `group_avx2`.
        in_groups(p.np / 8, |nb, four| unsafe {
            if four { group_avx2::<4>(p, x, nb, y) } else { group_avx2::<1>(p, x, nb, y) }
        })
    }

    /// AVX-VNNI: 256-bit `VPDPBUSD`, `B` blocks of 8 outputs at a time.
    #[target_feature(enable = "avx2,avxvnni")]
    #[inline]
    unsafe fn group_avxvnni<const B: usize>(p: &Packed, x: &[u8], nb: usize, y: &mut [u8]) -> u64 {
        let steps = p.kp / 4;
        // SAFETY: every read is inside `bias` (np), `w8` (np·kp) or `x` (kp).
        unsafe {
            let mut s = [_mm256_setzero_si256(); B];
            for (b, s) in s.iter_mut().enumerate() {
                *s = _mm256_loadu_si256(p.bias.as_ptr().add((nb + b) * 8).cast());
            }
            for j in 0..steps {
                let xq = _mm256_set1_epi32(quad(x, j));
                for (b, s) in s.iter_mut().enumerate() {
                    let w = _mm256_loadu_si256(p.w8.as_ptr().add(((nb + b) * steps + j) * 32).cast());
                    *s = _mm256_dpbusd_avx_epi32(*s, xq, w);
                }
            }
            s.iter().enumerate().map(|(b, s)| finish8(p, *s, nb + b, y)).sum()
        }
    }

    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) unsafe fn layer_avxvnni(p: &Packed, x: &[u8], y: &mut [u8]) -> u64 {
        // SAFETY: as `group_avxvnni`.
        in_groups(p.np / 8, |nb, four| unsafe {
            if four { group_avxvnni::<4>(p, x, nb, y) } else { group_avxvnni::<1>(p, x, nb, y) }
        })
    }

    /// Requantizes and stores 16 lanes of block `nb` (AVX-512); returns the clamped count.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn finish16(p: &Packed, acc: __m512i, nb: usize, y: &mut [u8]) -> u64 {
        let c = nb * 16;
        // SAFETY: `c + 16 <= np`, the length of `scale` and at most `y.len()`.
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
            _mm_storeu_si128(y.as_mut_ptr().add(c).cast(), _mm512_cvtepi32_epi8(q));
            u64::from(sat.count_ones())
        }
    }

    /// AVX-512 VNNI: 512-bit `VPDPBUSD`, `B` blocks of 16 outputs at a time.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    unsafe fn group_avx512vnni<const B: usize>(p: &Packed, x: &[u8], nb: usize, y: &mut [u8]) -> u64 {
        let steps = p.kp / 4;
        // SAFETY: every read is inside `bias` (np), `w8` (np·kp) or `x` (kp).
        unsafe {
            let mut s = [_mm512_setzero_si512(); B];
            for (b, s) in s.iter_mut().enumerate() {
                *s = _mm512_loadu_si512(p.bias.as_ptr().add((nb + b) * 16).cast());
            }
            for j in 0..steps {
                let xq = _mm512_set1_epi32(quad(x, j));
                for (b, s) in s.iter_mut().enumerate() {
                    let w = _mm512_loadu_si512(p.w8.as_ptr().add(((nb + b) * steps + j) * 64).cast());
                    *s = _mm512_dpbusd_epi32(*s, xq, w);
                }
            }
            s.iter().enumerate().map(|(b, s)| finish16(p, *s, nb + b, y)).sum()
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn layer_avx512vnni(p: &Packed, x: &[u8], y: &mut [u8]) -> u64 {
        // SAFETY: as `group_avx512vnni`.
        in_groups(p.np / 16, |nb, four| unsafe {
            if four { group_avx512vnni::<4>(p, x, nb, y) } else { group_avx512vnni::<1>(p, x, nb, y) }
        })
    }
}
