//! CPU kernels for hearth's native transformer path.
//!
//! Weights are 8-bit with one f32 scale per 32 values (the layout of GGUF's
//! Q8_0, with the scale widened so the inner loop needs no f16 conversion).
//! Activations are quantised per 32 values to **16-bit** integers rather
//! than the 8 bits llama.cpp and candle use: `vpmaddwd` multiplies 16-bit
//! pairs as cheaply as the 8-bit path does its work, and 16-bit activations
//! keep a small model's answers the same as full-precision ones (8-bit
//! activations flip SmolLM2-135M's first token on simple questions).
//!
//! Matrix products split the rows across a rayon pool; prompt batches reuse
//! each weight block for up to four tokens while it is in registers.

#![deny(missing_docs)]

pub mod sampling;

/// Values per quantisation block.
pub const BLOCK: usize = 32;

/// A row-major matrix of 8-bit weights with a scale per 32 values.
#[derive(Debug, Clone, Default)]
pub struct Q8Matrix {
    rows: usize,
    cols: usize,
    quants: Vec<i8>,
    scales: Vec<f32>,
}

impl Q8Matrix {
    /// Quantises `data` (`rows × cols`, row-major). `cols` must be a
    /// multiple of 32.
    pub fn from_f32(data: &[f32], rows: usize, cols: usize) -> Q8Matrix {
        assert_eq!(data.len(), rows * cols, "matrix shape");
        assert_eq!(cols % BLOCK, 0, "columns must be a multiple of {BLOCK}");
        let mut quants = vec![0i8; data.len()];
        let mut scales = vec![0f32; data.len() / BLOCK];
        for ((block, q), s) in data
            .chunks_exact(BLOCK)
            .zip(quants.chunks_exact_mut(BLOCK))
            .zip(scales.iter_mut())
        {
            let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = max / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            for (o, v) in q.iter_mut().zip(block) {
                *o = (v * inv).round().clamp(-127.0, 127.0) as i8;
            }
            *s = scale;
        }
        Q8Matrix {
            rows,
            cols,
            quants,
            scales,
        }
    }

    /// Takes Q8_0 blocks as they are (scale and 32 quants each): no
    /// re-rounding, so a Q8_0 file runs exactly its own weights.
    pub fn from_q8_0(scales: Vec<f32>, quants: Vec<i8>, rows: usize, cols: usize) -> Q8Matrix {
        assert_eq!(quants.len(), rows * cols, "matrix shape");
        assert_eq!(scales.len() * BLOCK, quants.len(), "one scale per block");
        Q8Matrix {
            rows,
            cols,
            quants,
            scales,
        }
    }

    /// Stacks matrices with the same column count (fused projections).
    pub fn stack(parts: &[Q8Matrix]) -> Q8Matrix {
        let cols = parts[0].cols;
        assert!(parts.iter().all(|p| p.cols == cols), "column counts differ");
        Q8Matrix {
            rows: parts.iter().map(|p| p.rows).sum(),
            cols,
            quants: parts
                .iter()
                .flat_map(|p| p.quants.iter().copied())
                .collect(),
            scales: parts
                .iter()
                .flat_map(|p| p.scales.iter().copied())
                .collect(),
        }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.quants.len() + self.scales.len() * 4
    }

    /// Row `r`'s quantised values and block scales.
    fn row_blocks(&self, r: usize) -> (&[i8], &[f32]) {
        let nb = self.cols / BLOCK;
        (
            &self.quants[r * self.cols..(r + 1) * self.cols],
            &self.scales[r * nb..(r + 1) * nb],
        )
    }

    /// Row `r` as f32 (embedding lookups).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let q = &self.quants[r * self.cols..(r + 1) * self.cols];
        let s = &self.scales[r * self.cols / BLOCK..(r + 1) * self.cols / BLOCK];
        for ((o, q), s) in out
            .chunks_exact_mut(BLOCK)
            .zip(q.chunks_exact(BLOCK))
            .zip(s)
        {
            for (o, q) in o.iter_mut().zip(q) {
                *o = *q as f32 * s;
            }
        }
    }
}

