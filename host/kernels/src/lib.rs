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
//! Weights are laid out in panels of sixteen rows so that one instruction
//! (`vpdpwssd` with AVX-512 VNNI, `vpmaddwd` with AVX2) multiplies a pair
//! of activations with sixteen (or eight) rows, and each widened weight
//! vector serves up to eight tokens of a batch. Products split the panels
//! across a rayon pool.
//!
//! GGUF's K-quant formats Q4_K, Q5_K and Q6_K and its 32-value block
//! formats Q4_0 and Q5_0 are held as they are, in the same panels (see
//! [`Q4KMatrix`], [`Q5KMatrix`], [`Q6KMatrix`], [`Q4_0Matrix`],
//! [`Q5_0Matrix`]), and [`Weights`] holds any of them for the forward
//! pass.

#![deny(missing_docs)]

pub mod image;
mod kquant;
mod legacy;
pub mod sampling;
mod store;
mod weights;

pub use kquant::{Q4KMatrix, Q5KMatrix, Q6KMatrix, SUPER_BLOCK};
pub use legacy::{Q4_0Matrix, Q5_0Matrix};
pub use store::Image;
pub use weights::Weights;

use store::Buf;

/// Values per quantisation block.
pub const BLOCK: usize = 32;

/// Rows per panel: weights are stored sixteen rows at a time, interleaved
/// so that one vector holds the same two columns of all sixteen rows.
pub const PANEL: usize = 16;

/// Quantised values of one panel and block (16 rows × 32 columns).
const PANEL_BLOCK: usize = PANEL * BLOCK;

