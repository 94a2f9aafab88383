//! GGUF's K-quant formats Q4_K, Q5_K and Q6_K, held at the file's size
//! and multiplied as they are (no detour through f32 and 8 bits).
//!
//! All three group a row in super-blocks of 256 values:
//!
//! * Q4_K: `value = d·sc·q − dmin·m`, with `q` in 0..=15, `d` and `dmin`
//!   f16 per super-block and a 6-bit `sc` and `m` per 32 values.
//! * Q5_K: the same with `q` in 0..=31 (a fifth bit beside each nibble).
//! * Q6_K: `value = d·sc·(q − 32)`, with `q` in 0..=63, `d` f16 per
//!   super-block and an i8 `sc` per 16 values.
//!
//! The file stores each row's blocks in a layout made for llama.cpp's
//! kernels; here they are regrouped into the panels of sixteen rows that
//! [`crate::Q8Matrix`] uses, so that one `vpdpwssd` multiplies a pair of
//! 16-bit activations with sixteen rows. The bits stay the file's: every
//! field is kept (only the packed 6-bit scales of Q4_K and Q5_K are
//! widened to bytes), and [`Q4KMatrix::to_q4_k`], [`Q5KMatrix::to_q5_k`]
//! and [`Q6KMatrix::to_q6_k`] give the file's bytes back.
//!
//! A Q4_K or Q5_K sub-block of 32 values lines up with an activation
//! block, so its integer dot product `Σ q·x` is exact in i32 and the float
//! work is `fma(Σ q·x, (d·sc)·xs, acc)` then `fma(−(dmin·m), xs·Σx, acc)`
//! per sub-block. Q6_K's `Σ (q − 32)·x` is formed as `Σ q·x − 32·Σx` per
//! 16 values, then `fma(Σ, (d·sc)·xs, acc)`. Each output is two such
//! partial sums (even and odd sub-blocks for Q4_K and Q5_K, first and
//! second 16 columns of each block for Q6_K) added at the end, so that a
//! lone decoding token waits on two short chains of multiply-adds rather
//! than one long one. Every path does exactly these float operations in
//! this order, so all give the same bits, and a token gets the same bits
//! alone or in a batch.
//!
//! Bytes per weight: Q4_K 4.625 (the file's 4.5, its 6-bit scales widened
//! to bytes), Q5_K 5.625 (the file's 5.5, likewise), Q6_K 6.5625 (the
//! file's).

use crate::store::{Buf, Image, records};
use crate::{Activations, BLOCK, Isa, PANEL, Panels, TILE, Tile, product};

/// Values per K-quant super-block: a K-quant matrix's column count is a
/// multiple of this.
pub const SUPER_BLOCK: usize = 256;

/// 32-value sub-blocks per super-block.
const SUBS: usize = SUPER_BLOCK / BLOCK;

/// Bytes of one GGUF Q4_K block: f16 d, f16 dmin, 12 bytes of packed
/// 6-bit scales and mins, 128 bytes of 4-bit quants.
const Q4K_BYTES: usize = 144;

/// Bytes of one GGUF Q6_K block: 128 bytes of low 4 bits, 64 of high 2
/// bits, 16 i8 scales, f16 d.
const Q6K_BYTES: usize = 210;

// One panel's super-block (sixteen rows × 256 columns) is a record: the
// sixteen rows' scales first, then the quants of each 32-column sub-block
// in turn, so that a product reads the record front to back in one stream
// (quants split over two regions of a record ran Q6_K at a third of the
// memory bandwidth, the prefetchers following neither well).
//
// Q4_K's quants: for each sub-block, eight 32-byte groups; group `h`'s
// byte `2·lane + e` holds column `2h + e` of row `lane` in its low nibble
// and column `2(h + 8) + e` in its high nibble. Zero-extended to 16 bits,
// a group is one AND away from the column pair `h` of all sixteen rows
// (the 32 weights one `vpdpwssd` takes) and one shift away from the pair
// `h + 8`. Q5_K's are in [`Q5Words`], Q6_K's in [`Q6kWords`].

/// Bytes of the low nibbles of a sub-block (sixteen rows × 32 columns).
pub(crate) const NIBBLES: usize = PANEL * BLOCK / 2;

/// Q4_K record: the sixteen `d` (f16), the sixteen `dmin` (f16), for each
/// sub-block the sixteen rows' `sc` (a byte each), the same for `m`, then
/// each sub-block's nibbles. 148 bytes per row and super-block against the
/// file's 144: unpacking the 6-bit scales per panel would cost more than
/// the 3% it saves.
const Q4K_D: usize = 0;
const Q4K_DMIN: usize = Q4K_D + 2 * PANEL;
const Q4K_SC: usize = Q4K_DMIN + 2 * PANEL;
const Q4K_MIN: usize = Q4K_SC + SUBS * PANEL;
const Q4K_QUANTS: usize = Q4K_MIN + SUBS * PANEL;
const Q4K_RECORD: usize = Q4K_QUANTS + SUBS * NIBBLES;

/// Q6_K record: the sixteen `d` (f16), the sixteen rows' scales (i8) of
/// each 16 columns, then each sub-block's values: for each half (column
/// pairs `8h..8h + 8`, the columns of one scale) three 64-byte planes of
/// 16-bit words, word `2·lane + e` of each holding column `e` of the eight
/// pairs of row `lane` (see [`Q6kWords`]). 210 bytes per row and
/// super-block, the file's size.
const Q6K_D: usize = 0;
const Q6K_SC: usize = Q6K_D + 2 * PANEL;
const Q6K_QUANTS: usize = Q6K_SC + SUPER_BLOCK / 16 * PANEL;
/// Bytes of one plane: a word per row and column of a pair.
pub(crate) const PLANE: usize = 2 * 2 * PANEL;
/// Bytes of one sub-block's values: two halves of three planes.
const Q6K_SUB: usize = 2 * 3 * PLANE;
const Q6K_RECORD: usize = Q6K_QUANTS + SUBS * Q6K_SUB;

/// The byte of a sub-block's nibbles holding its column `c` of row
/// `lane`, and whether it is the high nibble.
pub(crate) fn nibble_at(c: usize, lane: usize) -> (usize, bool) {
    let (p, e) = (c / 2, c % 2);
    ((p % 8) * 2 * PANEL + lane * 2 + e, p >= 8)
}

/// One row and column position's three words in a Q6_K half sub-block:
/// the 6-bit values `v0..v7` of its eight column pairs, packed so that
/// six come out with one AND or one shift and the other two, split over
/// two words, with two shifts and a bit select (`vpternlogd`):
///
/// ```text
/// w0 = v0 | v6[0..4] << 6 | v1 << 10
/// w1 = v2 | v7[0..4] << 6 | v3 << 10
/// w2 = v4 | v5 << 6 | v7[4..6] << 12 | v6[4..6] << 14
/// ```
#[derive(Clone, Copy, Default)]
struct Q6kWords([u16; 3]);

impl Q6kWords {
    /// Value `l` (0..=63).
    fn get(self, l: usize) -> u8 {
        let [w0, w1, w2] = self.0;
        (match l {
            0 => w0 & 63,
            1 => w0 >> 10,
            2 => w1 & 63,
            3 => w1 >> 10,
            4 => w2 & 63,
            5 => (w2 >> 6) & 63,
            6 => ((w0 >> 6) & 0xf) | ((w2 >> 14) << 4),
            _ => ((w1 >> 6) & 0xf) | (((w2 >> 12) & 3) << 4),
        }) as u8
    }

    /// Sets value `l`, which must be 0 before.
    fn set(&mut self, l: usize, q: u8) {
        let q = q as u16 & 63;
        let w = &mut self.0;
        match l {
            0 => w[0] |= q,
            1 => w[0] |= q << 10,
            2 => w[1] |= q,
            3 => w[1] |= q << 10,
            4 => w[2] |= q,
            5 => w[2] |= q << 6,
            6 => {
                w[0] |= (q & 0xf) << 6;
                w[2] |= (q >> 4) << 14;
            }
            _ => {
                w[1] |= (q & 0xf) << 6;
                w[2] |= (q >> 4) << 12;
            }
        }
    }

    /// Where column `c` of row `lane` lives in a sub-block's values: the
    /// byte offset of its first word (the others follow a plane apart)
    /// and its value's index.
    fn locate(c: usize, lane: usize) -> (usize, usize) {
        let (p, e) = (c / 2, c % 2);
        (p / 8 * 3 * PLANE + (lane * 2 + e) * 2, p % 8)
    }

    fn read(sub: &[u8], at: usize) -> Q6kWords {
        Q6kWords(std::array::from_fn(|i| {
            u16::from_le_bytes([sub[at + i * PLANE], sub[at + i * PLANE + 1]])
        }))
    }

    fn write(self, sub: &mut [u8], at: usize) {
        for (i, w) in self.0.iter().enumerate() {
            sub[at + i * PLANE..][..2].copy_from_slice(&w.to_le_bytes());
        }
    }
}

/// Column `c` of row `lane` in a Q6_K sub-block's values: 0..=63.
fn q6k_value(sub: &[u8], c: usize, lane: usize) -> u8 {
    let (at, l) = Q6kWords::locate(c, lane);
    Q6kWords::read(sub, at).get(l)
}

/// Bytes of one GGUF Q5_K block: the 16 bytes of Q4_K's head (f16 d and
/// dmin, packed 6-bit scales and mins), 32 bytes of fifth bits, 128 bytes
/// of low 4 bits.
const Q5K_BYTES: usize = 176;

/// Bytes of a 5-bit sub-block's values (sixteen rows × 32 columns): five
/// planes of [`Q5Words`], 5 bits a weight.
pub(crate) const FIVES: usize = 5 * PLANE;

/// Q5_K record: Q4_K's head (`Q4K_D`, `Q4K_DMIN`, `Q4K_SC`, `Q4K_MIN`:
/// the same fields at the same places), then each sub-block's values in
/// five planes of [`Q5Words`]. 180 bytes per row and super-block against
/// the file's 176 (the 6-bit scales widened to bytes, as for Q4_K).
const Q5K_QUANTS: usize = Q4K_QUANTS;
const Q5K_RECORD: usize = Q5K_QUANTS + SUBS * FIVES;

/// One row and column position's five words in a 5-bit sub-block (Q5_K's
/// and Q5_0's): the values `v0..v15` (0..=31) of its sixteen column pairs,
/// packed so that fifteen come out with one AND, one shift, or a shift
/// and an AND, and the sixteenth is gathered from the words' spare bits:
///
/// ```text
/// wi = v(3i) | v15[i] << 5 | v(3i + 1) << 6 | v(3i + 2) << 11    (i = 0..5)
/// ```
///
/// Sixteen values in eighty bits: no bit is wasted, so the matrices are
/// the file's size. The file's own layout (four bits in one place, the
/// fifth in another) would cost a shift, a mask and a merge per value;
/// this costs under two operations per column pair, about what Q6_K's
/// [`Q6kWords`] cost.
#[derive(Clone, Copy, Default)]
struct Q5Words([u16; 5]);

