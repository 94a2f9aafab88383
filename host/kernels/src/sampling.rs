//! The numeric side of sampling, here so that it runs optimised in every
//! build: it touches every logit of the vocabulary once per token and
//! sequence, so in an unoptimised build it cost more than the model.

/// Logits further than this below the best (after temperature) are left
/// out: their weight is under e^-30 of the best token's, so even all of a
/// large vocabulary together change the total by less than f32 precision.
const CUTOFF: f32 = 30.0;

/// Index of the largest value, the first one on ties (0 for an empty slice).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// The tokens to sample from, best first, as `(id, weight)` with
/// `weight = exp((logit - max) * inv_temperature)` (not normalised): the
/// `top_k` best (0 = all), then the fewest whose weights reach `top_p` of
/// the total. Non-finite logits (masked by a constraint) are never
/// candidates; empty when none is finite.
///
/// Only as much of the vocabulary is sorted as the cut needs: usually the
/// first few dozen tokens carry `top_p` of the mass.
pub fn nucleus(
    logits: &[f32],
    inv_temperature: f32,
    top_k: usize,
    top_p: f32,
    out: &mut Vec<(u32, f32)>,
) {
    out.clear();
    let max = logits
        .iter()
        .copied()
        .filter(|l| l.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return;
    }
    out.extend(
        logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, l)| (i as u32, (l - max) * inv_temperature))
            .filter(|(_, s)| *s > -CUTOFF)
            .map(|(i, s)| (i, s.exp())),
    );
    let better = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if top_k > 0 && out.len() > top_k {
        out.select_nth_unstable_by(top_k - 1, better);
        out.truncate(top_k);
    }
    if top_p >= 1.0 {
        out.sort_unstable_by(better);
        return;
    }
    let total: f32 = out.iter().map(|e| e.1).sum();
    let goal = top_p * total;
    // Try the best few first; sort everything only if they fall short.
    for head in [64, usize::MAX] {
        let n = head.min(out.len());
        if n < out.len() {
            out.select_nth_unstable_by(n - 1, better);
        }
        out[..n].sort_unstable_by(better);
        let mut cum = 0.0;
        for i in 0..n {
            cum += out[i].1;
            if cum >= goal {
                out.truncate(i + 1);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nucleus_keeps_the_best_tokens_in_order() {
        let logits = [1.0, f32::NEG_INFINITY, 3.0, -100.0, 3.0, 2.0];
        let mut out = Vec::new();
        nucleus(&logits, 0.5, 0, 1.0, &mut out);
        let ids: Vec<u32> = out.iter().map(|e| e.0).collect();
        assert_eq!(ids, [2, 4, 5, 0]);
        assert_eq!(out[0].1, 1.0);
        assert!((out[2].1 - (-0.5f32).exp()).abs() < 1e-6);
        nucleus(&logits, 1.0, 2, 1.0, &mut out);
        assert_eq!(out.len(), 2);
        // Weights 1, 1, e^-1, e^-2: the two best hold 0.73 of the mass.
        nucleus(&logits, 1.0, 0, 0.7, &mut out);
        assert_eq!(out.len(), 2);
        nucleus(&logits, 1.0, 0, 0.8, &mut out);
        assert_eq!(out.len(), 3);
        nucleus(&[f32::NEG_INFINITY; 3], 1.0, 0, 0.9, &mut out);
        assert!(out.is_empty());
        assert_eq!(argmax(&[0.5, 2.0, 2.0, -1.0]), 1);
    }

    #[test]
    fn a_flat_distribution_falls_back_to_sorting_everything() {
        let logits = vec![0.0f32; 1000];
        let mut out = Vec::new();
        nucleus(&logits, 1.0, 0, 0.9, &mut out);
        assert_eq!(out.len(), 900);
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