/// Dot product of two f32 slices. Eight independent partial sums let the
/// compiler vectorise what a single running sum would serialise.
#[inline(always)]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Largest absolute value (0 for an empty slice), vectorisable.
#[inline]
pub fn max_abs(a: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.chunks_exact(8);
    let tail = chunks.remainder().iter().fold(0f32, |m, v| m.max(v.abs()));
    for x in chunks {
        for i in 0..8 {
            acc[i] = acc[i].max(x[i].abs());
        }
    }
    acc.iter().fold(tail, |m, v| m.max(*v))
}

/// Adding and subtracting this rounds an f32 below 2²² in magnitude to the
/// nearest integer (ties to even).
const ROUND: f32 = 12_582_912.0;

/// Activations of one or more tokens, quantised to 16 bits per 32 values.
#[derive(Debug, Default, Clone)]
pub struct Activations {
    tokens: usize,
    cols: usize,
    quants: Vec<i16>,
    scales: Vec<f32>,
}

impl Activations {
    /// Token `t`'s quantised values and block scales.
    fn token(&self, t: usize) -> (&[i16], &[f32]) {
        let nb = self.cols / BLOCK;
        (
            &self.quants[t * self.cols..(t + 1) * self.cols],
            &self.scales[t * nb..(t + 1) * nb],
        )
    }

    /// Quantises `x` (`tokens × cols`, row-major) into `self`, reusing its
    /// buffers.
    pub fn quantize(&mut self, x: &[f32], cols: usize) {
        assert_eq!(cols % BLOCK, 0, "columns must be a multiple of {BLOCK}");
        assert_eq!(x.len() % cols, 0, "activation shape");
        self.tokens = x.len() / cols;
        self.cols = cols;
        self.quants.resize(x.len(), 0);
        self.scales.resize(x.len() / BLOCK, 0.0);
        for ((block, q), s) in x
            .chunks_exact(BLOCK)
            .zip(self.quants.chunks_exact_mut(BLOCK))
            .zip(self.scales.iter_mut())
        {
            let scale = max_abs(block) / 32767.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            for (o, v) in q.iter_mut().zip(block) {
                // Round to nearest even by adding and removing 1.5·2²³
                // (|v · inv| ≤ 32767): plain SSE2 arithmetic that
                // vectorises, where `round` is a C library call per value.
                *o = ((v * inv + ROUND) - ROUND) as i16;
            }
            *s = scale;
        }
    }
}

/// `y = x · Wᵀ` for every token: `y` is `tokens × w.rows()`, row-major.
/// Rows are split across `pool` when given.
pub fn matmul(w: &Q8Matrix, x: &Activations, y: &mut [f32], pool: Option<&rayon::ThreadPool>) {
    assert_eq!(w.cols, x.cols, "inner dimensions");
    assert_eq!(y.len(), x.tokens * w.rows, "output shape");
    let out = SharedOut(y.as_mut_ptr());
    let run = |rows: std::ops::Range<usize>| {
        // SAFETY: each task writes only the output columns of its own rows,
        // and `y` outlives the pool's scope.
        unsafe { rows_times(w, x, rows, &out) }
    };
    match pool {
        Some(pool) if pool.current_num_threads() > 1 && w.rows >= 64 => {
            // Several tasks per thread, so a thread slowed by other work on
            // a shared machine does not hold the whole product back.
            let tasks = pool.current_num_threads() * 4;
            // Whole cache lines of rows per task.
            let per = w.rows.div_ceil(tasks).next_multiple_of(16);
            pool.scope(|s| {
                let mut start = 0;
                while start < w.rows {
                    let end = (start + per).min(w.rows);
                    let run = &run;
                    s.spawn(move |_| run(start..end));
                    start = end;
                }
            });
        }
        _ => run(0..w.rows),
    }
}

struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements (see `matmul`).
unsafe impl Sync for SharedOut {}