/// A matrix of 8-bit weights with a scale per 32 values of a row.
///
/// Stored in panels of [`PANEL`] rows (the last padded with zero rows):
/// for each panel and block of 32 columns, sixteen column pairs, each the
/// sixteen rows' two values. A product then multiplies a pair of
/// activations, broadcast, with sixteen rows at once and sums each row's
/// block exactly in 32-bit integers; the float work (one scale product and
/// one fused multiply-add per block) is done for sixteen rows per
/// instruction instead of one.
#[derive(Debug, Clone, Default)]
pub struct Q8Matrix {
    rows: usize,
    cols: usize,
    quants: Buf<i8>,
    /// For each panel and block, the sixteen rows' scales.
    scales: Buf<f32>,
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
        Q8Matrix::from_rows(&quants, &scales, rows, cols)
    }

    /// Takes Q8_0 blocks as they are (row-major scales, one per block, and
    /// quants): no re-rounding, so a Q8_0 file runs exactly its own weights.
    pub fn from_q8_0(scales: Vec<f32>, quants: Vec<i8>, rows: usize, cols: usize) -> Q8Matrix {
        assert_eq!(quants.len(), rows * cols, "matrix shape");
        assert_eq!(cols % BLOCK, 0, "columns must be a multiple of {BLOCK}");
        assert_eq!(scales.len() * BLOCK, quants.len(), "one scale per block");
        Q8Matrix::from_rows(&quants, &scales, rows, cols)
    }

    /// Lays row-major blocks out in panels.
    fn from_rows(quants: &[i8], scales: &[f32], rows: usize, cols: usize) -> Q8Matrix {
        let nb = cols / BLOCK;
        let panels = rows.div_ceil(PANEL);
        let mut q = vec![0i8; panels * nb * PANEL_BLOCK];
        let mut s = vec![0f32; panels * nb * PANEL];
        for r in 0..rows {
            let (panel, lane) = (r / PANEL, r % PANEL);
            for b in 0..nb {
                let at = panel * nb + b;
                s[at * PANEL + lane] = scales[r * nb + b];
                let src = &quants[r * cols + b * BLOCK..][..BLOCK];
                let dst = &mut q[at * PANEL_BLOCK..][..PANEL_BLOCK];
                for (p, pair) in src.chunks_exact(2).enumerate() {
                    dst[p * 2 * PANEL + lane * 2..][..2].copy_from_slice(pair);
                }
            }
        }
        Q8Matrix {
            rows,
            cols,
            quants: q.into(),
            scales: s.into(),
        }
    }

    /// Row `r`'s quantised values and block scales, row-major.
    fn row_blocks(&self, r: usize, quants: &mut [i8], scales: &mut [f32]) {
        let nb = self.cols / BLOCK;
        let (panel, lane) = (r / PANEL, r % PANEL);
        for b in 0..nb {
            let at = panel * nb + b;
            scales[b] = self.scales[at * PANEL + lane];
            let src = &self.quants[at * PANEL_BLOCK..][..PANEL_BLOCK];
            for (p, pair) in quants[b * BLOCK..][..BLOCK].chunks_exact_mut(2).enumerate() {
                pair.copy_from_slice(&src[p * 2 * PANEL + lane * 2..][..2]);
            }
        }
    }

    /// Stacks matrices with the same column count (fused projections).
    pub fn stack(parts: &[Q8Matrix]) -> Q8Matrix {
        let cols = parts[0].cols;
        assert!(parts.iter().all(|p| p.cols == cols), "column counts differ");
        let rows: usize = parts.iter().map(|p| p.rows).sum();
        let nb = cols / BLOCK;
        let mut quants = vec![0i8; rows * cols];
        let mut scales = vec![0f32; rows * nb];
        let mut r = 0;
        for part in parts {
            for pr in 0..part.rows {
                part.row_blocks(
                    pr,
                    &mut quants[r * cols..(r + 1) * cols],
                    &mut scales[r * nb..(r + 1) * nb],
                );
                r += 1;
            }
        }
        Q8Matrix::from_rows(&quants, &scales, rows, cols)
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

    /// A matrix whose panels lie in a weight image (see [`image`]): the
    /// quantised values' and the scales' (start, length) in bytes,
    /// checked against the shape.
    pub(crate) fn mapped(
        image: &Image,
        rows: usize,
        cols: usize,
        quants: (usize, usize),
        scales: (usize, usize),
    ) -> Result<Q8Matrix, String> {
        Ok(Q8Matrix {
            rows,
            cols,
            quants: store::records(image, (rows, cols), BLOCK, PANEL_BLOCK, quants, "Q8_0")?,
            scales: store::records(image, (rows, cols), BLOCK, PANEL, scales, "Q8_0 scales")?,
        })
    }

    /// The quantised values' and the scales' bytes, as
    /// [`Q8Matrix::mapped`] takes them.
    pub(crate) fn raw(&self) -> (&[u8], &[u8]) {
        (self.quants.as_bytes(), self.scales.as_bytes())
    }

    /// Panel `g`'s quantised values and scales.
    fn panel(&self, g: usize) -> (&[i8], &[f32]) {
        let nb = self.cols / BLOCK;
        (
            &self.quants[g * nb * PANEL_BLOCK..(g + 1) * nb * PANEL_BLOCK],
            &self.scales[g * nb * PANEL..(g + 1) * nb * PANEL],
        )
    }

    /// Row `r` as f32 (embedding lookups).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let nb = self.cols / BLOCK;
        let (panel, lane) = (r / PANEL, r % PANEL);
        for (b, out) in out.chunks_exact_mut(BLOCK).enumerate().take(nb) {
            let at = panel * nb + b;
            let s = self.scales[at * PANEL + lane];
            let q = &self.quants[at * PANEL_BLOCK..][..PANEL_BLOCK];
            for (p, o) in out.chunks_exact_mut(2).enumerate() {
                o[0] = q[p * 2 * PANEL + lane * 2] as f32 * s;
                o[1] = q[p * 2 * PANEL + lane * 2 + 1] as f32 * s;
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
    /// 32 times the sum of each 16 quantised values: Q6_K stores `q + 32`
    /// with `q` in −32..=31, and `Σ (q + 32)·x − 32·Σx` removes the offset
    /// once per token and 16 columns instead of once per weight (Q4_0 and
    /// Q5_0 take `8·Σx` and `16·Σx` per block from two of these).
    offsets: Vec<i32>,
    /// Each block's scale times the sum of its 32 quantised values: the
    /// `− dmin·m` term of Q4_K and Q5_K multiplies it.
    scaled_sums: Vec<f32>,
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

    /// Token `t`'s Q6_K offsets per 16 values and scaled sums per block.
    fn token_sums(&self, t: usize) -> (&[i32], &[f32]) {
        let nb = self.cols / BLOCK;
        (
            &self.offsets[t * 2 * nb..(t + 1) * 2 * nb],
            &self.scaled_sums[t * nb..(t + 1) * nb],
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
        self.offsets.resize(x.len() / (BLOCK / 2), 0);
        self.scaled_sums.resize(x.len() / BLOCK, 0.0);
        for ((((block, q), s), offsets), scaled) in x
            .chunks_exact(BLOCK)
            .zip(self.quants.chunks_exact_mut(BLOCK))
            .zip(self.scales.iter_mut())
            .zip(self.offsets.chunks_exact_mut(2))
            .zip(self.scaled_sums.iter_mut())
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
            let [a, b] = [0, 1].map(|h| q[h * 16..][..16].iter().map(|&v| v as i32).sum::<i32>());
            offsets.copy_from_slice(&[a << 5, b << 5]);
            // Exact: |Σ| ≤ 32 · 32767 < 2²⁴.
            *scaled = scale * (a + b) as f32;
        }
    }
}

/// The instruction sets the products can use, best last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust.
    Scalar,
    /// AVX2 and FMA: eight rows per instruction.
    Avx2,
    /// AVX-512 with VNNI (`vpdpwssd`): sixteen rows per instruction.
    Avx512,
}

impl Isa {
    /// The best this CPU has, capped by `HEARTH_CPU_ISA` (`scalar`, `avx2`
    /// or `avx512`) so a benchmark can measure a lesser path on the same
    /// machine. Every path gives the same bits.
    pub fn detected() -> Isa {
        use std::sync::OnceLock;
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let best = Isa::available().into_iter().max().unwrap_or(Isa::Scalar);
            let cap = match std::env::var("HEARTH_CPU_ISA").as_deref() {
                Ok("scalar") => Isa::Scalar,
                Ok("avx2") => Isa::Avx2,
                _ => Isa::Avx512,
            };
            best.min(cap)
        })
    }

    /// Every path this CPU can run.
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|isa| isa.supported())
            .collect()
    }

    /// Whether this CPU can run the path (checked once; the products ask
    /// on every call).
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                use std::sync::OnceLock;
                static HAS: OnceLock<bool> = OnceLock::new();
                *HAS.get_or_init(|| {
                    avx2()
                        && is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512vnni")
                })
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// `y = x · Wᵀ` for every token: `y` is `tokens × w.rows()`, row-major.
/// Panels of rows are split across `pool` when given.
///
/// Each output is `Σ_b float(q_b) · (ws_b · xs_b)` summed over the blocks
/// in order with one fused multiply-add each, where `q_b` is the block's
/// exact integer dot product: the same bits on every instruction set, for
/// any number of tokens and any split over threads, so a sequence's
/// logits do not depend on what it was batched with.
pub fn matmul(w: &Q8Matrix, x: &Activations, y: &mut [f32], pool: Option<&rayon::ThreadPool>) {
    matmul_on(Isa::detected(), w, x, y, pool);
}

