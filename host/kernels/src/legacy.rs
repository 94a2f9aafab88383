//! GGUF's 32-value block formats Q4_0 and Q5_0 (ggml's "legacy" quants),
//! held at the file's size and multiplied as they are.
//!
//! * Q4_0: `value = d·(q − 8)`, with `q` in 0..=15 and an f16 `d` per 32
//!   values.
//! * Q5_0: `value = d·(q − 16)`, with `q` in 0..=31 and an f16 `d` per 32
//!   values.
//!
//! A block lines up with an activation block, so each row's block is one
//! exact integer dot product `Σ (q − o)·x`, formed as `Σ q·x − o·Σx` (the
//! activations' `Σx` comes with them, see [`Activations`]), and one fused
//! multiply-add `fma(Σ, d·xs, acc)`. As for the K-quants, each output is
//! two partial sums (even and odd blocks) added at the end, every path
//! does exactly these operations in this order, and a token gets the same
//! bits alone or in a batch.
//!
//! The blocks are regrouped into the panels of sixteen rows the other
//! formats use: per panel and block a record of the sixteen rows' `d`,
//! then their values, Q4_0's in the nibble groups of Q4_K's sub-blocks,
//! Q5_0's in the five planes of Q5_K's. A record is the file's sixteen
//! blocks, byte for byte as many: 4.5 bits per weight for Q4_0 and 5.5
//! for Q5_0, as in the file. Only the column count need be a multiple of
//! 32, not 256.

use crate::kquant::{
    FIVES, NIBBLES, add_halves, dot_i16, f16_to_f32, halves, nibble_at, place_fives, take_fives,
    unpack_fives, unpack_nibbles,
};
use crate::store::{Buf, Image, records};
use crate::{Activations, BLOCK, Isa, PANEL, Panels, TILE, Tile, product};

/// Where a record keeps the sixteen rows' `d` (f16).
const D: usize = 0;

/// Where a record's values start.
const QUANTS: usize = D + 2 * PANEL;

/// One row's block, unpacked.
struct Block {
    d: u16,
    /// 0..=15 (Q4_0) or 0..=31 (Q5_0), in column order.
    q: [u8; BLOCK],
}

/// A matrix of Q4_0 (`FIVE` false) or Q5_0 (`FIVE` true) blocks in
/// panels of [`PANEL`] rows (the last padded with zero rows).
#[derive(Debug, Clone, Default)]
struct Blocks<const FIVE: bool> {
    rows: usize,
    cols: usize,
    /// One record of `Self::RECORD` bytes per panel and block,
    /// panel-major.
    data: Buf<u8>,
}

impl<const FIVE: bool> Blocks<FIVE> {
    /// The format's name, as GGUF spells it.
    const NAME: &'static str = if FIVE { "Q5_0" } else { "Q4_0" };

    /// Bytes of one block in the file: f16 `d`, (Q5_0) four bytes of
    /// fifth bits, sixteen bytes of nibbles.
    const FILE: usize = if FIVE { 22 } else { 18 };

    /// Bytes of one panel's record: sixteen blocks' worth.
    const RECORD: usize = QUANTS + if FIVE { FIVES } else { NIBBLES };

    /// `q`'s offset: the value is `d·(q − OFFSET)`.
    const OFFSET: i32 = if FIVE { 16 } else { 8 };

    /// `OFFSET·Σx` is the activations' `32·Σx` shifted right by this
    /// (exactly: it is a multiple of 32).
    const SHIFT: i32 = if FIVE { 1 } else { 2 };

    /// Reads the file's block, as ggml's `dequantize_row_q4_0` /
    /// `dequantize_row_q5_0` read it: byte `j` of the sixteen holds column
    /// `j` in its low nibble and column `j + 16` in its high; Q5_0's
    /// column `c` has its fifth bit in bit `c` of the little-endian u32
    /// before them.
    fn parse(b: &[u8]) -> Block {
        let (high, qs) = if FIVE {
            (u32::from_le_bytes([b[2], b[3], b[4], b[5]]), &b[6..22])
        } else {
            (0, &b[2..18])
        };
        Block {
            d: u16::from_le_bytes([b[0], b[1]]),
            q: std::array::from_fn(|c| {
                let nibble = (qs[c % 16] >> (4 * (c / 16))) & 0xf;
                nibble | (((high >> c) & 1) as u8) << 4
            }),
        }
    }