/// # Safety
/// `out` points to a `x.tokens × w.rows` buffer; no other thread writes
/// the columns `rows` of it.
unsafe fn rows_times(w: &Q8Matrix, x: &Activations, rows: std::ops::Range<usize>, out: &SharedOut) {
    // Two weight rows times four tokens at a time: each activation block
    // loaded serves two rows, each widened weight block four tokens.
    let mut scratch: ScaleProducts = [[[0.0; SCALE_CHUNK]; 4]; 2];
    let mut r = rows.start;
    while r < rows.end {
        let rr = (rows.end - r).min(2);
        let mut t = 0;
        while t < x.tokens {
            let k = (x.tokens - t).min(4);
            let mut acc = [[0f32; 4]; 2];
            dot(w, r..r + rr, x, t..t + k, &mut acc, &mut scratch);
            for (j, acc) in acc[..rr].iter().enumerate() {
                for (i, v) in acc[..k].iter().enumerate() {
                    // SAFETY: in bounds by the shape check; this row's
                    // column belongs to this task alone.
                    unsafe { *out.0.add((t + i) * w.rows + r + j) = *v };
                }
            }
            t += k;
        }
        r += rr;
    }
}

/// Dot products of weight rows `rows` (at most 2) with tokens `tokens` (at
/// most 4): `acc[row][token]`.
fn dot(
    w: &Q8Matrix,
    rows: std::ops::Range<usize>,
    x: &Activations,
    tokens: std::ops::Range<usize>,
    acc: &mut [[f32; 4]; 2],
    scratch: &mut ScaleProducts,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if avx2() {
            // SAFETY: the CPU has AVX2 and FMA (checked at run time).
            unsafe { dot_avx2(w, rows, x, tokens, acc, scratch) };
            return;
        }
    }
    let _ = scratch;
    for (r, acc) in rows.zip(acc.iter_mut()) {
        let (wq, ws) = w.row_blocks(r);
        dot_scalar(wq, ws, x, tokens.start, tokens.len(), acc);
    }
}

fn dot_scalar(wq: &[i8], ws: &[f32], x: &Activations, t: usize, k: usize, acc: &mut [f32; 4]) {
    let nb = ws.len();
    for (i, a) in acc.iter_mut().enumerate().take(k) {
        let (xq, xs) = x.token(t + i);
        let mut sum = 0f32;
        for b in 0..nb {
            let mut s = 0i32;
            for j in b * BLOCK..(b + 1) * BLOCK {
                s += wq[j] as i32 * xq[j] as i32;
            }
            sum += s as f32 * ws[b] * xs[b];
        }
        *a = sum;
    }
}

/// Whether this CPU has AVX2 and FMA (checked once).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(
    w: &Q8Matrix,
    rows: std::ops::Range<usize>,
    x: &Activations,
    tokens: std::ops::Range<usize>,
    acc: &mut [[f32; 4]; 2],
    scratch: &mut ScaleProducts,
) {
    let (r, rr) = (rows.start, rows.len());
    let (t, k) = (tokens.start, tokens.len());
    let wrow = |j: usize| w.row_blocks(r + j);
    let xrow = |i: usize| x.token(t + i);
    // SAFETY (all calls): AVX2/FMA present (caller); slices sized by
    // construction.
    match (rr, k) {
        (2, 4) => {
            let (w0, w1) = (wrow(0), wrow(1));
            *acc = unsafe {
                dot_rows4::<2>(
                    [w0.0, w1.0],
                    [w0.1, w1.1],
                    [xrow(0), xrow(1), xrow(2), xrow(3)],
                    scratch,
                )
            };
        }
        (1, 4) => {
            let w0 = wrow(0);
            acc[0] = unsafe {
                dot_rows4::<1>(
                    [w0.0],
                    [w0.1],
                    [xrow(0), xrow(1), xrow(2), xrow(3)],
                    scratch,
                )
            }[0];
        }
        _ => {
            for (j, acc) in acc.iter_mut().enumerate().take(rr) {
                let (wq, ws) = wrow(j);
                for (i, a) in acc.iter_mut().enumerate().take(k) {
                    let (xq, xs) = xrow(i);
                    *a = unsafe { dot1_avx2(wq, ws, xq, xs) };
                }
            }
        }
    }
}