/// [`matmul`] on a given instruction set, which the CPU must have (see
/// [`Isa::available`]).
pub fn matmul_on(
    isa: Isa,
    w: &Q8Matrix,
    x: &Activations,
    y: &mut [f32],
    pool: Option<&rayon::ThreadPool>,
) {
    product(isa, &[w], x, y, pool);
}

/// A matrix stored in panels of [`PANEL`] rows, which [`product`] runs.
pub(crate) trait Panels: Sync {
    /// Rows.
    fn rows(&self) -> usize;
    /// Columns.
    fn cols(&self) -> usize;
    /// Panel `g` times tokens `t..t + k` into `tile[..k]`.
    ///
    /// # Safety
    /// `isa` is available; `g` is one of this matrix's panels; `x` has
    /// this matrix's column count and the tokens `t..t + k`; `k ≤ TILE`.
    unsafe fn tile(&self, isa: Isa, g: usize, x: &Activations, t: usize, k: usize, tile: &mut Tile);
}

impl Panels for Q8Matrix {
    fn rows(&self) -> usize {
        self.rows
    }

    fn cols(&self) -> usize {
        self.cols
    }

    unsafe fn tile(
        &self,
        isa: Isa,
        g: usize,
        x: &Activations,
        t: usize,
        k: usize,
        tile: &mut Tile,
    ) {
        let (wq, ws) = self.panel(g);
        match isa {
            // SAFETY: the caller checked the CPU has this path.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { panel_avx512(wq, ws, x, t, k, tile) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { panel_avx2(wq, ws, x, t, k, tile) },
            _ => panel_scalar(wq, ws, x, t, k, tile),
        }
    }
}