    /// The file's bytes ([`Blocks::parse`] inverted).
    fn write(block: &Block, b: &mut [u8]) {
        b[0..2].copy_from_slice(&block.d.to_le_bytes());
        let qs = &mut b[Self::FILE - 16..Self::FILE];
        qs.fill(0);
        let mut high = 0u32;
        for (c, &q) in block.q.iter().enumerate() {
            qs[c % 16] |= (q & 0xf) << (4 * (c / 16));
            high |= ((q >> 4) as u32) << c;
        }
        if FIVE {
            b[2..6].copy_from_slice(&high.to_le_bytes());
        }
    }

    /// Puts a block in row `lane` of a panel's record.
    fn place(block: &Block, rec: &mut [u8], lane: usize) {
        rec[D + 2 * lane..][..2].copy_from_slice(&block.d.to_le_bytes());
        let values = &mut rec[QUANTS..];
        if FIVE {
            place_fives(values, lane, &block.q);
        } else {
            for (c, &q) in block.q.iter().enumerate() {
                let (at, high) = nibble_at(c, lane);
                values[at] |= if high { q << 4 } else { q };
            }
        }
    }

    /// Row `lane` of a panel's record ([`Blocks::place`] inverted).
    fn take(rec: &[u8], lane: usize) -> Block {
        let mut block = Block {
            d: u16::from_le_bytes([rec[D + 2 * lane], rec[D + 2 * lane + 1]]),
            q: [0; BLOCK],
        };
        let values = &rec[QUANTS..];
        if FIVE {
            take_fives(values, lane, &mut block.q);
        } else {
            for (c, q) in block.q.iter_mut().enumerate() {
                let (at, high) = nibble_at(c, lane);
                *q = if high {
                    values[at] >> 4
                } else {
                    values[at] & 0xf
                };
            }
        }
        block
    }

    fn from_file(bytes: &[u8], rows: usize, cols: usize) -> Self {
        let name = Self::NAME;
        assert_eq!(
            cols % BLOCK,
            0,
            "{name}: columns must be a multiple of {BLOCK}"
        );
        let want = rows * cols / BLOCK * Self::FILE;
        assert_eq!(
            bytes.len(),
            want,
            "{name}: {rows}×{cols} takes {want} bytes"
        );
        let nb = cols / BLOCK;
        let mut data = vec![0u8; rows.div_ceil(PANEL) * nb * Self::RECORD];
        for (i, b) in bytes.chunks_exact(Self::FILE).enumerate() {
            let (r, c) = (i / nb, i % nb);
            let rec = &mut data[(r / PANEL * nb + c) * Self::RECORD..][..Self::RECORD];
            Self::place(&Self::parse(b), rec, r % PANEL);
        }
        Blocks {
            rows,
            cols,
            data: data.into(),
        }
    }

    fn to_file(&self) -> Vec<u8> {
        let nb = self.cols / BLOCK;
        let mut out = vec![0u8; self.rows * nb * Self::FILE];
        for (i, b) in out.chunks_exact_mut(Self::FILE).enumerate() {
            let (r, c) = (i / nb, i % nb);
            Self::write(&Self::take(self.record(r / PANEL, c), r % PANEL), b);
        }
        out
    }

