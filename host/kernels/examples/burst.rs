//! The serving burst on a model of SmolLM2-135M's shape (random weights):
//! one sequence evaluates a shared 470-token prompt prefix, then eight
//! sequences that share it evaluate 20 tokens each in one pass (what eight
//! chats arriving together cost before their first token), then the eight
//! decode 32 tokens together.
//!
//! `cargo run --release -p hearth-kernels --example burst [THREADS]`

use hearth_kernels::llama::{Config, KvCache, Llama, Step};
use std::time::Instant;

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .map_or(1, |t| t.parse().expect("THREADS is a number"));
    let cfg = Config {
        dim: 576,
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
        ffn: 1536,
        eps: 1e-5,
        rope_base: 100_000.0,
        rope_dim: 64,
        rope_halves: false,
    };
    let mut model = Llama::random(cfg, 30, 49_152, 0.1, threads).unwrap();
    let tokens = |n: usize, salt: u32| -> Vec<u32> {
        (0..n as u32)
            .map(|i| (i * 7919 + salt * 104_729) % 49_152)
            .collect()
    };
    for round in 0..3 {
        let mut prefix = KvCache::default();
        let t = Instant::now();
        model
            .forward_batch(&mut [Step {
                cache: &mut prefix,
                tokens: &tokens(470, 0),
            }])
            .unwrap();
        let prefix_s = t.elapsed().as_secs_f64();
        let mut caches: Vec<KvCache> = (0..8)
            .map(|_| {
                let mut c = KvCache::default();
                c.share_prefix(&mut prefix, 470);
                c
            })
            .collect();
        let tails: Vec<Vec<u32>> = (1..=8).map(|s| tokens(20, s)).collect();
        let t = Instant::now();
        let mut steps: Vec<Step<'_>> = caches
            .iter_mut()
            .zip(&tails)
            .map(|(cache, tail)| Step {
                cache,
                tokens: tail,
            })
            .collect();
        model.forward_batch(&mut steps).unwrap();
        let burst_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for i in 0..32u32 {
            let next: Vec<[u32; 1]> = (0..8).map(|s| [(i * 31 + s) % 49_152]).collect();
            let mut steps: Vec<Step<'_>> = caches
                .iter_mut()
                .zip(&next)
                .map(|(cache, tokens)| Step { cache, tokens })
                .collect();
            model.forward_batch(&mut steps).unwrap();
        }
        let decode_s = t.elapsed().as_secs_f64();
        println!(
            "round {round}: prefix 470 tokens {:.0} ms ({:.0} tok/s); burst 8 x 20 tokens {:.0} ms ({:.0} tok/s); decode 8 x 32 {:.0} tok/s",
            prefix_s * 1e3,
            470.0 / prefix_s,
            burst_s * 1e3,
            160.0 / burst_s,
            256.0 / decode_s
        );
    }
}