/// `y = x · Wᵀ` where `W` is `parts` stacked (each part's outputs are a
/// range of `y`'s columns): the driver behind every product. Panels of
/// all the parts are split across `pool` together.
pub(crate) fn product(
    isa: Isa,
    parts: &[&dyn Panels],
    x: &Activations,
    y: &mut [f32],
    pool: Option<&rayon::ThreadPool>,
) {
    assert!(parts.iter().all(|p| p.cols() == x.cols), "inner dimensions");
    let rows: usize = parts.iter().map(|p| p.rows()).sum();
    assert_eq!(y.len(), x.tokens * rows, "output shape");
    assert!(isa.supported(), "{isa:?} is not available");
    let out = SharedOut(y.as_mut_ptr());
    let run = |part: usize, first: usize, panels: std::ops::Range<usize>| {
        // SAFETY: each task writes only the output columns of its own
        // panels, and `y` outlives the pool's scope.
        unsafe { panels_times(isa, parts[part], first, rows, x, panels, &out) }
    };
    let total: usize = parts.iter().map(|p| p.rows().div_ceil(PANEL)).sum();
    match pool {
        Some(pool) if pool.current_num_threads() > 1 && total >= 4 => {
            // Several tasks per thread, so a thread slowed by other work on
            // a shared machine does not hold the whole product back.
            let tasks = pool.current_num_threads() * 4;
            let per = total.div_ceil(tasks);
            pool.scope(|s| {
                let mut first = 0;
                for (i, part) in parts.iter().enumerate() {
                    let panels = part.rows().div_ceil(PANEL);
                    let mut start = 0;
                    while start < panels {
                        let end = (start + per).min(panels);
                        let run = &run;
                        s.spawn(move |_| run(i, first, start..end));
                        start = end;
                    }
                    first += part.rows();
                }
            });
        }
        _ => {
            let mut first = 0;
            for (i, part) in parts.iter().enumerate() {
                run(i, first, 0..part.rows().div_ceil(PANEL));
                first += part.rows();
            }
        }
    }
}

struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements (see `product`).
unsafe impl Sync for SharedOut {}

/// Tokens per tile: each widened weight vector serves this many.
pub(crate) const TILE: usize = 8;

/// One tile's results: `[token][row of the panel]`.
pub(crate) type Tile = [[f32; PANEL]; TILE];