    fn stack<'a>(parts: impl Iterator<Item = &'a Self> + Clone) -> Self {
        let cols = parts.clone().next().expect("nothing to stack").cols;
        assert!(
            parts.clone().all(|p| p.cols == cols),
            "column counts differ"
        );
        let bytes: Vec<u8> = parts.clone().flat_map(|p| p.to_file()).collect();
        Self::from_file(&bytes, parts.map(|p| p.rows).sum(), cols)
    }

    fn bytes(&self) -> usize {
        self.data.len()
    }

    fn mapped(
        image: &Image,
        rows: usize,
        cols: usize,
        start: usize,
        len: usize,
    ) -> Result<Self, String> {
        let data = records(
            image,
            (rows, cols),
            BLOCK,
            Self::RECORD,
            (start, len),
            Self::NAME,
        )?;
        Ok(Blocks { rows, cols, data })
    }

    /// Panel `g`'s record for block `c`.
    fn record(&self, g: usize, c: usize) -> &[u8] {
        let nb = self.cols / BLOCK;
        &self.data[(g * nb + c) * Self::RECORD..][..Self::RECORD]
    }

    /// Row `r` as f32: ggml's `(q − OFFSET)·d`.
    fn row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows, "row {r} of {}", self.rows);
        for (c, out) in out[..self.cols].chunks_exact_mut(BLOCK).enumerate() {
            let b = Self::take(self.record(r / PANEL, c), r % PANEL);
            let d = f16_to_f32(b.d);
            for (o, &q) in out.iter_mut().zip(&b.q) {
                *o = (q as i32 - Self::OFFSET) as f32 * d;
            }
        }
    }

    /// Panel `g` times tokens `t..t + k` (see [`Panels::tile`]).
    ///
    /// # Safety
    /// As for [`Panels::tile`].
    unsafe fn tile(
        &self,
        isa: Isa,
        g: usize,
        x: &Activations,
        t: usize,
        k: usize,
        tile: &mut Tile,
    ) {
        let nb = self.cols / BLOCK;
        let panel = &self.data[g * nb * Self::RECORD..(g + 1) * nb * Self::RECORD];
        match isa {
            // SAFETY (both): the caller checked the CPU has this path and
            // the tokens exist.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::blocks::<FIVE>(panel, x, t, k, tile) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::blocks::<FIVE>(panel, x, t, k, tile) },
            _ => scalar::<FIVE>(panel, x, t, k, tile),
        }
    }
}

/// A token's `OFFSET·Σx` over block `b`, exact: from the activations'
/// `32·Σx` per 16 values (`off`, the token's).
///
/// # Safety
/// `off` points to at least `2b + 2` values.
#[inline(always)]
unsafe fn offset<const FIVE: bool>(off: *const i32, b: usize) -> i32 {
    // SAFETY: as the caller guarantees.
    unsafe { (*off.add(2 * b) + *off.add(2 * b + 1)) >> Blocks::<FIVE>::SHIFT }
}

/// The reference every vector path matches bit for bit. Each output is two
/// partial sums, of the even and of the odd blocks, added at the end: per
/// block `b`, `acc[b % 2] = fma(Σ q·x − OFFSET·Σx, d·xs_b, acc[b % 2])`.
fn scalar<const FIVE: bool>(panel: &[u8], x: &Activations, t: usize, k: usize, tile: &mut Tile) {
    let mut acc = [[[0f32; PANEL]; 2]; TILE];
    let mut w = [[0i16; BLOCK]; PANEL];
    for (b, rec) in panel.chunks_exact(Blocks::<FIVE>::RECORD).enumerate() {
        let d = halves(rec, D);
        if FIVE {
            unpack_fives(&rec[QUANTS..], &mut w);
        } else {
            unpack_nibbles(&rec[QUANTS..], &mut w);
        }
        for (i, acc) in acc.iter_mut().enumerate().take(k) {
            let (xq, xs) = x.token(t + i);
            let (off, _) = x.token_sums(t + i);
            // SAFETY: the token has a pair of offsets per block.
            let o = unsafe { offset::<FIVE>(off.as_ptr(), b) };
            let xb = &xq[b * BLOCK..][..BLOCK];
            for (lane, acc) in acc[b % 2].iter_mut().enumerate() {
                let sum = dot_i16(&w[lane], xb) - o;
                *acc = (sum as f32).mul_add(d[lane] * xs[b], *acc);
            }
        }
    }
    add_halves(&acc, k, tile);
}