/// 32 weights (sign-extended to 16 bits) times 32 activations, summed to
/// eight 32-bit lanes. `vpmaddwd` cannot overflow: 2·127·32767 < 2³¹.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn block_dot(
    w_lo: std::arch::x86_64::__m256i,
    w_hi: std::arch::x86_64::__m256i,
    xq: *const i16,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: the caller passes a pointer to 32 readable i16.
    unsafe {
        let x_lo = _mm256_loadu_si256(xq as *const __m256i);
        let x_hi = _mm256_loadu_si256(xq.add(16) as *const __m256i);
        _mm256_cvtepi32_ps(_mm256_add_epi32(
            _mm256_madd_epi16(w_lo, x_lo),
            _mm256_madd_epi16(w_hi, x_hi),
        ))
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn load_weights(wq: *const i8) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    // SAFETY: the caller passes a pointer to 32 readable i8.
    unsafe {
        let w = _mm256_loadu_si256(wq as *const __m256i);
        (
            _mm256_cvtepi8_epi16(_mm256_castsi256_si128(w)),
            _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(w)),
        )
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let q = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
    let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    let q = _mm_add_ss(q, _mm_shuffle_ps::<1>(q, q));
    _mm_cvtss_f32(q)
}

/// One row times one token: the decode path. The same operations in the
/// same order as [`dot4_avx2`], so a token's result does not depend on
/// whether it was evaluated alone or in a prompt batch (a cached prompt
/// prefix then gives exactly the numbers a fresh evaluation would).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot1_avx2(wq: &[i8], ws: &[f32], xq: &[i16], xs: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let nb = ws.len();
    debug_assert!(wq.len() == nb * BLOCK && xq.len() == nb * BLOCK && xs.len() == nb);
    let mut acc = _mm256_setzero_ps();
    // SAFETY: b < nb, so every block read is in bounds.
    unsafe {
        for (b, (&w, &x)) in ws.iter().zip(xs).enumerate() {
            let (lo, hi) = load_weights(wq.as_ptr().add(b * BLOCK));
            let p = block_dot(lo, hi, xq.as_ptr().add(b * BLOCK));
            acc = _mm256_fmadd_ps(p, _mm256_set1_ps(w * x), acc);
        }
        hsum(acc)
    }
}

/// Blocks whose scale products [`dot_rows4`] computes ahead, together.
const SCALE_CHUNK: usize = 64;

/// `R` rows times four tokens: each weight block is widened once and used
/// four times, each activation block loaded once for all `R` rows (the
/// prompt path). The products of block scales are computed ahead, a
/// vector at a time, and broadcast straight from memory in the loop;
/// they are the same products [`dot1_avx2`] computes one by one.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)] // one index addresses several arrays
unsafe fn dot_rows4<const R: usize>(
    wq: [&[i8]; R],
    ws: [&[f32]; R],
    x: [(&[i16], &[f32]); 4],
    d: &mut ScaleProducts,
) -> [[f32; 4]; R] {
    use std::arch::x86_64::*;
    let nb = ws[0].len();
    debug_assert!(
        wq.iter()
            .zip(&ws)
            .all(|(q, s)| q.len() == nb * BLOCK && s.len() == nb)
            && x.iter()
                .all(|(q, s)| q.len() == nb * BLOCK && s.len() == nb)
    );
    let mut acc = [[_mm256_setzero_ps(); 4]; R];
    let mut start = 0;
    // SAFETY: every block index is below nb, so every read is in bounds.
    unsafe {
        while start < nb {
            let m = (nb - start).min(SCALE_CHUNK);
            for (d, ws) in d.iter_mut().zip(&ws).take(R) {
                for (d, (_, xs)) in d.iter_mut().zip(&x) {
                    for ((d, w), x) in d[..m].iter_mut().zip(&ws[start..]).zip(&xs[start..]) {
                        *d = w * x;
                    }
                }
            }
            for b in 0..m {
                let at = (start + b) * BLOCK;
                // Loops rather than closures: a closure would not inherit
                // this function's target features and would not inline.
                let mut w = [(_mm256_setzero_si256(), _mm256_setzero_si256()); R];
                for j in 0..R {
                    w[j] = load_weights(wq[j].as_ptr().add(at));
                }
                for (i, (xq, _)) in x.iter().enumerate() {
                    let x_lo = _mm256_loadu_si256(xq.as_ptr().add(at) as *const __m256i);
                    let x_hi = _mm256_loadu_si256(xq.as_ptr().add(at + 16) as *const __m256i);
                    for j in 0..R {
                        let p = _mm256_cvtepi32_ps(_mm256_add_epi32(
                            _mm256_madd_epi16(w[j].0, x_lo),
                            _mm256_madd_epi16(w[j].1, x_hi),
                        ));
                        acc[j][i] = _mm256_fmadd_ps(p, _mm256_broadcast_ss(&d[j][i][b]), acc[j][i]);
                    }
                }
            }
            start += m;
        }
        let mut out = [[0f32; 4]; R];
        for j in 0..R {
            for i in 0..4 {
                out[j][i] = hsum(acc[j][i]);
            }
        }
        out
    }
}

