//! How many 256-bit integer multiply-adds (`VPMADDWD`, `VPMADDUBSW`) and FP32 FMAs (`VFMADD`)
//! this core issues per nanosecond: 8 independent chains of each, timed alone. It answers
//! whether INT8 can beat FP32 by 2× at large batches on an AVX2-only CPU (see BENCHMARKS.md,
//! issue 13): a `VPMADDUBSW` + `VPMADDWD` pair does 32 u8×s8 multiply-adds, one FMA 8. Then the
//! native kernel's AVX2 tile loop alone, to compare with that peak.
//!
//! Usage: rustc -C opt-level=3 scripts/madd-throughput.rs -o /tmp/madd-throughput && /tmp/madd-throughput
use std::arch::x86_64::*;
use std::time::Instant;

#[target_feature(enable = "avx2")]
unsafe fn madd_chain(n: usize, a: __m256i, b: __m256i) -> __m256i {
    // 8 independent accumulators of vpmaddwd results (throughput, not latency).
    let mut s = [_mm256_setzero_si256(); 8];
    for _ in 0..n {
        for k in 0..8 {
            s[k] = _mm256_madd_epi16(s[k], b);
        }
    }
    let mut r = a;
    for k in 0..8 {
        r = _mm256_add_epi32(r, s[k]);
    }
    r
}

#[target_feature(enable = "avx2")]
unsafe fn maddubs_chain(n: usize, a: __m256i, b: __m256i) -> __m256i {
    let mut s = [_mm256_setzero_si256(); 8];
    for k in 0..8 {
        s[k] = _mm256_add_epi8(a, _mm256_set1_epi8(k as i8));
    }
    for _ in 0..n {
        for k in 0..8 {
            s[k] = _mm256_maddubs_epi16(s[k], b);
        }
    }
    let mut r = a;
    for k in 0..8 {
        r = _mm256_add_epi32(r, s[k]);
    }
    r
}

#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chain(n: usize, a: __m256, b: __m256) -> __m256 {
    let mut s = [_mm256_setzero_ps(); 8];
    for _ in 0..n {
        for k in 0..8 {
            s[k] = _mm256_fmadd_ps(s[k], b, a);
        }
    }
    let mut r = a;
    for k in 0..8 {
        r = _mm256_add_ps(r, s[k]);
    }
    r
}

/// The native kernel's AVX2 tile loop (`tile_avx2_maddubs`, 4 rows × 2 blocks of 8 outputs, one
/// step per 4 inputs), over a 128-input layer's weights and rows kept in L1.
#[target_feature(enable = "avx2")]
unsafe fn tile(w: &[u8], x: &[u8], stride: usize, steps: usize, reps: usize) -> i32 {
    let ones = _mm256_set1_epi16(1);
    let mut total = _mm256_setzero_si256();
    for _ in 0..reps {
        let mut s = [[_mm256_setzero_si256(); 2]; 4];
        for j in 0..steps {
            let w0 = _mm256_loadu_si256(w.as_ptr().add((0 * steps + j) * 32).cast());
            let w1 = _mm256_loadu_si256(w.as_ptr().add((1 * steps + j) * 32).cast());
            for r in 0..4 {
                let xp = _mm256_set1_epi32(std::ptr::read_unaligned(x.as_ptr().add(r * stride + 4 * j).cast::<i32>()));
                s[r][0] = _mm256_add_epi32(s[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(xp, w0), ones));
                s[r][1] = _mm256_add_epi32(s[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(xp, w1), ones));
            }
        }
        for r in 0..4 {
            total = _mm256_add_epi32(total, _mm256_add_epi32(s[r][0], s[r][1]));
        }
    }
    _mm256_extract_epi32::<0>(total)
}

fn main() {
    let n = 20_000_000usize;
    unsafe {
        let a = _mm256_set1_epi16(3);
        let b = _mm256_set1_epi16(1);
        for round in 0..3 {
            let t = Instant::now();
            let r = madd_chain(n, a, b);
            let dt = t.elapsed().as_secs_f64();
            let t2 = Instant::now();
            let r2 = maddubs_chain(n, a, b);
            let dt2 = t2.elapsed().as_secs_f64();
            let t3 = Instant::now();
            let r3 = fma_chain(n, _mm256_set1_ps(0.5), _mm256_set1_ps(0.999));
            let dt3 = t3.elapsed().as_secs_f64();
            println!(
                "round {round}: vpmaddwd {:.3} ns/op, vpmaddubsw {:.3} ns/op, vfmadd {:.3} ns/op ({} {} {})",
                dt * 1e9 / (n * 8) as f64,
                dt2 * 1e9 / (n * 8) as f64,
                dt3 * 1e9 / (n * 8) as f64,
                _mm256_extract_epi32::<0>(r),
                _mm256_extract_epi32::<0>(r2),
                _mm256_cvtss_f32(r3)
            );
        }
    }

    let steps = 32;
    let w: Vec<u8> = (0..2 * steps * 32).map(|i| (i % 64) as u8).collect();
    let stride = 192;
    let x: Vec<u8> = (0..4 * stride).map(|i| (i % 251) as u8).collect();
    let reps = 2_000_000;
    for _ in 0..3 {
        let t = Instant::now();
        let r = unsafe { tile(&w, &x, stride, steps, reps) };
        let dt = t.elapsed().as_secs_f64();
        println!(
            "kernel tile loop: {:.3} ns per step (16 multiply µops), {:.3} ns per multiply µop ({r})",
            dt * 1e9 / (reps * steps) as f64,
            dt * 1e9 / (reps * steps * 16) as f64
        );
    }
}