/// Sixteen rows per instruction with AVX-512 VNNI.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use crate::dpwssd;
    use crate::kquant::avx512::{fives, nibbles};
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX-512 F/BW/VNNI, AVX2 and FMA are present; tokens `t..t + k`
    /// (`k ≤ TILE`) exist in `x`, whose columns are the panel's.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub(super) unsafe fn blocks<const FIVE: bool>(
        panel: &[u8],
        x: &Activations,
        t: usize,
        k: usize,
        tile: &mut Tile,
    ) {
        debug_assert!(k <= TILE);
        // SAFETY (all arms): as the caller guarantees.
        unsafe {
            match k {
                1 => blocks_n::<FIVE, 1>(panel, x, t, tile),
                2 => blocks_n::<FIVE, 2>(panel, x, t, tile),
                3 => blocks_n::<FIVE, 3>(panel, x, t, tile),
                4 => blocks_n::<FIVE, 4>(panel, x, t, tile),
                5 => blocks_n::<FIVE, 5>(panel, x, t, tile),
                6 => blocks_n::<FIVE, 6>(panel, x, t, tile),
                7 => blocks_n::<FIVE, 7>(panel, x, t, tile),
                _ => blocks_n::<FIVE, 8>(panel, x, t, tile),
            }
        }
    }

    /// One panel times `T` tokens. Under four tokens each token's integer
    /// sum is split in two (even and odd column pairs) so that it is not
    /// one chain of dependent instructions; integers add exactly, so the
    /// split changes no bit.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    #[allow(clippy::needless_range_loop)] // one index addresses several arrays
    unsafe fn blocks_n<const FIVE: bool, const T: usize>(
        panel: &[u8],
        x: &Activations,
        t: usize,
        tile: &mut Tile,
    ) {
        let len = Blocks::<FIVE>::RECORD;
        let nb = panel.len() / len;
        debug_assert!(x.cols == nb * BLOCK && t + T <= x.tokens);
        let split = T < 4;
        let xq: [*const i16; T] = std::array::from_fn(|i| x.token(t + i).0.as_ptr());
        let xs: [*const f32; T] = std::array::from_fn(|i| x.token(t + i).1.as_ptr());
        let off: [*const i32; T] = std::array::from_fn(|i| x.token_sums(t + i).0.as_ptr());
        // SAFETY: every record offset is below nb · len and every
        // activation index below nb · 32, the tokens' lengths.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); T]; 2];
            // In pairs, so that which partial sum a block adds to is known when
            // compiling and both stay in registers.
            for first in (0..nb).step_by(2) {
                for (parity, acc) in acc.iter_mut().enumerate() {
                    let b = first + parity;
                    if b == nb {
                        break;
                    }
                    let rec = panel.as_ptr().add(b * len);
                    let d = _mm512_cvtph_ps(_mm256_loadu_si256(rec.add(D).cast()));
                    let mut sums = [[_mm512_setzero_si512(); T]; 2];
                    let add = |l: usize, v| {
                        for i in 0..T {
                            let sum = &mut sums[split as usize * (l % 2)][i];
                            *sum = dpwssd(*sum, v, xq[i].add(b * BLOCK + 2 * l));
                        }
                    };
                    if FIVE {
                        fives(rec.add(QUANTS), add);
                    } else {
                        nibbles(rec.add(QUANTS), add);
                    }
                    for i in 0..T {
                        let sum = if split {
                            _mm512_add_epi32(sums[0][i], sums[1][i])
                        } else {
                            sums[0][i]
                        };
                        let o = _mm512_set1_epi32(offset::<FIVE>(off[i], b));
                        let sum = _mm512_cvtepi32_ps(_mm512_sub_epi32(sum, o));
                        let scale = _mm512_mul_ps(d, _mm512_set1_ps(*xs[i].add(b)));
                        acc[i] = _mm512_fmadd_ps(sum, scale, acc[i]);
                    }
                }
            }
            for i in 0..T {
                _mm512_storeu_ps(tile[i].as_mut_ptr(), _mm512_add_ps(acc[0][i], acc[1][i]));
            }
        }
    }
}

