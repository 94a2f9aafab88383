//! Any weight matrix the forward pass can hold.

use crate::image::{Reader, Writer};
use crate::{
    Activations, Isa, Panels, Q4_0Matrix, Q4KMatrix, Q5_0Matrix, Q5KMatrix, Q6KMatrix, Q8Matrix,
    product,
};

/// A weight matrix in whichever format its file gave: 8-bit blocks, or
/// GGUF's Q4_K, Q5_K, Q6_K, Q4_0 or Q5_0 kept as they are.
///
/// A fused projection whose parts differ in format (a Q4_K_M file stores
/// some layers' V or down projections as Q6_K beside Q4_K ones) is a
/// [`Weights::Mixed`]: each part keeps its own format and bits, and one
/// product runs them all (see [`Weights::stack`]).
#[derive(Debug, Clone)]
pub enum Weights {
    /// 8-bit weights, a scale per 32 (Q8_0, or anything requantised).
    Q8(Q8Matrix),
    /// GGUF Q4_K.
    Q4K(Q4KMatrix),
    /// GGUF Q5_K.
    Q5K(Q5KMatrix),
    /// GGUF Q6_K.
    Q6K(Q6KMatrix),
    /// GGUF Q4_0.
    Q4_0(Q4_0Matrix),
    /// GGUF Q5_0.
    Q5_0(Q5_0Matrix),
    /// Row blocks of different formats, stacked in order: at least two,
    /// none of them `Mixed`, neighbours of different formats.
    Mixed(Vec<Weights>),
}

impl From<Q8Matrix> for Weights {
    fn from(m: Q8Matrix) -> Weights {
        Weights::Q8(m)
    }
}

impl From<Q4KMatrix> for Weights {
    fn from(m: Q4KMatrix) -> Weights {
        Weights::Q4K(m)
    }
}

impl From<Q5KMatrix> for Weights {
    fn from(m: Q5KMatrix) -> Weights {
        Weights::Q5K(m)
    }
}

impl From<Q6KMatrix> for Weights {
    fn from(m: Q6KMatrix) -> Weights {
        Weights::Q6K(m)
    }
}

impl From<Q4_0Matrix> for Weights {
    fn from(m: Q4_0Matrix) -> Weights {
        Weights::Q4_0(m)
    }
}

impl From<Q5_0Matrix> for Weights {
    fn from(m: Q5_0Matrix) -> Weights {
        Weights::Q5_0(m)
    }
}

impl Weights {
    /// Rows.
    pub fn rows(&self) -> usize {
        match self {
            Weights::Q8(m) => m.rows(),
            Weights::Q4K(m) => m.rows(),
            Weights::Q5K(m) => m.rows(),
            Weights::Q6K(m) => m.rows(),
            Weights::Q4_0(m) => m.rows(),
            Weights::Q5_0(m) => m.rows(),
            Weights::Mixed(parts) => parts.iter().map(Weights::rows).sum(),
        }
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        match self {
            Weights::Q8(m) => m.cols(),
            Weights::Q4K(m) => m.cols(),
            Weights::Q5K(m) => m.cols(),
            Weights::Q6K(m) => m.cols(),
            Weights::Q4_0(m) => m.cols(),
            Weights::Q5_0(m) => m.cols(),
            Weights::Mixed(parts) => parts[0].cols(),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Weights::Q8(m) => m.bytes(),
            Weights::Q4K(m) => m.bytes(),
            Weights::Q5K(m) => m.bytes(),
            Weights::Q6K(m) => m.bytes(),
            Weights::Q4_0(m) => m.bytes(),
            Weights::Q5_0(m) => m.bytes(),
            Weights::Mixed(parts) => parts.iter().map(Weights::bytes).sum(),
        }
    }