impl Q5Words {
    /// The sixteen values (0..=31), in one pass over the words.
    fn values(self) -> [u8; 16] {
        let mut v = [0u8; 16];
        for (i, &w) in self.0.iter().enumerate() {
            v[3 * i] = (w & 31) as u8;
            v[3 * i + 1] = ((w >> 6) & 31) as u8;
            v[3 * i + 2] = (w >> 11) as u8;
            v[15] |= (((w >> 5) & 1) << i) as u8;
        }
        v
    }

    /// Value `l` (0..=31).
    fn get(self, l: usize) -> u8 {
        self.values()[l]
    }

    /// Sets value `l`, which must be 0 before.
    fn set(&mut self, l: usize, q: u8) {
        let q = q as u16 & 31;
        let w = &mut self.0;
        match l {
            15 => (0..5).for_each(|i| w[i] |= ((q >> i) & 1) << 5),
            _ => w[l / 3] |= q << [0, 6, 11][l % 3],
        }
    }

    /// Where column `c` of row `lane` lives in a sub-block's values: the
    /// byte offset of its first word (the others follow a plane apart)
    /// and its value's index.
    fn locate(c: usize, lane: usize) -> (usize, usize) {
        ((lane * 2 + c % 2) * 2, c / 2)
    }

    fn read(sub: &[u8], at: usize) -> Q5Words {
        Q5Words(std::array::from_fn(|i| {
            u16::from_le_bytes([sub[at + i * PLANE], sub[at + i * PLANE + 1]])
        }))
    }

    fn write(self, sub: &mut [u8], at: usize) {
        for (i, w) in self.0.iter().enumerate() {
            sub[at + i * PLANE..][..2].copy_from_slice(&w.to_le_bytes());
        }
    }
}

/// Puts row `lane`'s 32 values (0..=31) in a 5-bit sub-block of
/// [`FIVES`] bytes.
pub(crate) fn place_fives(sub: &mut [u8], lane: usize, q: &[u8]) {
    for (c, &q) in q.iter().enumerate().take(BLOCK) {
        let (at, l) = Q5Words::locate(c, lane);
        let mut words = Q5Words::read(sub, at);
        words.set(l, q);
        words.write(sub, at);
    }
}

/// Row `lane`'s 32 values from a 5-bit sub-block ([`place_fives`]
/// inverted).
pub(crate) fn take_fives(sub: &[u8], lane: usize, q: &mut [u8]) {
    for (c, q) in q.iter_mut().enumerate().take(BLOCK) {
        let (at, l) = Q5Words::locate(c, lane);
        *q = Q5Words::read(sub, at).get(l);
    }
}

/// A 5-bit sub-block's values as sixteen rows of 32 columns (the scalar
/// kernels' input).
pub(crate) fn unpack_fives(sub: &[u8], w: &mut [[i16; BLOCK]; PANEL]) {
    for at in 0..2 * PANEL {
        let values = Q5Words::read(sub, 2 * at).values();
        let (lane, e) = (at / 2, at % 2);
        for (l, &v) in values.iter().enumerate() {
            w[lane][2 * l + e] = v as i16;
        }
    }
}

/// A sub-block's nibbles (laid out as `nibble_at` says) as sixteen rows
/// of 32 columns (the scalar kernels' input).
pub(crate) fn unpack_nibbles(sub: &[u8], w: &mut [[i16; BLOCK]; PANEL]) {
    for (h, group) in sub.chunks_exact(2 * PANEL).enumerate() {
        for (at, &byte) in group.iter().enumerate() {
            let (lane, e) = (at / 2, at % 2);
            w[lane][2 * h + e] = (byte & 0xf) as i16;
            w[lane][2 * h + 16 + e] = (byte >> 4) as i16;
        }
    }
}

/// An f16's value, exactly as `vcvtph2ps` gives it (signalling NaNs come
/// back quiet).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match exp {
        0x1f if man != 0 => sign | 0x7fc0_0000 | (man << 13),
        0x1f => sign | 0x7f80_0000,
        // Subnormal (or zero): man · 2⁻²⁴, exact in f32.
        0 => sign | (man as f32 * (1.0 / 16_777_216.0)).to_bits(),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// The head that Q4_K and Q5_K blocks share, unpacked: f16 `d` and
/// `dmin`, and a 6-bit scale `sc` and min `m` per 32-value sub-block.
#[derive(Clone, Copy)]
struct Head {
    d: u16,
    dmin: u16,
    sc: [u8; SUBS],
    m: [u8; SUBS],
}