/// Eight rows per instruction with AVX2 (`vpmaddwd`): the same integer
/// sums and float operations as the AVX-512 kernel, on each half panel.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use crate::kquant::PLANE;
    use crate::kquant::avx2::{fives, nibbles};
    use crate::pair;
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2, FMA and F16C are present; tokens `t..t + k` (`k ≤ TILE`)
    /// exist in `x`, whose columns are the panel's.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn blocks<const FIVE: bool>(
        panel: &[u8],
        x: &Activations,
        t: usize,
        k: usize,
        tile: &mut Tile,
    ) {
        let mut i = 0;
        while i < k {
            let n = (k - i).min(4);
            for half in 0..2 {
                // SAFETY (all arms): as the caller guarantees.
                unsafe {
                    match n {
                        1 => half_n::<FIVE, 1>(panel, x, t + i, half, &mut tile[i..]),
                        2 => half_n::<FIVE, 2>(panel, x, t + i, half, &mut tile[i..]),
                        3 => half_n::<FIVE, 3>(panel, x, t + i, half, &mut tile[i..]),
                        _ => half_n::<FIVE, 4>(panel, x, t + i, half, &mut tile[i..]),
                    }
                }
            }
            i += n;
        }
    }

    /// Eight rows (`half` of the panel) times `T` tokens.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // one index addresses several arrays
    unsafe fn half_n<const FIVE: bool, const T: usize>(
        panel: &[u8],
        x: &Activations,
        t: usize,
        half: usize,
        tile: &mut [[f32; PANEL]],
    ) {
        let len = Blocks::<FIVE>::RECORD;
        let nb = panel.len() / len;
        debug_assert!(x.cols == nb * BLOCK && t + T <= x.tokens && T <= tile.len());
        let xq: [*const i16; T] = std::array::from_fn(|i| x.token(t + i).0.as_ptr());
        let xs: [*const f32; T] = std::array::from_fn(|i| x.token(t + i).1.as_ptr());
        let off: [*const i32; T] = std::array::from_fn(|i| x.token_sums(t + i).0.as_ptr());
        // SAFETY: as in the AVX-512 kernel; `half` picks the second half
        // of each plane or group and lanes 8.. of the `d`.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); T]; 2];
            // In pairs, so that which partial sum a block adds to is known when
            // compiling and both stay in registers.
            for first in (0..nb).step_by(2) {
                for (parity, acc) in acc.iter_mut().enumerate() {
                    let b = first + parity;
                    if b == nb {
                        break;
                    }
                    let rec = panel.as_ptr().add(b * len);
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(rec.add(D + 16 * half).cast()));
                    let mut sum = [_mm256_setzero_si256(); T];
                    let add = |l: usize, v| {
                        for i in 0..T {
                            let prod = _mm256_madd_epi16(v, _mm256_set1_epi32(pair(xq[i], b, l)));
                            sum[i] = _mm256_add_epi32(sum[i], prod);
                        }
                    };
                    if FIVE {
                        fives(rec.add(QUANTS + half * PLANE / 2), add);
                    } else {
                        nibbles(rec.add(QUANTS + half * PANEL), add);
                    }
                    for i in 0..T {
                        let o = _mm256_set1_epi32(offset::<FIVE>(off[i], b));
                        let sum = _mm256_cvtepi32_ps(_mm256_sub_epi32(sum[i], o));
                        let scale = _mm256_mul_ps(d, _mm256_set1_ps(*xs[i].add(b)));
                        acc[i] = _mm256_fmadd_ps(sum, scale, acc[i]);
                    }
                }
            }
            for i in 0..T {
                let sum = _mm256_add_ps(acc[0][i], acc[1][i]);
                _mm256_storeu_ps(tile[i].as_mut_ptr().add(8 * half), sum);
            }
        }
    }
}

