//! Sampling: the parameters users set and the choice of the next token.

use super::error::EngineError;
use hearth_kernels::sampling::{argmax, nucleus};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

/// How to pick tokens. Defaults are the recommended ones: 512 new tokens,
/// temperature 0.7, top-p 0.9, repeat penalty 1.1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 means greedy (always the most likely token).
    pub temperature: f32,
    /// Nucleus: sample from the smallest set of tokens whose probabilities
    /// add up to this (1 = off).
    pub top_p: f32,
    /// Sample from the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Divides the logits of tokens seen in the last `repeat_last_n`
    /// tokens (1 = off).
    pub repeat_penalty: f32,
    /// How far back the repeat penalty looks.
    pub repeat_last_n: usize,
    /// Seed for reproducible sampling (random when absent).
    pub seed: Option<u64>,
    /// Strings that end generation; they are not part of the output.
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_new_tokens: 512,
            temperature: 0.7,
            top_p: 0.9,
            top_k: 0,
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            seed: None,
            stop: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Greedy decoding with no repeat penalty: the same output every time.
    pub fn greedy(max_new_tokens: usize) -> SamplingParams {
        SamplingParams {
            max_new_tokens,
            temperature: 0.0,
            repeat_penalty: 1.0,
            ..SamplingParams::default()
        }
    }

    /// Rejects values outside their ranges, naming the parameter.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |name, reason: String| Err(EngineError::InvalidParameter { name, reason });
        if self.max_new_tokens == 0 {
            return bad("max_tokens", "must be at least 1".into());
        }
        if !self.temperature.is_finite() || !(0.0..=2.0).contains(&self.temperature) {
            return bad(
                "temperature",
                format!("{} is outside 0..=2", self.temperature),
            );
        }
        if !self.top_p.is_finite() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return bad("top_p", format!("{} is outside (0, 1]", self.top_p));
        }
        // The negated range also catches NaN.
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty <= 10.0) {
            return bad(
                "repeat_penalty",
                format!("{} is outside (0, 10]", self.repeat_penalty),
            );
        }
        if self.stop.len() > 16 {
            return bad(
                "stop",
                format!("{} stop sequences; at most 16", self.stop.len()),
            );
        }
        if let Some(s) = self.stop.iter().find(|s| s.is_empty() || s.len() > 256) {
            return bad(
                "stop",
                format!(
                    "stop sequences must be 1..=256 bytes, got {} bytes",
                    s.len()
                ),
            );
        }
        Ok(())
    }
}

/// Picks tokens from logits according to [`SamplingParams`].
#[derive(Debug)]
pub struct Sampler {
    rng: StdRng,
    params: SamplingParams,
    scratch: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler seeded from `params.seed`, or randomly.
    pub fn new(params: &SamplingParams) -> Sampler {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Sampler {
            rng,
            params: params.clone(),
            scratch: Vec::new(),
        }
    }

    /// Chooses the next token. `logits` is modified in place (penalties);
    /// entries set to -inf (by an output constraint) are never chosen.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if p.repeat_penalty != 1.0 {
            let start = history.len().saturating_sub(p.repeat_last_n);
            let mut seen = history[start..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    // Shrinks a likely token whichever side of zero it is on.
                    *l = if *l >= 0.0 {
                        *l / p.repeat_penalty
                    } else {
                        *l * p.repeat_penalty
                    };
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        let c = &mut self.scratch;
        nucleus(logits, 1.0 / p.temperature, p.top_k, p.top_p, c);
        if c.is_empty() {
            return argmax(logits);
        }
        let total: f32 = c.iter().map(|e| e.1).sum();
        let mut r = self.rng.random::<f32>() * total;
        for e in c.iter() {
            if r < e.1 {
                return e.0;
            }
            r -= e.1;
        }
        c.last().map_or(0, |e| e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_values_are_rejected_by_name() {
        let named = |p: SamplingParams| match p.validate() {
            Err(EngineError::InvalidParameter { name, .. }) => name,
            other => panic!("{other:?}"),
        };
        let d = SamplingParams::default;
        assert_eq!(
            named(SamplingParams {
                temperature: -1.0,
                ..d()
            }),
            "temperature"
        );
        assert_eq!(
            named(SamplingParams {
                temperature: f32::NAN,
                ..d()
            }),
            "temperature"
        );
        assert_eq!(named(SamplingParams { top_p: 0.0, ..d() }), "top_p");
        assert_eq!(named(SamplingParams { top_p: 1.5, ..d() }), "top_p");
        assert_eq!(
            named(SamplingParams {
                max_new_tokens: 0,
                ..d()
            }),
            "max_tokens"
        );
        assert_eq!(
            named(SamplingParams {
                repeat_penalty: 0.0,
                ..d()
            }),
            "repeat_penalty"
        );
        assert_eq!(
            named(SamplingParams {
                stop: vec![String::new()],
                ..d()
            }),
            "stop"
        );
        d().validate().unwrap();
    }

    #[test]
    fn greedy_takes_the_maximum_and_masks_hold() {
        let mut s = Sampler::new(&SamplingParams::greedy(1));
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.0], &[]), 1);
        let mut s = Sampler::new(&SamplingParams {
            seed: Some(1),
            ..Default::default()
        });
        for _ in 0..200 {
            let t = s.sample(&mut [f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY, 1.0], &[]);
            assert!(t == 1 || t == 3);
        }
    }

    #[test]
    fn a_seed_gives_the_same_choices_and_top_k_limits_them() {
        let params = SamplingParams {
            seed: Some(7),
            temperature: 1.0,
            top_p: 1.0,
            repeat_penalty: 1.0,
            ..Default::default()
        };
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |p: &SamplingParams| {
            let mut s = Sampler::new(p);
            (0..100)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(&params), run(&params));
        let top1 = SamplingParams {
            top_k: 1,
            ..params.clone()
        };
        let picks = run(&top1);
        assert!(picks.iter().all(|t| *t == picks[0]));
    }

    #[test]
    fn repeat_penalty_lowers_seen_tokens() {
        let mut s = Sampler::new(&SamplingParams {
            repeat_penalty: 2.0,
            ..SamplingParams::greedy(1)
        });
        assert_eq!(s.sample(&mut [1.0, 1.5], &[1]), 0);
    }
}