impl Head {
    /// Reads a block's first 16 bytes: `d`, `dmin`, then the scales and
    /// mins packed in 12 bytes as ggml's `get_scale_min_k4` reads them.
    fn parse(b: &[u8]) -> Head {
        let s = &b[4..16];
        let mut head = Head {
            d: u16::from_le_bytes([b[0], b[1]]),
            dmin: u16::from_le_bytes([b[2], b[3]]),
            sc: [0; SUBS],
            m: [0; SUBS],
        };
        for j in 0..SUBS {
            (head.sc[j], head.m[j]) = if j < 4 {
                (s[j] & 63, s[j + 4] & 63)
            } else {
                (
                    (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4),
                    (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
                )
            };
        }
        head
    }

    /// The file's 16 bytes ([`Head::parse`] inverted).
    fn write(&self, b: &mut [u8]) {
        b[0..2].copy_from_slice(&self.d.to_le_bytes());
        b[2..4].copy_from_slice(&self.dmin.to_le_bytes());
        let (sc, m) = (&self.sc, &self.m);
        for j in 0..4 {
            b[4 + j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            b[8 + j] = m[j] | ((m[j + 4] >> 4) << 6);
            b[12 + j] = (sc[j + 4] & 0xf) | ((m[j + 4] & 0xf) << 4);
        }
    }

    /// Puts the head in row `lane` of a panel's record (the fields before
    /// `Q4K_QUANTS`, which Q5_K records share).
    fn place(&self, rec: &mut [u8], lane: usize) {
        for j in 0..SUBS {
            rec[Q4K_SC + j * PANEL + lane] = self.sc[j];
            rec[Q4K_MIN + j * PANEL + lane] = self.m[j];
        }
        rec[Q4K_D + 2 * lane..][..2].copy_from_slice(&self.d.to_le_bytes());
        rec[Q4K_DMIN + 2 * lane..][..2].copy_from_slice(&self.dmin.to_le_bytes());
    }

    /// Row `lane`'s head in a panel's record ([`Head::place`] inverted).
    fn take(rec: &[u8], lane: usize) -> Head {
        let half = |at: usize| u16::from_le_bytes([rec[at + 2 * lane], rec[at + 2 * lane + 1]]);
        Head {
            d: half(Q4K_D),
            dmin: half(Q4K_DMIN),
            sc: std::array::from_fn(|j| rec[Q4K_SC + j * PANEL + lane]),
            m: std::array::from_fn(|j| rec[Q4K_MIN + j * PANEL + lane]),
        }
    }

    /// Row `out` (a super-block of 256 values) from the quants `q`:
    /// ggml's `(d·sc)·q − dmin·m`.
    fn dequantize(&self, q: &[u8; SUPER_BLOCK], out: &mut [f32]) {
        let (d, dmin) = (f16_to_f32(self.d), f16_to_f32(self.dmin));
        for (j, out) in out.chunks_exact_mut(BLOCK).enumerate() {
            let d1 = d * self.sc[j] as f32;
            let m1 = dmin * self.m[j] as f32;
            for (o, &q) in out.iter_mut().zip(&q[j * BLOCK..]) {
                *o = d1 * q as f32 - m1;
            }
        }
    }
}

/// One Q4_K super-block of a row, unpacked.
struct Q4KBlock {
    head: Head,
    /// 0..=15, in column order.
    q: [u8; SUPER_BLOCK],
}

impl Q4KBlock {
    /// The super-block as f32: ggml's `(d·sc)·q − dmin·m`.
    fn dequantize(&self, out: &mut [f32]) {
        self.head.dequantize(&self.q, out);
    }

    /// Reads the file's block: the [`Head`], then the quants: sub-block
    /// `2i` is the low nibbles of quant bytes `32i..32i + 32`, sub-block
    /// `2i + 1` the high.
    fn parse(b: &[u8]) -> Q4KBlock {
        let qs = &b[16..Q4K_BYTES];
        let mut block = Q4KBlock {
            head: Head::parse(b),
            q: [0; SUPER_BLOCK],
        };
        for (c, q) in block.q.iter_mut().enumerate() {
            let (j, l) = (c / BLOCK, c % BLOCK);
            let byte = qs[j / 2 * BLOCK + l];
            *q = if j % 2 == 0 { byte & 0xf } else { byte >> 4 };
        }
        block
    }

    /// The file's bytes ([`Q4KBlock::parse`] inverted).
    fn write(&self, b: &mut [u8]) {
        self.head.write(b);
        let qs = &mut b[16..Q4K_BYTES];
        qs.fill(0);
        for (c, &q) in self.q.iter().enumerate() {
            let (j, l) = (c / BLOCK, c % BLOCK);
            qs[j / 2 * BLOCK + l] |= if j % 2 == 0 { q } else { q << 4 };
        }
    }

    /// Puts the block in row `lane` of a panel's record.
    fn place(&self, rec: &mut [u8], lane: usize) {
        for (c, &q) in self.q.iter().enumerate() {
            let (at, high) = nibble_at(c % BLOCK, lane);
            rec[Q4K_QUANTS + c / BLOCK * NIBBLES + at] |= if high { q << 4 } else { q };
        }
        self.head.place(rec, lane);
    }

    /// Row `lane` of a panel's record ([`Q4KBlock::place`] inverted).
    fn take(rec: &[u8], lane: usize) -> Q4KBlock {
        let mut block = Q4KBlock {
            head: Head::take(rec, lane),
            q: [0; SUPER_BLOCK],
        };
        for (c, q) in block.q.iter_mut().enumerate() {
            let (at, high) = nibble_at(c % BLOCK, lane);
            let byte = rec[Q4K_QUANTS + c / BLOCK * NIBBLES + at];
            *q = if high { byte >> 4 } else { byte & 0xf };
        }
        block
    }
}

/// One Q5_K super-block of a row, unpacked.
struct Q5KBlock {
    head: Head,
    /// 0..=31, in column order.
    q: [u8; SUPER_BLOCK],
}

impl Q5KBlock {
    /// The super-block as f32: ggml's `(d·sc)·q − dmin·m`.
    fn dequantize(&self, out: &mut [f32]) {
        self.head.dequantize(&self.q, out);
    }

    /// Reads the file's block: the [`Head`], 32 bytes of high bits, 128
    /// of low nibbles. The low nibbles are laid out as Q4_K's; column `l`
    /// of sub-block `j` has its fifth bit in bit `j` of high byte `l`, as
    /// ggml's `dequantize_row_q5_K` reads it.
    fn parse(b: &[u8]) -> Q5KBlock {
        let (qh, qs) = (&b[16..48], &b[48..Q5K_BYTES]);
        let mut block = Q5KBlock {
            head: Head::parse(b),
            q: [0; SUPER_BLOCK],
        };
        for (c, q) in block.q.iter_mut().enumerate() {
            let (j, l) = (c / BLOCK, c % BLOCK);
            let low = (qs[j / 2 * BLOCK + l] >> (4 * (j % 2))) & 0xf;
            *q = low | (((qh[l] >> j) & 1) << 4);
        }
        block
    }

    /// The file's bytes ([`Q5KBlock::parse`] inverted).
    fn write(&self, b: &mut [u8]) {
        self.head.write(b);
        let (qh, qs) = b[16..Q5K_BYTES].split_at_mut(32);
        qh.fill(0);
        qs.fill(0);
        for (c, &q) in self.q.iter().enumerate() {
            let (j, l) = (c / BLOCK, c % BLOCK);
            qs[j / 2 * BLOCK + l] |= (q & 0xf) << (4 * (j % 2));
            qh[l] |= (q >> 4) << j;
        }
    }

    /// Puts the block in row `lane` of a panel's record.
    fn place(&self, rec: &mut [u8], lane: usize) {
        for (j, q) in self.q.chunks_exact(BLOCK).enumerate() {
            place_fives(&mut rec[Q5K_QUANTS + j * FIVES..][..FIVES], lane, q);
        }
        self.head.place(rec, lane);
    }

    /// Row `lane` of a panel's record ([`Q5KBlock::place`] inverted).
    fn take(rec: &[u8], lane: usize) -> Q5KBlock {
        let mut block = Q5KBlock {
            head: Head::take(rec, lane),
            q: [0; SUPER_BLOCK],
        };
        for (j, q) in block.q.chunks_exact_mut(BLOCK).enumerate() {
            take_fives(&rec[Q5K_QUANTS + j * FIVES..][..FIVES], lane, q);
        }
        block
    }
}

/// One Q6_K super-block of a row, unpacked.
struct Q6KBlock {
    d: u16,
    sc: [i8; SUPER_BLOCK / 16],
    /// 0..=63 (the value is `q − 32`), in column order.
    q: [u8; SUPER_BLOCK],
}

impl Q6KBlock {
    /// The super-block as f32: ggml's `(d·sc)·(q − 32)`.
    fn dequantize(&self, out: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for (k, out) in out.chunks_exact_mut(16).enumerate() {
            let d1 = d * self.sc[k] as f32;
            for (o, &q) in out.iter_mut().zip(&self.q[k * 16..]) {
                *o = d1 * (q as i32 - 32) as f32;
            }
        }
    }

    /// Reads the file's block: each half of 128 values takes 64 bytes of
    /// low nibbles (values `l` and `l + 64` share byte `l`, values `l + 32`
    /// and `l + 96` byte `l + 32`) and 32 bytes of high bits (byte `l`
    /// holds those of values `l`, `l + 32`, `l + 64`, `l + 96`, two bits
    /// each from the bottom), as ggml's `dequantize_row_q6_K` reads them.
    fn parse(b: &[u8]) -> Q6KBlock {
        let (ql, rest) = b.split_at(128);
        let (qh, rest) = rest.split_at(64);
        let mut block = Q6KBlock {
            d: u16::from_le_bytes([rest[16], rest[17]]),
            sc: std::array::from_fn(|i| rest[i] as i8),
            q: [0; SUPER_BLOCK],
        };
        for (c, q) in block.q.iter_mut().enumerate() {
            let (half, v) = (c / 128, c % 128);
            let (quarter, l) = (v / 32, v % 32);
            let low = ql[64 * half + l + 32 * (quarter % 2)];
            let low = if quarter < 2 { low & 0xf } else { low >> 4 };
            let high = (qh[32 * half + l] >> (2 * quarter)) & 3;
            *q = low | (high << 4);
        }
        block
    }

    /// The file's bytes ([`Q6KBlock::parse`] inverted).
    fn write(&self, b: &mut [u8]) {
        let (ql, rest) = b.split_at_mut(128);
        let (qh, rest) = rest.split_at_mut(64);
        ql.fill(0);
        qh.fill(0);
        for (c, &q) in self.q.iter().enumerate() {
            let (half, v) = (c / 128, c % 128);
            let (quarter, l) = (v / 32, v % 32);
            let low = q & 0xf;
            ql[64 * half + l + 32 * (quarter % 2)] |= if quarter < 2 { low } else { low << 4 };
            qh[32 * half + l] |= (q >> 4) << (2 * quarter);
        }
        for (o, s) in rest[..16].iter_mut().zip(&self.sc) {
            *o = *s as u8;
        }
        rest[16..18].copy_from_slice(&self.d.to_le_bytes());
    }

    /// Puts the block in row `lane` of a panel's record.
    fn place(&self, rec: &mut [u8], lane: usize) {
        for (c, &q) in self.q.iter().enumerate() {
            let sub = &mut rec[Q6K_QUANTS + c / BLOCK * Q6K_SUB..][..Q6K_SUB];
            let (at, l) = Q6kWords::locate(c % BLOCK, lane);
            let mut words = Q6kWords::read(sub, at);
            words.set(l, q);
            words.write(sub, at);
        }
        for (k, &s) in self.sc.iter().enumerate() {
            rec[Q6K_SC + k * PANEL + lane] = s as u8;
        }
        rec[Q6K_D + 2 * lane..][..2].copy_from_slice(&self.d.to_le_bytes());
    }

    /// Row `lane` of a panel's record ([`Q6KBlock::place`] inverted).
    fn take(rec: &[u8], lane: usize) -> Q6KBlock {
        let mut block = Q6KBlock {
            d: u16::from_le_bytes([rec[Q6K_D + 2 * lane], rec[Q6K_D + 2 * lane + 1]]),
            sc: std::array::from_fn(|k| rec[Q6K_SC + k * PANEL + lane] as i8),
            q: [0; SUPER_BLOCK],
        };
        for (c, q) in block.q.iter_mut().enumerate() {
            let sub = &rec[Q6K_QUANTS + c / BLOCK * Q6K_SUB..][..Q6K_SUB];
            *q = q6k_value(sub, c % BLOCK, lane);
        }
        block
    }
}

/// Checks a K-quant matrix's shape against its bytes.
fn check_shape(bytes: &[u8], rows: usize, cols: usize, block_bytes: usize, name: &str) {
    assert_eq!(
        cols % SUPER_BLOCK,
        0,
        "{name}: columns must be a multiple of {SUPER_BLOCK}"
    );
    assert_eq!(
        bytes.len(),
        rows * cols / SUPER_BLOCK * block_bytes,
        "{name}: {rows}×{cols} takes {} bytes",
        rows * cols / SUPER_BLOCK * block_bytes
    );
}

/// The public K-quant matrix types: one panel layout each (see the record
/// constants above), the same code around it.
macro_rules! kquant_matrix {
    (
        $name:ident, $block:ident, $format:literal, $bits:literal,
        $file_bytes:literal, $file_bytes_const:ident, $record:ident,
        $from:ident, $to:ident, $kernel:ident, $scalar:ident
    ) => {
        #[doc = concat!("A matrix in GGUF's ", $format, " format (", $bits, "), in panels of")]
        /// [`PANEL`] rows (the last padded with zero rows).
        #[derive(Debug, Clone, Default)]
        pub struct $name {
            rows: usize,
            cols: usize,
            /// One record of `RECORD` bytes per panel and super-block,
            /// panel-major.
            data: Buf<u8>,
        }

        impl $name {
            #[doc = concat!("Takes a row-major `rows × cols` matrix's ", $format, " blocks (the")]
            /// tensor's bytes in a GGUF file) as they are.
            ///
            /// # Panics
            /// If `cols` is not a multiple of [`SUPER_BLOCK`] or `bytes` is not
            #[doc = concat!("`rows · cols / 256` blocks of ", stringify!($file_bytes), " bytes.")]
            pub fn $from(bytes: &[u8], rows: usize, cols: usize) -> $name {
                check_shape(bytes, rows, cols, $file_bytes_const, $format);
                let ns = cols / SUPER_BLOCK;
                let mut data = vec![0u8; rows.div_ceil(PANEL) * ns * $record];
                for (i, b) in bytes.chunks_exact($file_bytes_const).enumerate() {
                    let (r, s) = (i / ns, i % ns);
                    let rec = &mut data[(r / PANEL * ns + s) * $record..][..$record];
                    $block::parse(b).place(rec, r % PANEL);
                }
                $name {
                    rows,
                    cols,
                    data: data.into(),
                }
            }

            #[doc = concat!("The matrix as GGUF ", $format, " blocks, row-major: the bytes")]
            #[doc = concat!("[`", stringify!($name), "::", stringify!($from), "`] took.")]
            pub fn $to(&self) -> Vec<u8> {
                let ns = self.cols / SUPER_BLOCK;
                let mut out = vec![0u8; self.rows * ns * $file_bytes_const];
                for (i, b) in out.chunks_exact_mut($file_bytes_const).enumerate() {
                    let (r, s) = (i / ns, i % ns);
                    $block::take(self.record(r / PANEL, s), r % PANEL).write(b);
                }
                out
            }

            /// Stacks matrices with the same column count (fused projections).
            pub fn stack(parts: &[$name]) -> $name {
                let cols = parts[0].cols;
                assert!(parts.iter().all(|p| p.cols == cols), "column counts differ");
                let bytes: Vec<u8> = parts.iter().flat_map(|p| p.$to()).collect();
                $name::$from(&bytes, parts.iter().map(|p| p.rows).sum(), cols)
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
                self.data.len()
            }

            /// A matrix whose panels lie in a weight image (see [`crate::image`]):
            /// `len` bytes at `start`, checked against the shape.
            pub(crate) fn mapped(
                image: &Image,
                rows: usize,
                cols: usize,
                start: usize,
                len: usize,
            ) -> Result<$name, String> {
                let data = records(
                    image,
                    (rows, cols),
                    SUPER_BLOCK,
                    $record,
                    (start, len),
                    $format,
                )?;
                Ok($name { rows, cols, data })
            }

            /// The panels' bytes, as `mapped` takes them.
            pub(crate) fn raw(&self) -> &[u8] {
                self.data.as_bytes()
            }

            /// Panel `g`'s record for super-block `s`.
            fn record(&self, g: usize, s: usize) -> &[u8] {
                let ns = self.cols / SUPER_BLOCK;
                &self.data[(g * ns + s) * $record..][..$record]
            }

            /// Row `r` as f32 (embedding lookups), as ggml dequantises it.
            pub fn row(&self, r: usize, out: &mut [f32]) {
                assert!(r < self.rows, "row {r} of {}", self.rows);
                for (s, out) in out[..self.cols].chunks_exact_mut(SUPER_BLOCK).enumerate() {
                    $block::take(self.record(r / PANEL, s), r % PANEL).dequantize(out);
                }
            }

            /// `y = x · Wᵀ` on the best instruction set (see [`crate::matmul`]).
            pub fn matmul(&self, x: &Activations, y: &mut [f32], pool: Option<&rayon::ThreadPool>) {
                self.matmul_on(Isa::detected(), x, y, pool);
            }

            /// `matmul` on a given instruction set, which the CPU
            /// must have (see [`Isa::available`]). Every path gives the same bits.
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
                let ns = self.cols / SUPER_BLOCK;
                let panel = &self.data[g * ns * $record..(g + 1) * ns * $record];
                match isa {
                    // SAFETY (both): the caller checked the CPU has this path and
                    // the tokens exist.
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => unsafe { avx512::$kernel(panel, x, t, k, tile) },
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => unsafe { avx2::$kernel(panel, x, t, k, tile) },
                    _ => $scalar(panel, x, t, k, tile),
                }
            }
        }
    };
}

kquant_matrix!(
    Q4KMatrix,
    Q4KBlock,
    "Q4_K",
    "4.5 bits per weight in the file, 4.625 here",
    144,
    Q4K_BYTES,
    Q4K_RECORD,
    from_q4_k,
    to_q4_k,
    q4k,
    q4k_scalar
);
kquant_matrix!(
    Q5KMatrix,
    Q5KBlock,
    "Q5_K",
    "5.5 bits per weight in the file, 5.625 here",
    176,
    Q5K_BYTES,
    Q5K_RECORD,
    from_q5_k,
    to_q5_k,
    q5k,
    q5k_scalar
);
kquant_matrix!(
    Q6KMatrix,
    Q6KBlock,
    "Q6_K",
    "6.5625 bits per weight, as in the file",
    210,
    Q6K_BYTES,
    Q6K_RECORD,
    from_q6_k,
    to_q6_k,
    q6k,
    q6k_scalar
);

/// The sixteen rows' f16 values at `at` in a record, widened.
pub(crate) fn halves(rec: &[u8], at: usize) -> [f32; PANEL] {
    std::array::from_fn(|l| f16_to_f32(u16::from_le_bytes([rec[at + 2 * l], rec[at + 2 * l + 1]])))
}

/// The Q4_K reference every vector path matches bit for bit (see
/// [`headed_scalar`]).
fn q4k_scalar(panel: &[u8], x: &Activations, t: usize, k: usize, tile: &mut Tile) {
    headed_scalar(panel, Q4K_RECORD, x, t, k, tile, |rec, j, w| {
        unpack_nibbles(&rec[Q4K_QUANTS + j * NIBBLES..][..NIBBLES], w)
    });
}

/// The Q5_K reference every vector path matches bit for bit (see
/// [`headed_scalar`]).
fn q5k_scalar(panel: &[u8], x: &Activations, t: usize, k: usize, tile: &mut Tile) {
    headed_scalar(panel, Q5K_RECORD, x, t, k, tile, |rec, j, w| {
        unpack_fives(&rec[Q5K_QUANTS + j * FIVES..][..FIVES], w)
    });
}

/// The reference for the formats with a [`Head`] (Q4_K, Q5_K), whose
/// records of `len` bytes give sub-block `j`'s quants through `unpack`.
/// Each output is two partial sums, of the even and of the odd
/// sub-blocks, added at the end (two chains of fused multiply-adds
/// instead of one long one, so a lone token is not bound by their
/// latency): per sub-block `j` of super-block `s` (activation block
/// `b = 8s + j`), `acc[j % 2] = fma(Σ q·x, (d·sc)·xs_b, acc[j % 2])` then
/// `acc[j % 2] = fma(−(dmin·m), xs_b·Σx_b, acc[j % 2])`.
fn headed_scalar(
    panel: &[u8],
    len: usize,
    x: &Activations,
    t: usize,
    k: usize,
    tile: &mut Tile,
    unpack: impl Fn(&[u8], usize, &mut [[i16; BLOCK]; PANEL]),
) {
    let mut acc = [[[0f32; PANEL]; 2]; TILE];
    let mut w = [[0i16; BLOCK]; PANEL];
    for (s, rec) in panel.chunks_exact(len).enumerate() {
        let (d, dmin) = (halves(rec, Q4K_D), halves(rec, Q4K_DMIN));
        for j in 0..SUBS {
            unpack(rec, j, &mut w);
            let b = s * SUBS + j;
            for (i, acc) in acc.iter_mut().enumerate().take(k) {
                let (xq, xs) = x.token(t + i);
                let (_, scaled) = x.token_sums(t + i);
                let xb = &xq[b * BLOCK..][..BLOCK];
                for (lane, acc) in acc[j % 2].iter_mut().enumerate() {
                    let sum = dot_i16(&w[lane], xb);
                    let d1 = d[lane] * rec[Q4K_SC + j * PANEL + lane] as f32;
                    let m1 = dmin[lane] * rec[Q4K_MIN + j * PANEL + lane] as f32;
                    *acc = (sum as f32).mul_add(d1 * xs[b], *acc);
                    *acc = (-m1).mul_add(scaled[b], *acc);
                }
            }
        }
    }
    add_halves(&acc, k, tile);
}

/// `Σ w·x` in i32 (exact for these formats' sums), in a form the compiler
/// turns into `pmaddwd` or its like on any target.
#[inline(always)]
pub(crate) fn dot_i16(w: &[i16], x: &[i16]) -> i32 {
    w.iter().zip(x).map(|(&w, &x)| w as i32 * x as i32).sum()
}

/// `tile[i] = acc[i][0] + acc[i][1]` for the first `k` tokens.
pub(crate) fn add_halves(acc: &[[[f32; PANEL]; 2]; TILE], k: usize, tile: &mut Tile) {
    for (out, [a, b]) in tile.iter_mut().zip(acc).take(k) {
        for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
            *o = a + b;
        }
    }
}