    /// The format's name, as GGUF spells it (`"mixed"` for a stack of
    /// several).
    pub fn format(&self) -> &'static str {
        match self {
            Weights::Q8(_) => "Q8_0",
            Weights::Q4K(_) => "Q4_K",
            Weights::Q5K(_) => "Q5_K",
            Weights::Q6K(_) => "Q6_K",
            Weights::Q4_0(_) => "Q4_0",
            Weights::Q5_0(_) => "Q5_0",
            Weights::Mixed(_) => "mixed",
        }
    }

    /// Writes the matrix into a weight image: its format's tag, shape and
    /// buffers (see [`crate::image`]).
    pub(crate) fn save<W: std::io::Write + std::io::Seek>(
        &self,
        w: &mut Writer<W>,
    ) -> std::io::Result<()> {
        let mut head = |tag: u64, rows: usize, cols: usize| {
            w.word(tag);
            w.word(rows as u64);
            w.word(cols as u64);
        };
        match self {
            Weights::Q8(m) => {
                head(0, m.rows(), m.cols());
                let (quants, scales) = m.raw();
                w.blob(quants)?;
                w.blob(scales)
            }
            Weights::Q4K(m) => {
                head(1, m.rows(), m.cols());
                w.blob(m.raw())
            }
            Weights::Q5K(m) => {
                head(2, m.rows(), m.cols());
                w.blob(m.raw())
            }
            Weights::Q6K(m) => {
                head(3, m.rows(), m.cols());
                w.blob(m.raw())
            }
            Weights::Q4_0(m) => {
                head(4, m.rows(), m.cols());
                w.blob(m.raw())
            }
            Weights::Q5_0(m) => {
                head(5, m.rows(), m.cols());
                w.blob(m.raw())
            }
            Weights::Mixed(parts) => {
                w.word(6);
                w.word(parts.len() as u64);
                parts.iter().try_for_each(|p| p.save(w))
            }
        }
    }

    /// Reads a matrix [`Weights::save`] wrote; its buffers stay in the
    /// image.
    pub(crate) fn load(r: &mut Reader<'_>) -> Result<Weights, String> {
        Weights::load_part(r, true)
    }

    fn load_part(r: &mut Reader<'_>, top: bool) -> Result<Weights, String> {
        let tag = r.word()?;
        if tag == 6 {
            let n = r.size()?;
            // A mixed matrix is at least two parts, none of them mixed,
            // of at most the six formats in turn... a handful in practice.
            if !top || !(2..=64).contains(&n) {
                return Err(format!("a mixed matrix of {n} parts in the weight image"));
            }
            let parts = (0..n)
                .map(|_| Weights::load_part(r, false))
                .collect::<Result<Vec<_>, _>>()?;
            if parts.iter().any(|p| p.cols() != parts[0].cols()) {
                return Err("a mixed matrix whose parts differ in columns".into());
            }
            return Ok(Weights::Mixed(parts));
        }
        let (rows, cols) = (r.size()?, r.size()?);
        let image = r.image();
        Ok(match tag {
            0 => Q8Matrix::mapped(image, rows, cols, r.span()?, r.span()?)?.into(),
            1 => {
                let (start, len) = r.span()?;
                Q4KMatrix::mapped(image, rows, cols, start, len)?.into()
            }
            2 => {
                let (start, len) = r.span()?;
                Q5KMatrix::mapped(image, rows, cols, start, len)?.into()
            }
            3 => {
                let (start, len) = r.span()?;
                Q6KMatrix::mapped(image, rows, cols, start, len)?.into()
            }
            4 => {
                let (start, len) = r.span()?;
                Q4_0Matrix::mapped(image, rows, cols, start, len)?.into()
            }
            5 => {
                let (start, len) = r.span()?;
                Q5_0Matrix::mapped(image, rows, cols, start, len)?.into()
            }
            other => {
                return Err(format!(
                    "a matrix of unknown format {other} in the weight image"
                ));
            }
        })
    }

    /// Row `r` as f32 (embedding lookups).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        match self {
            Weights::Q8(m) => m.row(r, out),
            Weights::Q4K(m) => m.row(r, out),
            Weights::Q5K(m) => m.row(r, out),
            Weights::Q6K(m) => m.row(r, out),
            Weights::Q4_0(m) => m.row(r, out),
            Weights::Q5_0(m) => m.row(r, out),
            Weights::Mixed(parts) => {
                let mut r = r;
                for part in parts {
                    if r < part.rows() {
                        return part.row(r, out);
                    }
                    r -= part.rows();
                }
                panic!("row out of range");
            }
        }
    }

    /// Stacks matrices with the same column count (fused projections such
    /// as Q, K and V).
    ///
    /// Neighbouring parts of the same format are merged into one matrix
    /// of that format, bits unchanged; when the formats differ the result
    /// is [`Weights::Mixed`], whose parts also keep their bits: nothing is
    /// converted or requantised, so a Q4_K_M file's fused QKV of Q4_K Q
    /// and K with a Q6_K V costs what the three tensors cost in the file.
    ///
    /// # Panics
    /// If there are no parts or their column counts differ.
    pub fn stack(parts: impl IntoIterator<Item = Weights>) -> Weights {
        let mut flat = Vec::new();
        for part in parts {
            match part {
                Weights::Mixed(inner) => flat.extend(inner),
                other => flat.push(other),
            }
        }
        assert!(!flat.is_empty(), "nothing to stack");
        let cols = flat[0].cols();
        assert!(
            flat.iter().all(|p| p.cols() == cols),
            "column counts differ"
        );
        let mut runs: Vec<Vec<Weights>> = Vec::new();
        for part in flat {
            match runs.last_mut() {
                Some(run) if std::mem::discriminant(&run[0]) == std::mem::discriminant(&part) => {
                    run.push(part)
                }
                _ => runs.push(vec![part]),
            }
        }
        let mut merged: Vec<Weights> = runs.into_iter().map(merge).collect();
        if merged.len() == 1 {
            merged.pop().unwrap()
        } else {
            Weights::Mixed(merged)
        }
    }

    /// `y = x · Wᵀ` for every token on the best instruction set: `y` is
    /// `tokens × rows`, row-major. The same guarantees as
    /// [`crate::matmul`]: the same bits on every instruction set, for any
    /// batch and any split over threads.
    pub fn matmul(&self, x: &Activations, y: &mut [f32], pool: Option<&rayon::ThreadPool>) {
        self.matmul_on(Isa::detected(), x, y, pool);
    }

    /// [`Weights::matmul`] on a given instruction set, which the CPU must
    /// have (see [`Isa::available`]).
    pub fn matmul_on(
        &self,
        isa: Isa,
        x: &Activations,
        y: &mut [f32],
        pool: Option<&rayon::ThreadPool>,
    ) {
        match self {
            Weights::Mixed(parts) => {
                let parts: Vec<&dyn Panels> = parts.iter().map(Weights::panels).collect();
                product(isa, &parts, x, y, pool);
            }
            single => product(isa, &[single.panels()], x, y, pool),
        }
    }

    /// A single-format matrix as the product driver sees it.
    fn panels(&self) -> &dyn Panels {
        match self {
            Weights::Q8(m) => m,
            Weights::Q4K(m) => m,
            Weights::Q5K(m) => m,
            Weights::Q6K(m) => m,
            Weights::Q4_0(m) => m,
            Weights::Q5_0(m) => m,
            Weights::Mixed(_) => unreachable!("stack flattens mixed parts"),
        }
    }
}