/// The public types: thin wrappers, one per format, over [`Blocks`].
macro_rules! block_matrix {
    (
        $name:ident, $five:literal, $format:literal, $bits:literal, $block:literal,
        $from:ident, $to:ident
    ) => {
        #[doc = concat!("A matrix in GGUF's ", $format, " format (", $bits, " bits per weight, ")]
        #[doc = concat!("as in the file), in panels of [`PANEL`] rows (the last padded with zero")]
        /// rows).
        #[derive(Debug, Clone, Default)]
        pub struct $name(Blocks<$five>);

        impl $name {
            #[doc = concat!("Takes a row-major `rows × cols` matrix's ", $format, " blocks (the")]
            /// tensor's bytes in a GGUF file) as they are.
            ///
            /// # Panics
            /// If `cols` is not a multiple of 32 or `bytes` is not
            #[doc = concat!("`rows · cols / 32` blocks of ", $block, " bytes.")]
            pub fn $from(bytes: &[u8], rows: usize, cols: usize) -> $name {
                $name(Blocks::from_file(bytes, rows, cols))
            }

            #[doc = concat!("The matrix as GGUF ", $format, " blocks, row-major: the bytes")]
            #[doc = concat!("[`", stringify!($name), "::", stringify!($from), "`] took.")]
            pub fn $to(&self) -> Vec<u8> {
                self.0.to_file()
            }

            /// Stacks matrices with the same column count (fused
            /// projections).
            pub fn stack(parts: &[$name]) -> $name {
                $name(Blocks::stack(parts.iter().map(|p| &p.0)))
            }

            /// Rows.
            pub fn rows(&self) -> usize {
                self.0.rows
            }

            /// Columns.
            pub fn cols(&self) -> usize {
                self.0.cols
            }

            /// Bytes held.
            pub fn bytes(&self) -> usize {
                self.0.bytes()
            }

            /// A matrix whose panels lie in a weight image (see
            /// [`crate::image`]): `len` bytes at `start`, checked against
            /// the shape.
            pub(crate) fn mapped(
                image: &Image,
                rows: usize,
                cols: usize,
                start: usize,
                len: usize,
            ) -> Result<$name, String> {
                Blocks::mapped(image, rows, cols, start, len).map($name)
            }

            /// The panels' bytes, as `mapped` takes them.
            pub(crate) fn raw(&self) -> &[u8] {
                self.0.data.as_bytes()
            }

            /// Row `r` as f32 (embedding lookups), as ggml dequantises it.
            pub fn row(&self, r: usize, out: &mut [f32]) {
                self.0.row(r, out);
            }

            /// `y = x · Wᵀ` on the best instruction set (see
            /// [`crate::matmul`]).
            pub fn matmul(&self, x: &Activations, y: &mut [f32], pool: Option<&rayon::ThreadPool>) {
                self.matmul_on(Isa::detected(), x, y, pool);
            }

            #[doc = concat!("[`", stringify!($name), "::matmul`] on a given instruction set, which")]
            /// the CPU must have (see [`Isa::available`]). Every path
            /// gives the same bits.
            pub fn matmul_on(
                &self,
                isa: Isa,
                x: &Activations,
                y: &mut [f32],
                pool: Option<&rayon::ThreadPool>,
            ) {
                product(isa, &[self], x, y, pool);
            }
        }

        impl Panels for $name {
            fn rows(&self) -> usize {
                self.0.rows
            }

            fn cols(&self) -> usize {
                self.0.cols
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
                // SAFETY: as the caller guarantees.
                unsafe { self.0.tile(isa, g, x, t, k, tile) }
            }
        }
    };
}