/// The Q6_K reference every vector path matches bit for bit. Each output
/// is two partial sums, of the first and of the second 16 columns of each
/// block, added at the end: per half `h` of sub-block `j` of super-block
/// `s` (activation block `b = 8s + j`, scale `2j + h`),
/// `acc[h] = fma(Σ q·x − 32·Σx, (d·sc)·xs_b, acc[h])`.
fn q6k_scalar(panel: &[u8], x: &Activations, t: usize, k: usize, tile: &mut Tile) {
    let mut acc = [[[0f32; PANEL]; 2]; TILE];
    let mut w = [[0i16; BLOCK]; PANEL];
    for (s, rec) in panel.chunks_exact(Q6K_RECORD).enumerate() {
        let d = halves(rec, Q6K_D);
        for j in 0..SUBS {
            let sub = &rec[Q6K_QUANTS + j * Q6K_SUB..][..Q6K_SUB];
            for h in 0..2 {
                for at in 0..2 * PANEL {
                    let words = Q6kWords::read(sub, h * 3 * PLANE + 2 * at);
                    let (lane, e) = (at / 2, at % 2);
                    for l in 0..8 {
                        w[lane][2 * (8 * h + l) + e] = words.get(l) as i16;
                    }
                }
            }
            let b = s * SUBS + j;
            for (i, acc) in acc.iter_mut().enumerate().take(k) {
                let (xq, xs) = x.token(t + i);
                let (offsets, _) = x.token_sums(t + i);
                for (h, acc) in acc.iter_mut().enumerate() {
                    let cols = h * 16..(h + 1) * 16;
                    for (lane, acc) in acc.iter_mut().enumerate() {
                        let sum = dot_i16(&w[lane][cols.clone()], &xq[b * BLOCK..][cols.clone()])
                            - offsets[2 * b + h];
                        let sc = rec[Q6K_SC + (2 * j + h) * PANEL + lane] as i8;
                        let d1 = d[lane] * sc as f32;
                        *acc = (sum as f32).mul_add(d1 * xs[b], *acc);
                    }
                }
            }
        }
    }
    add_halves(&acc, k, tile);
}

