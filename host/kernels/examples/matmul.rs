//! Matrix-product throughput on every instruction set this CPU has, in the
//! same run, for SmolLM2-135M's shapes: a prompt-sized batch and a decode
//! batch. Reports multiply-accumulates per second and each path's ratio to
//! the portable one.
//!
//! `cargo run --release -p hearth-kernels --example matmul [THREADS]`

use hearth_kernels::{Activations, Isa, Q8Matrix, matmul_on};
use std::time::Instant;

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .map_or(1, |t| t.parse().expect("THREADS is a number"));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut seed = 7u64;
    let mut next = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    // (rows, cols): fused QKV, output, gate+up, down.
    let shapes = [(960, 576), (576, 576), (3072, 576), (576, 1536)];
    let mats: Vec<Q8Matrix> = shapes
        .iter()
        .map(|&(r, c)| {
            let w: Vec<f32> = (0..r * c).map(|_| next()).collect();
            Q8Matrix::from_f32(&w, r, c)
        })
        .collect();
    println!("| tokens | isa | GMAC/s | vs scalar |");
    println!("|---:|---|---:|---:|");
    for tokens in [160, 8, 1] {
        let acts: Vec<Activations> = shapes
            .iter()
            .map(|&(_, c)| {
                let x: Vec<f32> = (0..tokens * c).map(|_| next()).collect();
                let mut a = Activations::default();
                a.quantize(&x, c);
                a
            })
            .collect();
        let macs: usize = shapes.iter().map(|(r, c)| r * c * tokens).sum();
        let mut base = None;
        for isa in Isa::available() {
            let run = || {
                for (m, a) in mats.iter().zip(&acts) {
                    let mut y = vec![0f32; tokens * m.rows()];
                    matmul_on(isa, m, a, &mut y, Some(&pool));
                }
            };
            run();
            // Enough repetitions for about half a second.
            let t = Instant::now();
            run();
            let once = t.elapsed().as_secs_f64();
            let reps = ((0.5 / once) as usize).clamp(1, 10_000);
            let t = Instant::now();
            for _ in 0..reps {
                run();
            }
            let rate = (macs * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
            let base = *base.get_or_insert(rate);
            println!("| {tokens} | {isa:?} | {rate:.2} | {:.2} |", rate / base);
        }
    }
}