/// Panels `panels` of `w` times every token, written to columns `first +
/// row` of `out`'s rows of `stride` floats.
///
/// # Safety
/// `out` points to a `x.tokens × stride` buffer with `first + w.rows() ≤
/// stride`; no other thread writes the columns of `panels`' rows; `isa` is
/// available.
unsafe fn panels_times(
    isa: Isa,
    w: &dyn Panels,
    first: usize,
    stride: usize,
    x: &Activations,
    panels: std::ops::Range<usize>,
    out: &SharedOut,
) {
    let mut tile: Tile = [[0.0; PANEL]; TILE];
    for g in panels {
        let valid = (w.rows() - g * PANEL).min(PANEL);
        let mut t = 0;
        while t < x.tokens {
            let k = (x.tokens - t).min(TILE);
            // SAFETY: the caller checked the path; the rest by the loops.
            unsafe { w.tile(isa, g, x, t, k, &mut tile) };
            for (i, row) in tile[..k].iter().enumerate() {
                // SAFETY: in bounds by the shape check; these columns
                // belong to this task alone.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        row.as_ptr(),
                        out.0.add((t + i) * stride + first + g * PANEL),
                        valid,
                    );
                }
            }
            t += k;
        }
    }
}

/// The reference every vector path matches bit for bit.
fn panel_scalar(wq: &[i8], ws: &[f32], x: &Activations, t: usize, k: usize, tile: &mut Tile) {
    let nb = ws.len() / PANEL;
    for (i, out) in tile.iter_mut().enumerate().take(k) {
        let (xq, xs) = x.token(t + i);
        for (lane, out) in out.iter_mut().enumerate() {
            let mut acc = 0f32;
            for b in 0..nb {
                let q = &wq[b * PANEL_BLOCK..][..PANEL_BLOCK];
                let xb = &xq[b * BLOCK..][..BLOCK];
                let mut sum = 0i32;
                for p in 0..BLOCK / 2 {
                    for e in 0..2 {
                        sum += q[p * 2 * PANEL + lane * 2 + e] as i32 * xb[2 * p + e] as i32;
                    }
                }
                acc = (sum as f32).mul_add(ws[b * PANEL + lane] * xs[b], acc);
            }
            *out = acc;
        }
    }
}

/// Whether this CPU has AVX2, FMA and F16C (checked once). F16C widens
/// the K-quant formats' f16 scales; every CPU with AVX2 and FMA has it,
/// so asking costs no machine the AVX2 path.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// Columns `2p, 2p+1` of a token's block `b`, as one 32-bit value.
///
/// # Safety
/// `xq` points to a token's quants with at least `b * 32 + 2p + 2` values.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn pair(xq: *const i16, b: usize, p: usize) -> i32 {
    // SAFETY: in bounds (caller); unaligned reads are allowed.
    unsafe { (xq.add(b * BLOCK + 2 * p) as *const i32).read_unaligned() }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
unsafe fn panel_avx512(
    wq: &[i8],
    ws: &[f32],
    x: &Activations,
    t: usize,
    k: usize,
    tile: &mut Tile,
) {
    // SAFETY (all arms): same features; k ≤ TILE tokens from t exist.
    unsafe {
        match k {
            1 => panel_avx512_n::<1>(wq, ws, x, t, tile),
            2 => panel_avx512_n::<2>(wq, ws, x, t, tile),
            3 => panel_avx512_n::<3>(wq, ws, x, t, tile),
            4 => panel_avx512_n::<4>(wq, ws, x, t, tile),
            5 => panel_avx512_n::<5>(wq, ws, x, t, tile),
            6 => panel_avx512_n::<6>(wq, ws, x, t, tile),
            7 => panel_avx512_n::<7>(wq, ws, x, t, tile),
            _ => panel_avx512_n::<8>(wq, ws, x, t, tile),
        }
    }
}