block_matrix!(Q4_0Matrix, false, "Q4_0", "4.5", "18", from_q4_0, to_q4_0);
block_matrix!(Q5_0Matrix, true, "Q5_0", "5.5", "22", from_q5_0, to_q5_0);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kquant::random::{
        Cases, Rng, bits, check_batched_equals_alone, check_extremes, check_products, q4_0, q5_0,
    };

    /// ggml's `dequantize_row_q4_0`, written out from the format.
    fn reference_q4_0(bytes: &[u8]) -> Vec<f32> {
        let mut out = Vec::new();
        for b in bytes.chunks_exact(18) {
            let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            let mut y = [0f32; 32];
            for j in 0..16 {
                let x0 = (b[2 + j] & 0x0f) as i16 - 8;
                let x1 = (b[2 + j] >> 4) as i16 - 8;
                y[j] = x0 as f32 * d;
                y[j + 16] = x1 as f32 * d;
            }
            out.extend(y);
        }
        out
    }

    /// ggml's `dequantize_row_q5_0`, written out from the format.
    fn reference_q5_0(bytes: &[u8]) -> Vec<f32> {
        let mut out = Vec::new();
        for b in bytes.chunks_exact(22) {
            let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let mut y = [0f32; 32];
            for j in 0..16 {
                let xh0 = (((qh >> j) << 4) & 0x10) as u8;
                let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
                let x0 = ((b[6 + j] & 0x0f) | xh0) as i32 - 16;
                let x1 = ((b[6 + j] >> 4) | xh1) as i32 - 16;
                y[j] = x0 as f32 * d;
                y[j + 16] = x1 as f32 * d;
            }
            out.extend(y);
        }
        out
    }

    /// Both formats as `Weights`, with their dequantised values.
    fn matrices(rng: &mut Rng, rows: usize, cols: usize) -> Cases {
        let (a, b) = (q4_0(rng, rows, cols), q5_0(rng, rows, cols));
        vec![
            (
                Q4_0Matrix::from_q4_0(&a, rows, cols).into(),
                reference_q4_0(&a),
            ),
            (
                Q5_0Matrix::from_q5_0(&b, rows, cols).into(),
                reference_q5_0(&b),
            ),
        ]
    }

    #[test]
    fn rows_equal_the_gguf_formula_and_the_bytes_come_back() {
        let mut rng = Rng(13);
        for (rows, cols) in [(1usize, 32), (19, 96), (33, 512)] {
            let records = rows.div_ceil(16) * cols / 32 * 16;
            let a = q4_0(&mut rng, rows, cols);
            let m4 = Q4_0Matrix::from_q4_0(&a, rows, cols);
            assert_eq!(m4.to_q4_0(), a, "Q4_0 {rows}×{cols}");
            assert_eq!(m4.bytes(), records * 18, "the file's size, padding aside");
            let b = q5_0(&mut rng, rows, cols);
            let m5 = Q5_0Matrix::from_q5_0(&b, rows, cols);
            assert_eq!(m5.to_q5_0(), b, "Q5_0 {rows}×{cols}");
            assert_eq!(m5.bytes(), records * 22, "the file's size, padding aside");
            let mut row = vec![0f32; cols];
            for (w, expected) in [
                (crate::Weights::from(m4), reference_q4_0(&a)),
                (m5.into(), reference_q5_0(&b)),
            ] {
                for r in 0..rows {
                    w.row(r, &mut row);
                    let want = &expected[r * cols..(r + 1) * cols];
                    assert_eq!(bits(&row), bits(want), "{} row {r}", w.format());
                }
            }
        }
    }

    #[test]
    fn products_match_f32_and_every_path_gives_the_same_bits() {
        // Odd row counts pad the last panel; an odd number of blocks
        // leaves the odd partial sum one block short.
        let shapes = [(1, 32), (17, 96), (45, 256), (70, 1024)];
        check_products(&mut Rng(17), &shapes, matrices);
    }

    #[test]
    fn a_token_gets_the_same_bits_alone_or_in_a_batch() {
        let mut rng = Rng(19);
        let cases = matrices(&mut rng, 37, 160);
        check_batched_equals_alone(&mut rng, cases, 160);
    }

    /// The largest sums of each sign (`q − o` at both ends, `d = 1`,
    /// full-scale activations) stay exact on every path.
    #[test]
    fn extreme_blocks_stay_exact() {
        let (rows, cols) = (16, 64);
        let one = 0x3c00u16.to_le_bytes();
        let mut cases = Cases::new();
        for fill in [0x00, 0xff] {
            // q = 0 (−8, −16) or q = 15, 31 (7, 15) everywhere.
            let mut a = [fill; 18];
            a[..2].copy_from_slice(&one);
            let a = a.repeat(rows * cols / 32);
            cases.push((
                Q4_0Matrix::from_q4_0(&a, rows, cols).into(),
                reference_q4_0(&a),
            ));
            let mut b = [fill; 22];
            b[..2].copy_from_slice(&one);
            let b = b.repeat(rows * cols / 32);
            cases.push((
                Q5_0Matrix::from_q5_0(&b, rows, cols).into(),
                reference_q5_0(&b),
            ));
        }
        check_extremes(cases, rows, cols);
    }

    #[test]
    fn stacks_cross_panels_bit_for_bit() {
        let mut rng = Rng(23);
        let cols = 96;
        let (a, b) = (q5_0(&mut rng, 17, cols), q5_0(&mut rng, 6, cols));
        let parts = [
            Q5_0Matrix::from_q5_0(&a, 17, cols),
            Q5_0Matrix::from_q5_0(&b, 6, cols),
        ];
        let s = Q5_0Matrix::stack(&parts);
        assert_eq!((s.rows(), s.cols()), (23, cols));
        assert_eq!(s.to_q5_0(), [a, b].concat());
        let (a, b) = (q4_0(&mut rng, 3, cols), q4_0(&mut rng, 16, cols));
        let parts = [
            Q4_0Matrix::from_q4_0(&a, 3, cols),
            Q4_0Matrix::from_q4_0(&b, 16, cols),
        ];
        assert_eq!(Q4_0Matrix::stack(&parts).to_q4_0(), [a, b].concat());
    }
}