/// Sixteen rows per instruction with AVX-512 VNNI.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::*;
    use crate::dpwssd;
    use std::arch::x86_64::*;

    /// `C ? A : B`, bit by bit, for `_mm512_ternarylogic_epi32`.
    const SELECT: i32 = 0xe4;

    /// # Safety
    /// AVX-512 F/BW/VNNI, AVX2 and FMA are present; tokens `t..t + k`
    /// (`k ≤ TILE`) exist in `x`, whose columns are the panel's.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub(super) unsafe fn q4k(panel: &[u8], x: &Activations, t: usize, k: usize, tile: &mut Tile) {
        debug_assert!(k <= TILE);
        // SAFETY (all arms): as the caller guarantees.
        unsafe {
            match k {
                1 => q4k_n::<1>(panel, x, t, tile),
                2 => q4k_n::<2>(panel, x, t, tile),
                3 => q4k_n::<3>(panel, x, t, tile),
                4 => q4k_n::<4>(panel, x, t, tile),
                5 => q4k_n::<5>(panel, x, t, tile),
                6 => q4k_n::<6>(panel, x, t, tile),
                7 => q4k_n::<7>(panel, x, t, tile),
                _ => q4k_n::<8>(panel, x, t, tile),
            }
        }
    }

    /// One panel times `T` tokens: each nibble group, zero-extended, gives
    /// column pair `h` (AND) and `h + 8` (shift). Under four tokens, each
    /// token's integer sum is split in two so that it is not one chain of
    /// dependent instructions (integers add exactly: the split changes no
    /// bit); from four on, the tokens give enough independent work.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    #[allow(clippy::needless_range_loop)] // one index addresses several arrays
    unsafe fn q4k_n<const T: usize>(panel: &[u8], x: &Activations, t: usize, tile: &mut Tile) {
        let ns = panel.len() / Q4K_RECORD;
        debug_assert!(x.cols == ns * SUPER_BLOCK && t + T <= x.tokens);
        let split = T < 4;
        let xq: [*const i16; T] = std::array::from_fn(|i| x.token(t + i).0.as_ptr());
        let xs: [*const f32; T] = std::array::from_fn(|i| x.token(t + i).1.as_ptr());
        let xc: [*const f32; T] = std::array::from_fn(|i| x.token_sums(t + i).1.as_ptr());
        // SAFETY: every record offset is below ns · Q4K_RECORD and every
        // activation index below ns · 256, the tokens' lengths.
        unsafe {
            let nibble = _mm512_set1_epi16(0xf);
            let mut acc = [[_mm512_setzero_ps(); T]; 2];
            for s in 0..ns {
                let rec = panel.as_ptr().add(s * Q4K_RECORD);
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(rec.add(Q4K_D).cast()));
                let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(rec.add(Q4K_DMIN).cast()));
                for pair in (0..SUBS).step_by(2) {
                    for (parity, acc) in acc.iter_mut().enumerate() {
                        let j = pair + parity;
                        let b = s * SUBS + j;
                        let q = rec.add(Q4K_QUANTS + j * NIBBLES);
                        let mut sums = [[_mm512_setzero_si512(); T]; 2];
                        for h in 0..8 {
                            let v = _mm512_cvtepu8_epi16(_mm256_loadu_si256(q.add(h * 32).cast()));
                            let lo = _mm512_and_si512(v, nibble);
                            let hi = _mm512_srli_epi16::<4>(v);
                            for i in 0..T {
                                let xb = xq[i].add(b * BLOCK);
                                sums[0][i] = dpwssd(sums[0][i], lo, xb.add(2 * h));
                                let sum = &mut sums[split as usize][i];
                                *sum = dpwssd(*sum, hi, xb.add(2 * h + 16));
                            }
                        }
                        let bytes = |at: usize| {
                            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(
                                rec.add(at + j * PANEL).cast(),
                            )))
                        };
                        let d1 = _mm512_mul_ps(d, bytes(Q4K_SC));
                        let m1 = _mm512_mul_ps(dmin, bytes(Q4K_MIN));
                        for i in 0..T {
                            let sum = if split {
                                _mm512_add_epi32(sums[0][i], sums[1][i])
                            } else {
                                sums[0][i]
                            };
                            let scale = _mm512_mul_ps(d1, _mm512_set1_ps(*xs[i].add(b)));
                            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, acc[i]);
                            acc[i] = _mm512_fnmadd_ps(m1, _mm512_set1_ps(*xc[i].add(b)), acc[i]);
                        }
                    }
                }
            }
            for i in 0..T {
                _mm512_storeu_ps(tile[i].as_mut_ptr(), _mm512_add_ps(acc[0][i], acc[1][i]));
            }
        }
    }

    /// # Safety
    /// As for [`q4k`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub(super) unsafe fn q5k(panel: &[u8], x: &Activations, t: usize, k: usize, tile: &mut Tile) {
        debug_assert!(k <= TILE);
        // SAFETY (all arms): as the caller guarantees.
        unsafe {
            match k {
                1 => q5k_n::<1>(panel, x, t, tile),
                2 => q5k_n::<2>(panel, x, t, tile),
                3 => q5k_n::<3>(panel, x, t, tile),
                4 => q5k_n::<4>(panel, x, t, tile),
                5 => q5k_n::<5>(panel, x, t, tile),
                6 => q5k_n::<6>(panel, x, t, tile),
                7 => q5k_n::<7>(panel, x, t, tile),
                _ => q5k_n::<8>(panel, x, t, tile),
            }
        }
    }

    /// One panel times `T` tokens: [`q4k_n`]'s float work, with each
    /// sub-block's sixteen column pairs from [`fives`] (summed in two
    /// halves under four tokens, as there).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    #[allow(clippy::needless_range_loop)] // one index addresses several arrays
    unsafe fn q5k_n<const T: usize>(panel: &[u8], x: &Activations, t: usize, tile: &mut Tile) {
        let ns = panel.len() / Q5K_RECORD;
        debug_assert!(x.cols == ns * SUPER_BLOCK && t + T <= x.tokens);
        let split = T < 4;
        let xq: [*const i16; T] = std::array::from_fn(|i| x.token(t + i).0.as_ptr());
        let xs: [*const f32; T] = std::array::from_fn(|i| x.token(t + i).1.as_ptr());
        let xc: [*const f32; T] = std::array::from_fn(|i| x.token_sums(t + i).1.as_ptr());
        // SAFETY: every record offset is below ns · Q5K_RECORD and every
        // activation index below ns · 256, the tokens' lengths.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); T]; 2];
            for s in 0..ns {
                let rec = panel.as_ptr().add(s * Q5K_RECORD);
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(rec.add(Q4K_D).cast()));
                let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(rec.add(Q4K_DMIN).cast()));
                for pair in (0..SUBS).step_by(2) {
                    for (parity, acc) in acc.iter_mut().enumerate() {
                        let j = pair + parity;
                        let b = s * SUBS + j;
                        let mut sums = [[_mm512_setzero_si512(); T]; 2];
                        fives(rec.add(Q5K_QUANTS + j * FIVES), |l, v| {
                            for i in 0..T {
                                let sum = &mut sums[split as usize * (l % 2)][i];
                                *sum = dpwssd(*sum, v, xq[i].add(b * BLOCK + 2 * l));
                            }
                        });
                        let bytes = |at: usize| {
                            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(
                                rec.add(at + j * PANEL).cast(),
                            )))
                        };
                        let d1 = _mm512_mul_ps(d, bytes(Q4K_SC));
                        let m1 = _mm512_mul_ps(dmin, bytes(Q4K_MIN));
                        for i in 0..T {
                            let sum = if split {
                                _mm512_add_epi32(sums[0][i], sums[1][i])
                            } else {
                                sums[0][i]
                            };
                            let scale = _mm512_mul_ps(d1, _mm512_set1_ps(*xs[i].add(b)));
                            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, acc[i]);
                            acc[i] = _mm512_fnmadd_ps(m1, _mm512_set1_ps(*xc[i].add(b)), acc[i]);
                        }
                    }
                }
            }
            for i in 0..T {
                _mm512_storeu_ps(tile[i].as_mut_ptr(), _mm512_add_ps(acc[0][i], acc[1][i]));
            }
        }
    }

    /// Hands `f` the sixteen column pairs of a 5-bit sub-block for all
    /// sixteen rows ([`Q5Words::get`] at once): `f(l, pair l)`, each as
    /// soon as it is extracted, so that a kernel holds one at a time (an
    /// array of all sixteen spills with eight tokens' sums beside it).
    /// Thirty operations for sixteen pairs: an AND, a shift or both for
    /// fifteen, and ten to gather the sixteenth's spare bits.
    ///
    /// # Safety
    /// AVX-512 F/BW are present; `q` points to [`FIVES`] readable bytes.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    pub(crate) unsafe fn fives(q: *const u8, mut f: impl FnMut(usize, __m512i)) {
        // SAFETY: the five planes are the FIVES bytes from q.
        unsafe {
            let five = _mm512_set1_epi16(31);
            let plane = |i: usize| _mm512_loadu_si512(q.add(i * PLANE).cast());
            for i in 0..5 {
                let w = plane(i);
                f(3 * i, _mm512_and_si512(w, five));
                f(3 * i + 1, _mm512_and_si512(_mm512_srli_epi16::<6>(w), five));
                f(3 * i + 2, _mm512_srli_epi16::<11>(w));
            }
            // Word i's spare bit 5 shifted to bit i, merged in under a
            // mask of the bits already gathered.
            let merge = |got, next, mask: i16| {
                _mm512_ternarylogic_epi32::<SELECT>(got, next, _mm512_set1_epi16(mask))
            };
            let mut top = _mm512_srli_epi16::<5>(plane(0));
            top = merge(top, _mm512_srli_epi16::<4>(plane(1)), 1);
            top = merge(top, _mm512_srli_epi16::<3>(plane(2)), 3);
            top = merge(top, _mm512_srli_epi16::<2>(plane(3)), 7);
            top = merge(top, _mm512_srli_epi16::<1>(plane(4)), 15);
            f(15, _mm512_and_si512(top, five));
        }
    }

    /// Hands `f` the sixteen column pairs of a sub-block's nibbles for all
    /// sixteen rows, as [`fives`] does: group `h` zero-extended gives pair
    /// `h` (AND) and `h + 8` (shift).
    ///
    /// # Safety
    /// AVX-512 F/BW are present; `q` points to [`NIBBLES`] readable bytes.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    pub(crate) unsafe fn nibbles(q: *const u8, mut f: impl FnMut(usize, __m512i)) {
        // SAFETY: the eight groups are the NIBBLES bytes from q.
        unsafe {
            let nibble = _mm512_set1_epi16(0xf);
            for h in 0..8 {
                let g = _mm512_cvtepu8_epi16(_mm256_loadu_si256(q.add(h * 2 * PANEL).cast()));
                f(h, _mm512_and_si512(g, nibble));
                f(h + 8, _mm512_srli_epi16::<4>(g));
            }
        }
    }

    /// # Safety
    /// As for [`q4k`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub(super) unsafe fn q6k(panel: &[u8], x: &Activations, t: usize, k: usize, tile: &mut Tile) {
        debug_assert!(k <= TILE);
        // SAFETY (all arms): as the caller guarantees.
        unsafe {
            match k {
                1 => q6k_n::<1>(panel, x, t, tile),
                2 => q6k_n::<2>(panel, x, t, tile),
                3 => q6k_n::<3>(panel, x, t, tile),
                4 => q6k_n::<4>(panel, x, t, tile),
                5 => q6k_n::<5>(panel, x, t, tile),
                6 => q6k_n::<6>(panel, x, t, tile),
                7 => q6k_n::<7>(panel, x, t, tile),
                _ => q6k_n::<8>(panel, x, t, tile),
            }
        }
    }

    /// One panel times `T` tokens: each half sub-block's three planes give
    /// its eight column pairs (see [`Q6kWords`]), summed (split in two
    /// under four tokens, as in [`q4k_n`]) and scaled into that half's
    /// partial sum.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    #[allow(clippy::needless_range_loop)] // one index addresses several arrays
    unsafe fn q6k_n<const T: usize>(panel: &[u8], x: &Activations, t: usize, tile: &mut Tile) {
        let ns = panel.len() / Q6K_RECORD;
        debug_assert!(x.cols == ns * SUPER_BLOCK && t + T <= x.tokens);
        let split = T < 4;
        let xq: [*const i16; T] = std::array::from_fn(|i| x.token(t + i).0.as_ptr());
        let xs: [*const f32; T] = std::array::from_fn(|i| x.token(t + i).1.as_ptr());
        let off: [*const i32; T] = std::array::from_fn(|i| x.token_sums(t + i).0.as_ptr());
        // SAFETY: as in q4k_n.
        unsafe {
            let nibble = _mm512_set1_epi16(0xf);
            let six = _mm512_set1_epi16(63);
            let mut acc = [[_mm512_setzero_ps(); T]; 2];
            for s in 0..ns {
                let rec = panel.as_ptr().add(s * Q6K_RECORD);
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(rec.add(Q6K_D).cast()));
                for j in 0..SUBS {
                    let b = s * SUBS + j;
                    let q = rec.add(Q6K_QUANTS + j * Q6K_SUB);
                    for (h, acc) in acc.iter_mut().enumerate() {
                        let plane =
                            |i: usize| _mm512_loadu_si512(q.add((3 * h + i) * PLANE).cast());
                        let (w0, w1, w2) = (plane(0), plane(1), plane(2));
                        // Q6kWords::get for all sixteen rows at once.
                        let select = |a, b| _mm512_ternarylogic_epi32::<SELECT>(a, b, nibble);
                        let v = [
                            _mm512_and_si512(w0, six),
                            _mm512_srli_epi16::<10>(w0),
                            _mm512_and_si512(w1, six),
                            _mm512_srli_epi16::<10>(w1),
                            _mm512_and_si512(w2, six),
                            _mm512_and_si512(_mm512_srli_epi16::<6>(w2), six),
                            select(_mm512_srli_epi16::<6>(w0), _mm512_srli_epi16::<10>(w2)),
                            _mm512_and_si512(
                                select(_mm512_srli_epi16::<6>(w1), _mm512_srli_epi16::<8>(w2)),
                                six,
                            ),
                        ];
                        let mut sums = [[_mm512_setzero_si512(); T]; 2];
                        for (l, v) in v.into_iter().enumerate() {
                            for i in 0..T {
                                let xb = xq[i].add(b * BLOCK + 2 * (8 * h + l));
                                let sum = &mut sums[split as usize * (l % 2)][i];
                                *sum = dpwssd(*sum, v, xb);
                            }
                        }
                        let sc = _mm_loadu_si128(rec.add(Q6K_SC + (2 * j + h) * PANEL).cast());
                        let d1 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc)));
                        for i in 0..T {
                            let sum = if split {
                                _mm512_add_epi32(sums[0][i], sums[1][i])
                            } else {
                                sums[0][i]
                            };
                            let sum =
                                _mm512_sub_epi32(sum, _mm512_set1_epi32(*off[i].add(2 * b + h)));
                            let scale = _mm512_mul_ps(d1, _mm512_set1_ps(*xs[i].add(b)));
                            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, acc[i]);
                        }
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
/// sums and float operations as the AVX-512 kernels, on each half panel.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::*;
    use crate::pair;
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2, FMA and F16C are present; tokens `t..t + k` (`k ≤ TILE`)
    /// exist in `x`, whose columns are the panel's.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q4k(panel: &[u8], x: &Activations, t: usize, k: usize, tile: &mut Tile) {
        let mut i = 0;
        while i < k {
            let n = (k - i).min(4);
            for half in 0..2 {
                // SAFETY (all arms): as the caller guarantees.
                unsafe {
                    match n {
                        1 => q4k_half::<1>(panel, x, t + i, half, &mut tile[i..]),
                        2 => q4k_half::<2>(panel, x, t + i, half, &mut tile[i..]),
                        3 => q4k_half::<3>(panel, x, t + i, half, &mut tile[i..]),
                        _ => q4k_half::<4>(panel, x, t + i, half, &mut tile[i..]),
                    }
                }
            }
            i += n;
        }
    }

    /// Eight rows (`half` of the panel) times `T` tokens.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // one index addresses several arrays
    unsafe fn q4k_half<const T: usize>(
        panel: &[u8],
        x: &Activations,
        t: usize,
        half: usize,
        tile: &mut [[f32; PANEL]],
    ) {
        let ns = panel.len() / Q4K_RECORD;
        debug_assert!(x.cols == ns * SUPER_BLOCK && t + T <= x.tokens && T <= tile.len());
        let xq: [*const i16; T] = std::array::from_fn(|i| x.token(t + i).0.as_ptr());
        let xs: [*const f32; T] = std::array::from_fn(|i| x.token(t + i).1.as_ptr());
        let xc: [*const f32; T] = std::array::from_fn(|i| x.token_sums(t + i).1.as_ptr());
        // SAFETY: as in the AVX-512 kernel; `half` picks bytes 16·half..
        // of each 32-byte group and lanes 8·half.. of each row's fields.
        unsafe {
            let nibble = _mm256_set1_epi16(0xf);
            let mut acc = [[_mm256_setzero_ps(); T]; 2];
            for s in 0..ns {
                let rec = panel.as_ptr().add(s * Q4K_RECORD);
                let f16s =
                    |at: usize| _mm256_cvtph_ps(_mm_loadu_si128(rec.add(at + 16 * half).cast()));
                let (d, dmin) = (f16s(Q4K_D), f16s(Q4K_DMIN));
                for pair_j in (0..SUBS).step_by(2) {
                    for (parity, acc) in acc.iter_mut().enumerate() {
                        let j = pair_j + parity;
                        let b = s * SUBS + j;
                        let q = rec.add(Q4K_QUANTS + j * NIBBLES + half * PANEL);
                        let mut sum = [_mm256_setzero_si256(); T];
                        for h in 0..8 {
                            let v = _mm256_cvtepu8_epi16(_mm_loadu_si128(q.add(h * 32).cast()));
                            let lo = _mm256_and_si256(v, nibble);
                            let hi = _mm256_srli_epi16::<4>(v);
                            for i in 0..T {
                                let a = _mm256_madd_epi16(lo, _mm256_set1_epi32(pair(xq[i], b, h)));
                                let c =
                                    _mm256_madd_epi16(hi, _mm256_set1_epi32(pair(xq[i], b, h + 8)));
                                sum[i] = _mm256_add_epi32(sum[i], _mm256_add_epi32(a, c));
                            }
                        }
                        let bytes = |at: usize| {
                            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                                rec.add(at + j * PANEL + 8 * half).cast(),
                            )))
                        };
                        let d1 = _mm256_mul_ps(d, bytes(Q4K_SC));
                        let m1 = _mm256_mul_ps(dmin, bytes(Q4K_MIN));
                        for i in 0..T {
                            let scale = _mm256_mul_ps(d1, _mm256_set1_ps(*xs[i].add(b)));
                            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[i]), scale, acc[i]);
                            acc[i] = _mm256_fnmadd_ps(m1, _mm256_set1_ps(*xc[i].add(b)), acc[i]);
                        }
                    }
                }
            }
            for i in 0..T {
                let sum = _mm256_add_ps(acc[0][i], acc[1][i]);
                _mm256_storeu_ps(tile[i].as_mut_ptr().add(8 * half), sum);
            }
        }
    }

    /// # Safety
    /// As for [`q4k`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q5k(panel: &[u8], x: &Activations, t: usize, k: usize, tile: &mut Tile) {
        let mut i = 0;
        while i < k {
            let n = (k - i).min(4);
            for half in 0..2 {
                // SAFETY (all arms): as the caller guarantees.
                unsafe {
                    match n {
                        1 => q5k_half::<1>(panel, x, t + i, half, &mut tile[i..]),
                        2 => q5k_half::<2>(panel, x, t + i, half, &mut tile[i..]),
                        3 => q5k_half::<3>(panel, x, t + i, half, &mut tile[i..]),
                        _ => q5k_half::<4>(panel, x, t + i, half, &mut tile[i..]),
                    }
                }
            }
            i += n;
        }
    }

    /// Eight rows (`half` of the panel) times `T` tokens: [`q4k_half`]'s
    /// float work, with the column pairs from [`fives`].
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // one index addresses several arrays
    unsafe fn q5k_half<const T: usize>(
        panel: &[u8],
        x: &Activations,
        t: usize,
        half: usize,
        tile: &mut [[f32; PANEL]],
    ) {
        let ns = panel.len() / Q5K_RECORD;
        debug_assert!(x.cols == ns * SUPER_BLOCK && t + T <= x.tokens && T <= tile.len());
        let xq: [*const i16; T] = std::array::from_fn(|i| x.token(t + i).0.as_ptr());
        let xs: [*const f32; T] = std::array::from_fn(|i| x.token(t + i).1.as_ptr());
        let xc: [*const f32; T] = std::array::from_fn(|i| x.token_sums(t + i).1.as_ptr());
        // SAFETY: as in the AVX-512 kernel; `half` picks bytes 32·half..
        // of each plane and lanes 8·half.. of each row's fields.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); T]; 2];
            for s in 0..ns {
                let rec = panel.as_ptr().add(s * Q5K_RECORD);
                let f16s =
                    |at: usize| _mm256_cvtph_ps(_mm_loadu_si128(rec.add(at + 16 * half).cast()));
                let (d, dmin) = (f16s(Q4K_D), f16s(Q4K_DMIN));
                for pair_j in (0..SUBS).step_by(2) {
                    for (parity, acc) in acc.iter_mut().enumerate() {
                        let j = pair_j + parity;
                        let b = s * SUBS + j;
                        let mut sum = [_mm256_setzero_si256(); T];
                        let q = rec.add(Q5K_QUANTS + j * FIVES + half * PLANE / 2);
                        fives(q, |l, v| {
                            for i in 0..T {
                                let prod =
                                    _mm256_madd_epi16(v, _mm256_set1_epi32(pair(xq[i], b, l)));
                                sum[i] = _mm256_add_epi32(sum[i], prod);
                            }
                        });
                        let bytes = |at: usize| {
                            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                                rec.add(at + j * PANEL + 8 * half).cast(),
                            )))
                        };
                        let d1 = _mm256_mul_ps(d, bytes(Q4K_SC));
                        let m1 = _mm256_mul_ps(dmin, bytes(Q4K_MIN));
                        for i in 0..T {
                            let scale = _mm256_mul_ps(d1, _mm256_set1_ps(*xs[i].add(b)));
                            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum[i]), scale, acc[i]);
                            acc[i] = _mm256_fnmadd_ps(m1, _mm256_set1_ps(*xc[i].add(b)), acc[i]);
                        }
                    }
                }
            }
            for i in 0..T {
                let sum = _mm256_add_ps(acc[0][i], acc[1][i]);
                _mm256_storeu_ps(tile[i].as_mut_ptr().add(8 * half), sum);
            }
        }
    }

    /// Hands `f` the sixteen column pairs of a 5-bit sub-block for eight
    /// rows (`q` is the first plane's half for them), as the AVX-512
    /// version does, with the sixteenth pair's spare bits masked and
    /// gathered by shifts (AVX2 has no bit select).
    ///
    /// # Safety
    /// AVX2 is present; `q` points to the five planes' 32-byte halves,
    /// [`PLANE`] bytes apart.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(crate) unsafe fn fives(q: *const u8, mut f: impl FnMut(usize, __m256i)) {
        // SAFETY: the caller guarantees the five reads.
        unsafe {
            let five = _mm256_set1_epi16(31);
            let plane = |i: usize| _mm256_loadu_si256(q.add(i * PLANE).cast());
            for i in 0..5 {
                let w = plane(i);
                f(3 * i, _mm256_and_si256(w, five));
                f(3 * i + 1, _mm256_and_si256(_mm256_srli_epi16::<6>(w), five));
                f(3 * i + 2, _mm256_srli_epi16::<11>(w));
            }
            // Bits 5..10 ← the spare bits of words 0..5, Horner's way.
            let spare = _mm256_set1_epi16(32);
            let mut top = _mm256_and_si256(plane(4), spare);
            for i in (0..4).rev() {
                let next = _mm256_and_si256(plane(i), spare);
                top = _mm256_or_si256(_mm256_slli_epi16::<1>(top), next);
            }
            f(15, _mm256_srli_epi16::<5>(top));
        }
    }

    /// Hands `f` the sixteen column pairs of a sub-block's nibbles for
    /// eight rows (`q` is the first group's half for them).
    ///
    /// # Safety
    /// AVX2 is present; `q` points to eight 16-byte halves of groups, 32
    /// bytes apart.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(crate) unsafe fn nibbles(q: *const u8, mut f: impl FnMut(usize, __m256i)) {
        // SAFETY: the caller guarantees the eight reads.
        unsafe {
            let nibble = _mm256_set1_epi16(0xf);
            for h in 0..8 {
                let g = _mm256_cvtepu8_epi16(_mm_loadu_si128(q.add(h * 2 * PANEL).cast()));
                f(h, _mm256_and_si256(g, nibble));
                f(h + 8, _mm256_srli_epi16::<4>(g));
            }
        }
    }

    /// # Safety
    /// As for [`q4k`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q6k(panel: &[u8], x: &Activations, t: usize, k: usize, tile: &mut Tile) {
        let mut i = 0;
        while i < k {
            let n = (k - i).min(4);
            for half in 0..2 {
                // SAFETY (all arms): as the caller guarantees.
                unsafe {
                    match n {
                        1 => q6k_half::<1>(panel, x, t + i, half, &mut tile[i..]),
                        2 => q6k_half::<2>(panel, x, t + i, half, &mut tile[i..]),
                        3 => q6k_half::<3>(panel, x, t + i, half, &mut tile[i..]),
                        _ => q6k_half::<4>(panel, x, t + i, half, &mut tile[i..]),
                    }
                }
            }
            i += n;
        }
    }

    /// Eight rows (`half` of the panel) times `T` tokens.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop)] // one index addresses several arrays
    unsafe fn q6k_half<const T: usize>(
        panel: &[u8],
        x: &Activations,
        t: usize,
        half: usize,
        tile: &mut [[f32; PANEL]],
    ) {
        let ns = panel.len() / Q6K_RECORD;
        debug_assert!(x.cols == ns * SUPER_BLOCK && t + T <= x.tokens && T <= tile.len());
        let xq: [*const i16; T] = std::array::from_fn(|i| x.token(t + i).0.as_ptr());
        let xs: [*const f32; T] = std::array::from_fn(|i| x.token(t + i).1.as_ptr());
        let off: [*const i32; T] = std::array::from_fn(|i| x.token_sums(t + i).0.as_ptr());
        // SAFETY: as in q4k_half.
        unsafe {
            let nibble = _mm256_set1_epi16(0xf);
            let high = _mm256_set1_epi16(0x30);
            let six = _mm256_set1_epi16(63);
            let mut acc = [[_mm256_setzero_ps(); T]; 2];
            for s in 0..ns {
                let rec = panel.as_ptr().add(s * Q6K_RECORD);
                let d = _mm256_cvtph_ps(_mm_loadu_si128(rec.add(Q6K_D + 16 * half).cast()));
                for j in 0..SUBS {
                    let b = s * SUBS + j;
                    let q = rec.add(Q6K_QUANTS + j * Q6K_SUB + half * PLANE / 2);
                    for (h, acc) in acc.iter_mut().enumerate() {
                        let plane =
                            |i: usize| _mm256_loadu_si256(q.add((3 * h + i) * PLANE).cast());
                        let (w0, w1, w2) = (plane(0), plane(1), plane(2));
                        // Q6kWords::get for eight rows at once.
                        let v = [
                            _mm256_and_si256(w0, six),
                            _mm256_srli_epi16::<10>(w0),
                            _mm256_and_si256(w1, six),
                            _mm256_srli_epi16::<10>(w1),
                            _mm256_and_si256(w2, six),
                            _mm256_and_si256(_mm256_srli_epi16::<6>(w2), six),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16::<6>(w0), nibble),
                                _mm256_andnot_si256(nibble, _mm256_srli_epi16::<10>(w2)),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16::<6>(w1), nibble),
                                _mm256_and_si256(_mm256_srli_epi16::<8>(w2), high),
                            ),
                        ];
                        let mut sums = [_mm256_setzero_si256(); T];
                        for l in (0..8).step_by(2) {
                            for i in 0..T {
                                let p = |p: usize| _mm256_set1_epi32(pair(xq[i], b, p));
                                let a = _mm256_madd_epi16(v[l], p(8 * h + l));
                                let c = _mm256_madd_epi16(v[l + 1], p(8 * h + l + 1));
                                sums[i] = _mm256_add_epi32(sums[i], _mm256_add_epi32(a, c));
                            }
                        }
                        let at = Q6K_SC + (2 * j + h) * PANEL + 8 * half;
                        let sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64(rec.add(at).cast()));
                        let d1 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(sc));
                        for i in 0..T {
                            let off = _mm256_set1_epi32(*off[i].add(2 * b + h));
                            let sum = _mm256_cvtepi32_ps(_mm256_sub_epi32(sums[i], off));
                            let scale = _mm256_mul_ps(d1, _mm256_set1_ps(*xs[i].add(b)));
                            acc[i] = _mm256_fmadd_ps(sum, scale, acc[i]);
                        }
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