/// Scratch for [`dot_rows4`]: block-scale products per row and token.
type ScaleProducts = [[[f32; SCALE_CHUNK]; 4]; 2];

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    }

    #[test]
    fn quantised_product_matches_f32_and_scalar_matches_simd() {
        let mut seed = 1;
        let (rows, cols) = (201, 96);
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
        let m = Q8Matrix::from_f32(&w, rows, cols);
        for tokens in [1, 3, 4, 7] {
            let x: Vec<f32> = (0..tokens * cols).map(|_| lcg(&mut seed) * 10.0).collect();
            let mut a = Activations::default();
            a.quantize(&x, cols);
            let mut y = vec![0f32; tokens * rows];
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            matmul(&m, &a, &mut y, Some(&pool));
            for t in 0..tokens {
                for r in 0..rows {
                    let exact: f32 = (0..cols).map(|c| w[r * cols + c] * x[t * cols + c]).sum();
                    let got = y[t * rows + r];
                    // Rounding bound: half a weight step times |x|, plus
                    // half an activation step times |w|, per element.
                    let bound: f32 = (0..cols)
                        .map(|c| {
                            x[t * cols + c].abs() * (0.5 / 127.0) / 2.0
                                + w[r * cols + c].abs() * (5.0 / 32767.0) / 2.0
                        })
                        .sum::<f32>()
                        + 1e-4;
                    assert!(
                        (exact - got).abs() <= bound,
                        "t{t} r{r}: {exact} vs {got}, bound {bound}"
                    );
                    let mut acc = [0f32; 4];
                    let nb = cols / BLOCK;
                    dot_scalar(
                        &m.quants[r * cols..(r + 1) * cols],
                        &m.scales[r * nb..(r + 1) * nb],
                        &a,
                        t,
                        1,
                        &mut acc,
                    );
                    assert!(
                        (acc[0] - got).abs() <= 1e-3 * (1.0 + got.abs()),
                        "{} vs {got}",
                        acc[0]
                    );
                }
            }
        }
    }

    #[test]
    fn a_token_gets_the_same_bits_alone_or_in_a_batch() {
        let mut seed = 9;
        let (rows, cols, tokens) = (41, 128, 7);
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
        let m = Q8Matrix::from_f32(&w, rows, cols);
        let x: Vec<f32> = (0..tokens * cols).map(|_| lcg(&mut seed)).collect();
        let mut a = Activations::default();
        a.quantize(&x, cols);
        let mut batch = vec![0f32; tokens * rows];
        matmul(&m, &a, &mut batch, None);
        for t in 0..tokens {
            a.quantize(&x[t * cols..(t + 1) * cols], cols);
            let mut alone = vec![0f32; rows];
            matmul(&m, &a, &mut alone, None);
            assert_eq!(alone, batch[t * rows..(t + 1) * rows], "token {t}");
        }
    }

    #[test]
    fn rows_round_trip_and_stack() {
        let w: Vec<f32> = (0..64).map(|i| i as f32 / 10.0 - 3.0).collect();
        let m = Q8Matrix::from_f32(&w, 2, 32);
        let mut row = vec![0f32; 32];
        m.row(1, &mut row);
        for (a, b) in row.iter().zip(&w[32..]) {
            assert!((a - b).abs() < 0.02);
        }
        let s = Q8Matrix::stack(&[m.clone(), m]);
        assert_eq!(s.rows(), 4);
        s.row(3, &mut row);
        assert!((row[0] - w[32]).abs() < 0.02);
    }
}
pub mod llama;