/// One panel (sixteen rows, one per 32-bit lane) times `T` tokens with
/// `vpdpwssd`. Each token's block sum is split over two accumulators (even
/// and odd column pairs) so that a lone decoding token is not one long
/// chain of dependent instructions; integers add exactly, so the split
/// does not change a bit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
#[allow(clippy::needless_range_loop)] // one index addresses several arrays
unsafe fn panel_avx512_n<const T: usize>(
    wq: &[i8],
    ws: &[f32],
    x: &Activations,
    t: usize,
    tile: &mut Tile,
) {
    use std::arch::x86_64::*;
    let nb = ws.len() / PANEL;
    debug_assert!(wq.len() == nb * PANEL_BLOCK && x.cols == nb * BLOCK && t + T <= x.tokens);
    let xq: [*const i16; T] = std::array::from_fn(|i| x.token(t + i).0.as_ptr());
    let xs: [*const f32; T] = std::array::from_fn(|i| x.token(t + i).1.as_ptr());
    // SAFETY: every block index is below nb and every pair below 16, so
    // every read is inside the panel and the tokens' rows.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let wb = wq.as_ptr().add(b * PANEL_BLOCK);
            let mut even = [_mm512_setzero_si512(); T];
            let mut odd = [_mm512_setzero_si512(); T];
            for p in (0..BLOCK / 2).step_by(2) {
                let w0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(wb.add(p * 2 * PANEL).cast()));
                let w1 =
                    _mm512_cvtepi8_epi16(_mm256_loadu_si256(wb.add((p + 1) * 2 * PANEL).cast()));
                for i in 0..T {
                    even[i] = dpwssd(even[i], w0, xq[i].add(b * BLOCK + 2 * p));
                    odd[i] = dpwssd(odd[i], w1, xq[i].add(b * BLOCK + 2 * p + 2));
                }
            }
            let scales = _mm512_loadu_ps(ws.as_ptr().add(b * PANEL));
            for i in 0..T {
                let sum = _mm512_cvtepi32_ps(_mm512_add_epi32(even[i], odd[i]));
                let s = _mm512_mul_ps(scales, _mm512_set1_ps(*xs[i].add(b)));
                acc[i] = _mm512_fmadd_ps(sum, s, acc[i]);
            }
        }
        for i in 0..T {
            _mm512_storeu_ps(tile[i].as_mut_ptr(), acc[i]);
        }
    }
}