/// Random valid GGUF blocks, and the checks every format's tests run
/// (here, in `legacy` and in the forward pass's).
#[cfg(test)]
pub(crate) mod random {
    use crate::{Activations, BLOCK, Isa, Weights};

    /// A small deterministic generator.
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 16
        }

        pub(crate) fn byte(&mut self) -> u8 {
            self.next() as u8
        }

        /// Uniform in −0.5..0.5.
        pub(crate) fn f32(&mut self) -> f32 {
            (self.next() >> 24) as f32 / (1u64 << 24) as f32 - 0.5
        }

        /// An f16 scale of either sign: mostly ordinary magnitudes
        /// (2⁻¹²..2⁻⁵), sometimes subnormal or zero.
        pub(crate) fn f16(&mut self) -> u16 {
            let sign = (self.byte() as u16 & 1) << 15;
            let man = self.next() as u16 & 0x3ff;
            let exp = match self.byte() % 16 {
                0 => 0,
                1 => return sign,
                _ => 3 + self.byte() as u16 % 8,
            };
            sign | (exp << 10) | man
        }
    }

    /// `rows × cols` of random Q4_K blocks (every bit pattern of the
    /// scales and quants is valid).
    pub(crate) fn q4_k(rng: &mut Rng, rows: usize, cols: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rows * cols / 256 {
            out.extend(rng.f16().to_le_bytes());
            out.extend(rng.f16().to_le_bytes());
            out.extend((0..140).map(|_| rng.byte()));
        }
        out
    }

    /// `rows × cols` of random Q6_K blocks.
    pub(crate) fn q6_k(rng: &mut Rng, rows: usize, cols: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rows * cols / 256 {
            out.extend((0..208).map(|_| rng.byte()));
            out.extend(rng.f16().to_le_bytes());
        }
        out
    }

    /// `rows × cols` of random Q5_K blocks (every bit pattern of the
    /// scales and quants is valid).
    pub(crate) fn q5_k(rng: &mut Rng, rows: usize, cols: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rows * cols / 256 {
            out.extend(rng.f16().to_le_bytes());
            out.extend(rng.f16().to_le_bytes());
            out.extend((0..172).map(|_| rng.byte()));
        }
        out
    }

    /// `rows × cols` of random Q4_0 blocks.
    pub(crate) fn q4_0(rng: &mut Rng, rows: usize, cols: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rows * cols / 32 {
            out.extend(rng.f16().to_le_bytes());
            out.extend((0..16).map(|_| rng.byte()));
        }
        out
    }

    /// `rows × cols` of random Q5_0 blocks.
    pub(crate) fn q5_0(rng: &mut Rng, rows: usize, cols: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rows * cols / 32 {
            out.extend(rng.f16().to_le_bytes());
            out.extend((0..20).map(|_| rng.byte()));
        }
        out
    }

    /// Every element's bits (`−0.0` and NaN told apart).
    pub(crate) fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|v| v.to_bits()).collect()
    }

    /// Checks `y` (from `w`, dequantised as `wf`) against the f32 product
    /// with the unquantised activations `x`: the only error allowed is the
    /// activations' rounding (half a step per value) and float rounding.
    pub(crate) fn check_against_f32(
        wf: &[f32],
        x: &[f32],
        y: &[f32],
        rows: usize,
        cols: usize,
        what: &str,
    ) {
        let tokens = x.len() / cols;
        for t in 0..tokens {
            let xt = &x[t * cols..(t + 1) * cols];
            let steps: Vec<f32> = xt
                .chunks_exact(BLOCK)
                .map(|b| crate::max_abs(b) / 32767.0)
                .collect();
            for r in 0..rows {
                let wr = &wf[r * cols..(r + 1) * cols];
                let exact: f64 = wr.iter().zip(xt).map(|(w, x)| *w as f64 * *x as f64).sum();
                let magnitude: f64 = wr.iter().zip(xt).map(|(w, x)| (w * x).abs() as f64).sum();
                let bound: f64 = wr
                    .iter()
                    .enumerate()
                    .map(|(c, w)| w.abs() as f64 * steps[c / BLOCK] as f64 * 0.5)
                    .sum::<f64>()
                    + magnitude * 1e-5
                    + 1e-12;
                let got = y[t * rows + r] as f64;
                assert!(
                    (exact - got).abs() <= bound,
                    "{what}: t{t} r{r}: {exact} vs {got}, bound {bound}"
                );
            }
        }
    }

    /// Matrices of some formats as `Weights`, with their values as ggml
    /// dequantises them.
    pub(crate) type Cases = Vec<(Weights, Vec<f32>)>;

    /// For each shape and each of `make`'s matrices: the product matches
    /// f32, and every instruction set gives the same bits, threaded or
    /// not, for batches of several sizes.
    pub(crate) fn check_products(
        rng: &mut Rng,
        shapes: &[(usize, usize)],
        mut make: impl FnMut(&mut Rng, usize, usize) -> Cases,
    ) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for &(rows, cols) in shapes {
            for (w, wf) in make(rng, rows, cols) {
                for tokens in [1, 2, 5, 8, 13] {
                    let x: Vec<f32> = (0..tokens * cols).map(|_| rng.f32() * 8.0).collect();
                    let mut a = Activations::default();
                    a.quantize(&x, cols);
                    let mut y = vec![0f32; tokens * rows];
                    w.matmul(&a, &mut y, Some(&pool));
                    let what = format!("{} {rows}×{cols}, {tokens} tokens", w.format());
                    check_against_f32(&wf, &x, &y, rows, cols, &what);
                    for isa in Isa::available() {
                        let mut other = vec![f32::NAN; tokens * rows];
                        w.matmul_on(isa, &a, &mut other, None);
                        assert_eq!(bits(&other), bits(&y), "{what}, {isa:?}");
                        w.matmul_on(isa, &a, &mut other, Some(&pool));
                        assert_eq!(bits(&other), bits(&y), "{what}, {isa:?} threaded");
                    }
                }
            }
        }
    }

    /// Each token of a batch gets the bits it gets alone, on every
    /// instruction set.
    pub(crate) fn check_batched_equals_alone(rng: &mut Rng, cases: Cases, cols: usize) {
        let tokens = 11;
        for (w, _) in cases {
            let rows = w.rows();
            let x: Vec<f32> = (0..tokens * cols).map(|_| rng.f32()).collect();
            let mut a = Activations::default();
            a.quantize(&x, cols);
            for isa in Isa::available() {
                let mut batch = vec![0f32; tokens * rows];
                w.matmul_on(isa, &a, &mut batch, None);
                let mut one = Activations::default();
                for t in 0..tokens {
                    one.quantize(&x[t * cols..(t + 1) * cols], cols);
                    let mut alone = vec![0f32; rows];
                    w.matmul_on(isa, &one, &mut alone, None);
                    let want = &batch[t * rows..(t + 1) * rows];
                    assert_eq!(bits(&alone), bits(want), "{} {isa:?} token {t}", w.format());
                }
            }
        }
    }

    /// Full-scale activations of both signs times extreme blocks: the
    /// products match f32 and every path gives the same bits (no sum
    /// overflows or is rounded differently anywhere).
    pub(crate) fn check_extremes(cases: Cases, rows: usize, cols: usize) {
        for (w, wf) in cases {
            for sign in [1.0f32, -1.0] {
                let x = vec![sign * 3.0; 2 * cols];
                let mut act = Activations::default();
                act.quantize(&x, cols);
                let mut y = vec![0f32; 2 * rows];
                w.matmul_on(Isa::Scalar, &act, &mut y, None);
                check_against_f32(&wf, &x, &y, rows, cols, w.format());
                for isa in Isa::available() {
                    let mut other = vec![0f32; 2 * rows];
                    w.matmul_on(isa, &act, &mut other, None);
                    assert_eq!(bits(&other), bits(&y), "{} {isa:?}", w.format());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::random::{
        Cases, Rng, bits, check_batched_equals_alone, check_extremes, check_products, q4_k, q5_k,
        q6_k,
    };
    use super::*;

    /// ggml's `get_scale_min_k4`: sub-block `j`'s 6-bit scale and min.
    fn scale_min(scales: &[u8], j: usize) -> (u8, u8) {
        if j < 4 {
            (scales[j] & 63, scales[j + 4] & 63)
        } else {
            (
                (scales[j + 4] & 0xf) | ((scales[j - 4] >> 6) << 4),
                (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
            )
        }
    }

    /// ggml's `dequantize_row_q4_K`, written out from the format.
    fn reference_q4_k(bytes: &[u8]) -> Vec<f32> {
        let mut out = Vec::new();
        for b in bytes.chunks_exact(144) {
            let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            let dmin = f16_to_f32(u16::from_le_bytes([b[2], b[3]]));
            let scales = &b[4..16];
            for chunk in 0..4 {
                let q = &b[16 + 32 * chunk..][..32];
                let (sc, m) = scale_min(scales, 2 * chunk);
                let (d1, m1) = (d * sc as f32, dmin * m as f32);
                out.extend(q.iter().map(|q| d1 * (q & 0xf) as f32 - m1));
                let (sc, m) = scale_min(scales, 2 * chunk + 1);
                let (d2, m2) = (d * sc as f32, dmin * m as f32);
                out.extend(q.iter().map(|q| d2 * (q >> 4) as f32 - m2));
            }
        }
        out
    }

    /// ggml's `dequantize_row_q5_K`, written out from the format: Q4_K's
    /// nibbles, plus 16 where bit `2·chunk` (first half of a chunk of 64)
    /// or `2·chunk + 1` (second half) of high byte `l` is set.
    fn reference_q5_k(bytes: &[u8]) -> Vec<f32> {
        let mut out = Vec::new();
        for b in bytes.chunks_exact(176) {
            let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            let dmin = f16_to_f32(u16::from_le_bytes([b[2], b[3]]));
            let scales = &b[4..16];
            let qh = &b[16..48];
            let (mut u1, mut u2) = (1u8, 2u8);
            for chunk in 0..4 {
                let ql = &b[48 + 32 * chunk..][..32];
                let (sc, m) = scale_min(scales, 2 * chunk);
                let (d1, m1) = (d * sc as f32, dmin * m as f32);
                out.extend(ql.iter().zip(qh).map(|(q, h)| {
                    let high = if h & u1 != 0 { 16 } else { 0 };
                    d1 * ((q & 0xf) + high) as f32 - m1
                }));
                let (sc, m) = scale_min(scales, 2 * chunk + 1);
                let (d2, m2) = (d * sc as f32, dmin * m as f32);
                out.extend(ql.iter().zip(qh).map(|(q, h)| {
                    let high = if h & u2 != 0 { 16 } else { 0 };
                    d2 * ((q >> 4) + high) as f32 - m2
                }));
                u1 <<= 2;
                u2 <<= 2;
            }
        }
        out
    }

    /// ggml's `dequantize_row_q6_K`, written out from the format.
    fn reference_q6_k(bytes: &[u8]) -> Vec<f32> {
        let mut out = Vec::new();
        for b in bytes.chunks_exact(210) {
            let d = f16_to_f32(u16::from_le_bytes([b[208], b[209]]));
            let mut y = [0f32; 256];
            for half in 0..2 {
                let ql = &b[64 * half..];
                let qh = &b[128 + 32 * half..];
                let sc = &b[192 + 8 * half..];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i8 - 32;
                    let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                    let y = &mut y[128 * half..];
                    y[l] = d * sc[is] as i8 as f32 * q1 as f32;
                    y[l + 32] = d * sc[is + 2] as i8 as f32 * q2 as f32;
                    y[l + 64] = d * sc[is + 4] as i8 as f32 * q3 as f32;
                    y[l + 96] = d * sc[is + 6] as i8 as f32 * q4 as f32;
                }
            }
            out.extend(y);
        }
        out
    }

    /// The three formats as `Weights`, with their dequantised values.
    fn matrices(rng: &mut Rng, rows: usize, cols: usize) -> Cases {
        let (a, b, c) = (
            q4_k(rng, rows, cols),
            q5_k(rng, rows, cols),
            q6_k(rng, rows, cols),
        );
        vec![
            (
                Q4KMatrix::from_q4_k(&a, rows, cols).into(),
                reference_q4_k(&a),
            ),
            (
                Q5KMatrix::from_q5_k(&b, rows, cols).into(),
                reference_q5_k(&b),
            ),
            (
                Q6KMatrix::from_q6_k(&c, rows, cols).into(),
                reference_q6_k(&c),
            ),
        ]
    }

    #[test]
    fn f16_widens_like_the_hardware() {
        let soft: Vec<u32> = (0..=u16::MAX).map(|h| f16_to_f32(h).to_bits()).collect();
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert!(f16_to_f32(0x7c01).is_nan() && f16_to_f32(0xfc00) == f32::NEG_INFINITY);
        #[cfg(target_arch = "x86_64")]
        if crate::avx2() {
            // SAFETY: F16C present (checked).
            let hard = unsafe { widen_all() };
            assert_eq!(soft, hard);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "f16c")]
    unsafe fn widen_all() -> Vec<u32> {
        use std::arch::x86_64::*;
        (0..=u16::MAX)
            .map(|h| _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(h as i16))).to_bits())
            .collect()
    }

    /// Every 5-bit value in every position of the five words comes back,
    /// beside any neighbours.
    #[test]
    fn five_bit_words_hold_sixteen_values() {
        let mut rng = Rng(8);
        for _ in 0..200 {
            let values: [u8; 16] = std::array::from_fn(|_| rng.byte() & 31);
            let mut words = Q5Words::default();
            for (l, &v) in values.iter().enumerate() {
                words.set(l, v);
            }
            for (l, &v) in values.iter().enumerate() {
                assert_eq!(words.get(l), v, "value {l} of {values:?}");
            }
        }
        let mut full = Q5Words::default();
        (0..16).for_each(|l| full.set(l, 31));
        assert_eq!(full.0, [u16::MAX; 5], "eighty bits, none spare");
    }

    #[test]
    fn rows_equal_the_gguf_formula_and_the_bytes_come_back() {
        let mut rng = Rng(3);
        for (rows, cols) in [(1usize, 256), (19, 512), (33, 768)] {
            let panels = rows.div_ceil(16) * cols / 256 * 16;
            let a = q4_k(&mut rng, rows, cols);
            let m = Q4KMatrix::from_q4_k(&a, rows, cols);
            assert_eq!(m.to_q4_k(), a, "Q4_K {rows}×{cols}");
            assert_eq!(m.bytes(), panels * 148);
            let b = q5_k(&mut rng, rows, cols);
            let m5 = Q5KMatrix::from_q5_k(&b, rows, cols);
            assert_eq!(m5.to_q5_k(), b, "Q5_K {rows}×{cols}");
            assert_eq!(m5.bytes(), panels * 180);
            let c = q6_k(&mut rng, rows, cols);
            let m6 = Q6KMatrix::from_q6_k(&c, rows, cols);
            assert_eq!(m6.to_q6_k(), c, "Q6_K {rows}×{cols}");
            assert_eq!(m6.bytes(), panels * 210);
            let mut row = vec![0f32; cols];
            for (w, expected) in [
                (crate::Weights::from(m), reference_q4_k(&a)),
                (m5.into(), reference_q5_k(&b)),
                (m6.into(), reference_q6_k(&c)),
            ] {
                for r in 0..rows {
                    w.row(r, &mut row);
                    let want = &expected[r * cols..(r + 1) * cols];
                    // Bit for bit (−0.0 and NaN included).
                    assert_eq!(bits(&row), bits(want), "{} row {r}", w.format());
                }
            }
        }
    }

    #[test]
    fn products_match_f32_and_every_path_gives_the_same_bits() {
        // Odd row counts pad the last panel; several super-blocks per row.
        let shapes = [(1, 256), (17, 512), (45, 256), (70, 1024)];
        check_products(&mut Rng(11), &shapes, matrices);
    }

    #[test]
    fn a_token_gets_the_same_bits_alone_or_in_a_batch() {
        let mut rng = Rng(5);
        let cases = matrices(&mut rng, 37, 512);
        check_batched_equals_alone(&mut rng, cases, 512);
    }

    /// The largest integer sums the formats allow (full-scale activations,
    /// extreme quants and scales) stay exact on every path.
    #[test]
    fn extreme_blocks_stay_exact() {
        let (rows, cols) = (16, 256);
        // Q4_K: q = 15, sc = m = 63, d = dmin = 1.
        let mut a = [0u8; 144];
        a[0..2].copy_from_slice(&0x3c00u16.to_le_bytes());
        a[2..4].copy_from_slice(&0x3c00u16.to_le_bytes());
        a[4..].fill(0xff);
        let a: Vec<u8> = a.repeat(rows);
        // Q5_K: q = 31, sc = m = 63, d = dmin = 1: Σ q·x = 32·31·32767
        // per sub-block, past f32's exact integers (the conversion rounds
        // the same way everywhere).
        let mut b = [0u8; 176];
        b[0..2].copy_from_slice(&0x3c00u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x3c00u16.to_le_bytes());
        b[4..].fill(0xff);
        let b: Vec<u8> = b.repeat(rows);
        // Q6_K: q − 32 = −32 everywhere, sc = −128, d = 1.
        let mut c = [0u8; 210];
        c[192..208].fill(0x80);
        c[208..210].copy_from_slice(&0x3c00u16.to_le_bytes());
        let c: Vec<u8> = c.repeat(rows);
        let cases = vec![
            (
                Q4KMatrix::from_q4_k(&a, rows, cols).into(),
                reference_q4_k(&a),
            ),
            (
                Q5KMatrix::from_q5_k(&b, rows, cols).into(),
                reference_q5_k(&b),
            ),
            (
                Q6KMatrix::from_q6_k(&c, rows, cols).into(),
                reference_q6_k(&c),
            ),
        ];
        check_extremes(cases, rows, cols);
    }
}