/// One matrix of a run of parts of one format.
fn merge(mut run: Vec<Weights>) -> Weights {
    if run.len() == 1 {
        return run.pop().unwrap();
    }
    macro_rules! parts {
        ($variant:ident) => {
            run.into_iter()
                .map(|w| match w {
                    Weights::$variant(m) => m,
                    _ => unreachable!("a run has one format"),
                })
                .collect::<Vec<_>>()
        };
    }
    match run[0] {
        Weights::Q8(_) => Weights::Q8(Q8Matrix::stack(&parts!(Q8))),
        Weights::Q4K(_) => Weights::Q4K(Q4KMatrix::stack(&parts!(Q4K))),
        Weights::Q5K(_) => Weights::Q5K(Q5KMatrix::stack(&parts!(Q5K))),
        Weights::Q6K(_) => Weights::Q6K(Q6KMatrix::stack(&parts!(Q6K))),
        Weights::Q4_0(_) => Weights::Q4_0(Q4_0Matrix::stack(&parts!(Q4_0))),
        Weights::Q5_0(_) => Weights::Q5_0(Q5_0Matrix::stack(&parts!(Q5_0))),
        Weights::Mixed(_) => unreachable!("stack flattens mixed parts"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kquant::random::{Rng, q4_0, q4_k, q5_0, q5_k, q6_k};

    fn q4(rng: &mut Rng, rows: usize, cols: usize) -> Weights {
        Q4KMatrix::from_q4_k(&q4_k(rng, rows, cols), rows, cols).into()
    }

    fn q6(rng: &mut Rng, rows: usize, cols: usize) -> Weights {
        Q6KMatrix::from_q6_k(&q6_k(rng, rows, cols), rows, cols).into()
    }

    fn q5(rng: &mut Rng, rows: usize, cols: usize) -> Weights {
        Q5KMatrix::from_q5_k(&q5_k(rng, rows, cols), rows, cols).into()
    }

    fn q4_0s(rng: &mut Rng, rows: usize, cols: usize) -> Weights {
        Q4_0Matrix::from_q4_0(&q4_0(rng, rows, cols), rows, cols).into()
    }

    fn q5_0s(rng: &mut Rng, rows: usize, cols: usize) -> Weights {
        Q5_0Matrix::from_q5_0(&q5_0(rng, rows, cols), rows, cols).into()
    }

    fn q8(rng: &mut Rng, rows: usize, cols: usize) -> Weights {
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.f32()).collect();
        Q8Matrix::from_f32(&w, rows, cols).into()
    }

    /// Products of each part, side by side in one output.
    fn side_by_side(parts: &[&Weights], x: &Activations, isa: Isa) -> Vec<f32> {
        let rows: usize = parts.iter().map(|p| p.rows()).sum();
        let tokens = x.tokens;
        let mut y = vec![0f32; tokens * rows];
        let mut first = 0;
        for part in parts {
            let mut own = vec![0f32; tokens * part.rows()];
            part.matmul_on(isa, x, &mut own, None);
            for t in 0..tokens {
                y[t * rows + first..][..part.rows()]
                    .copy_from_slice(&own[t * part.rows()..(t + 1) * part.rows()]);
            }
            first += part.rows();
        }
        y
    }

    #[test]
    fn stacks_keep_every_part_bit_for_bit() {
        let mut rng = Rng(21);
        let cols = 512;
        let (a, b, c, d) = (
            q4(&mut rng, 17, cols),
            q4(&mut rng, 5, cols),
            q6(&mut rng, 9, cols),
            q8(&mut rng, 3, cols),
        );
        let same = Weights::stack([a.clone(), b.clone()]);
        assert!(matches!(same, Weights::Q4K(_)));
        let mixed = Weights::stack([a.clone(), b.clone(), c.clone()]);
        let Weights::Mixed(parts) = &mixed else {
            panic!("{mixed:?}")
        };
        assert_eq!(parts.len(), 2, "the two Q4_K parts are merged");
        assert_eq!((mixed.rows(), mixed.cols()), (31, cols));
        assert_eq!(mixed.bytes(), same.bytes() + c.bytes());
        // A mixed stack stacked again flattens; Q6_K neighbours merge.
        let more = Weights::stack([mixed.clone(), q6(&mut rng, 4, cols), d.clone()]);
        let Weights::Mixed(parts) = &more else {
            panic!("{more:?}")
        };
        assert_eq!(
            parts.iter().map(Weights::format).collect::<Vec<_>>(),
            ["Q4_K", "Q6_K", "Q8_0"]
        );
        // Rows come from the right part.
        let (mut got, mut want) = (vec![0f32; cols], vec![0f32; cols]);
        for (r, part, pr) in [
            (0, &a, 0),
            (16, &a, 16),
            (17, &b, 0),
            (21, &b, 4),
            (22, &c, 0),
        ] {
            mixed.row(r, &mut got);
            part.row(pr, &mut want);
            assert_eq!(got, want, "row {r}");
        }
        let x: Vec<f32> = (0..3 * cols).map(|_| rng.f32()).collect();
        let mut act = Activations::default();
        act.quantize(&x, cols);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for isa in Isa::available() {
            let want = side_by_side(&[&a, &b, &c], &act, isa);
            for (w, threads) in [(&mixed, None), (&mixed, Some(&pool)), (&same, None)] {
                let mut y = vec![0f32; 3 * w.rows()];
                w.matmul_on(isa, &act, &mut y, threads);
                let n = w.rows();
                for t in 0..3 {
                    assert_eq!(y[t * n..][..n], want[t * 31..][..n], "{isa:?}");
                }
            }
        }
        // Q8 through `Weights` is the plain product.
        let mut y = vec![0f32; 3 * 3];
        d.matmul(&act, &mut y, None);
        let Weights::Q8(m) = &d else { unreachable!() };
        let mut plain = vec![0f32; 3 * 3];
        crate::matmul(m, &act, &mut plain, None);
        assert_eq!(y, plain);
    }

    /// Q5_K, Q4_0 and Q5_0 parts stack like the others: neighbours of a
    /// format merge, the rest sit side by side with their own bits.
    #[test]
    fn every_format_stacks_beside_the_others() {
        let mut rng = Rng(31);
        let cols = 512;
        let parts = [
            q4_0s(&mut rng, 5, cols),
            q4_0s(&mut rng, 12, cols),
            q5(&mut rng, 19, cols),
            q5(&mut rng, 2, cols),
            q5_0s(&mut rng, 17, cols),
            q6(&mut rng, 3, cols),
            q5_0s(&mut rng, 1, cols),
        ];
        let stacked = Weights::stack(parts.iter().cloned());
        let Weights::Mixed(inner) = &stacked else {
            panic!("{stacked:?}")
        };
        assert_eq!(
            inner.iter().map(Weights::format).collect::<Vec<_>>(),
            ["Q4_0", "Q5_K", "Q5_0", "Q6_K", "Q5_0"]
        );
        assert_eq!(stacked.bytes(), inner.iter().map(Weights::bytes).sum());
        let rows: usize = parts.iter().map(Weights::rows).sum();
        assert_eq!((stacked.rows(), stacked.cols()), (rows, cols));
        let (mut got, mut want) = (vec![0f32; cols], vec![0f32; cols]);
        let mut r = 0;
        for part in &parts {
            for pr in 0..part.rows() {
                stacked.row(r, &mut got);
                part.row(pr, &mut want);
                assert_eq!(got, want, "row {r}");
                r += 1;
            }
        }
        let x: Vec<f32> = (0..5 * cols).map(|_| rng.f32()).collect();
        let mut act = Activations::default();
        act.quantize(&x, cols);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let refs: Vec<&Weights> = parts.iter().collect();
        for isa in Isa::available() {
            let want = side_by_side(&refs, &act, isa);
            for threads in [None, Some(&pool)] {
                let mut y = vec![0f32; 5 * rows];
                stacked.matmul_on(isa, &act, &mut y, threads);
                assert_eq!(y, want, "{isa:?}");
            }
        }
    }
}