/// `acc + w · broadcast(pair at x)` in one `vpdpwssd`. Written out because
/// LLVM otherwise splits the instruction into `vpmaddwd` and `vpaddd` for
/// generic x86-64 tuning, which halves the rate on CPUs where it is fast.
///
/// # Safety
/// AVX-512 VNNI is present; `x` points to two readable i16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
pub(crate) unsafe fn dpwssd(
    acc: std::arch::x86_64::__m512i,
    w: std::arch::x86_64::__m512i,
    x: *const i16,
) -> std::arch::x86_64::__m512i {
    let mut acc = acc;
    // SAFETY: the caller guarantees the feature and the read.
    unsafe {
        std::arch::asm!(
            "vpdpwssd {acc}, {w}, dword ptr [{x}]{{1to16}}",
            acc = inout(zmm_reg) acc,
            w = in(zmm_reg) w,
            x = in(reg) x,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    acc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn panel_avx2(wq: &[i8], ws: &[f32], x: &Activations, t: usize, k: usize, tile: &mut Tile) {
    let mut i = 0;
    while i < k {
        let n = (k - i).min(4);
        for half in 0..2 {
            // SAFETY (all arms): same features; n tokens from t + i exist.
            unsafe {
                match n {
                    1 => half_panel_avx2::<1>(wq, ws, x, t, i, half, tile),
                    2 => half_panel_avx2::<2>(wq, ws, x, t, i, half, tile),
                    3 => half_panel_avx2::<3>(wq, ws, x, t, i, half, tile),
                    _ => half_panel_avx2::<4>(wq, ws, x, t, i, half, tile),
                }
            }
        }
        i += n;
    }
}

/// Eight rows of a panel (one per lane) times `T` tokens with `vpmaddwd`:
/// the same integer sums and the same float operations as
/// [`panel_avx512_n`], eight rows at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)] // one index addresses several arrays
unsafe fn half_panel_avx2<const T: usize>(
    wq: &[i8],
    ws: &[f32],
    x: &Activations,
    t: usize,
    i0: usize,
    half: usize,
    tile: &mut Tile,
) {
    use std::arch::x86_64::*;
    let nb = ws.len() / PANEL;
    debug_assert!(wq.len() == nb * PANEL_BLOCK && x.cols == nb * BLOCK && t + i0 + T <= x.tokens);
    let xq: [*const i16; T] = std::array::from_fn(|i| x.token(t + i0 + i).0.as_ptr());
    let xs: [*const f32; T] = std::array::from_fn(|i| x.token(t + i0 + i).1.as_ptr());
    // SAFETY: as in panel_avx512_n; `half` picks bytes 16·half.. of each
    // 32-byte column pair, inside the panel.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); T];
        for b in 0..nb {
            let wb = wq.as_ptr().add(b * PANEL_BLOCK + half * PANEL);
            let mut sum = [_mm256_setzero_si256(); T];
            for p in 0..BLOCK / 2 {
                let w = _mm256_cvtepi8_epi16(_mm_loadu_si128(wb.add(p * 2 * PANEL).cast()));
                for i in 0..T {
                    let prod = _mm256_madd_epi16(w, _mm256_set1_epi32(pair(xq[i], b, p)));
                    sum[i] = _mm256_add_epi32(sum[i], prod);
                }
            }
            let scales = _mm256_loadu_ps(ws.as_ptr().add(b * PANEL + half * 8));
            for i in 0..T {
                let s = _mm256_mul_ps(scales, _mm256_set1_ps(*xs[i].add(b)));
                acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[i]), s, acc[i]);
            }
        }
        for i in 0..T {
            _mm256_storeu_ps(tile[i0 + i].as_mut_ptr().add(half * 8), acc[i]);
        }
    }
}

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
    fn quantised_product_matches_f32_on_every_instruction_set() {
        let mut seed = 1;
        // 201 rows: the last panel is padded.
        let (rows, cols) = (201, 96);
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
        let m = Q8Matrix::from_f32(&w, rows, cols);
        for tokens in [1, 3, 4, 7, 8, 13] {
            let x: Vec<f32> = (0..tokens * cols).map(|_| lcg(&mut seed) * 10.0).collect();
            let mut a = Activations::default();
            a.quantize(&x, cols);
            let mut y = vec![0f32; tokens * rows];
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            matmul(&m, &a, &mut y, Some(&pool));
            // Every instruction set gives the same bits, threaded or not.
            for isa in Isa::available() {
                let mut other = vec![0f32; tokens * rows];
                matmul_on(isa, &m, &a, &mut other, None);
                assert_eq!(other, y, "{isa:?}, {tokens} tokens");
            }
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
        // Stacking crosses panel boundaries: 17 + 2 rows.
        let tall: Vec<f32> = (0..17 * 32).map(|i| (i % 97) as f32 / 7.0 - 6.0).collect();
        let t = Q8Matrix::from_f32(&tall, 17, 32);
        let s = Q8Matrix::stack(&[t.clone(), s.clone()]);
        assert_eq!(s.rows(), 21);
        let (mut a, mut b) = (vec![0f32; 32], vec![0f32; 32]);
        for r in 0..17 {
            t.row(r, &mut a);
            s.row(r, &mut b);
            assert_eq!(a, b, "row {r}");
        }
        s.row(20, &mut b);
        for (a, b) in b.iter().zip(&w[32..]) {
            assert!((a - b).abs() < 0.02);
        }
    }
}
pub mod llama;
