//! Matrix-product throughput, in the same run:
//!
//! 1. every instruction set this CPU has on SmolLM2-135M's shapes (8-bit
//!    weights): a prompt-sized batch and a decode batch, with each path's
//!    ratio to the portable one;
//! 2. every GGUF format with a native kernel (Q4_K, Q5_K, Q6_K, Q4_0,
//!    Q5_0) against Q8 on a Llama-3.2-1B layer's shapes (QKV
//!    3072×2048, output 2048×2048, gate+up 16384×2048, down 2048×8192;
//!    two layers' worth of distinct matrices, so the weights do not fit in
//!    the last-level cache, as in a real decode): one decoding token and a
//!    64-token prompt, with each format's ratio to Q8. The formats are
//!    timed in turn, several rounds, keeping each one's best, so that other
//!    work on a shared machine skews no ratio.
//!
//! `cargo run --release -p hearth-kernels --example matmul [THREADS] [ROUNDS]`
//! (`HEARTH_CPU_ISA=avx2` caps the instruction sets measured.)

use hearth_kernels::{
    Activations, Isa, Q4_0Matrix, Q4KMatrix, Q5_0Matrix, Q5KMatrix, Q6KMatrix, Q8Matrix, Weights,
    matmul_on,
};
use std::time::Instant;

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .map_or(1, |t| t.parse().expect("THREADS is a number"));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let rounds: usize = std::env::args()
        .nth(2)
        .map_or(5, |r| r.parse().expect("ROUNDS is a number"));
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
    k_quants(&pool, rounds);
}

/// A random f16 in 2⁻¹⁰..2⁻⁶ (the size of a real file's scales).
fn f16(bits: u64) -> [u8; 2] {
    let exp = 5 + (bits % 4) as u16;
    ((exp << 10) | ((bits >> 8) as u16 & 0x3ff)).to_le_bytes()
}

/// Part 2: the GGUF formats against Q8 on a 1B model's shapes.
fn k_quants(pool: &rayon::ThreadPool, rounds: usize) {
    let mut seed = 11u64;
    let mut bits = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        seed >> 16
    };
    let shapes = [(3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192)];
    let layers = 2;
    let mut formats: Vec<(&str, Vec<Weights>)> = ["Q8_0", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q5_0"]
        .into_iter()
        .map(|name| (name, vec![]))
        .collect();
    for _ in 0..layers {
        for &(r, c) in &shapes {
            let w: Vec<f32> = (0..r * c)
                .map(|_| (bits() >> 24) as f32 / (1u64 << 24) as f32 - 0.5)
                .collect();
            formats[0].1.push(Q8Matrix::from_f32(&w, r, c).into());
            let blocks = r * c / 256;
            let mut q4 = Vec::with_capacity(blocks * 144);
            for _ in 0..blocks {
                q4.extend(f16(bits()));
                q4.extend(f16(bits()));
                q4.extend((0..140).map(|_| bits() as u8));
            }
            formats[1].1.push(Q4KMatrix::from_q4_k(&q4, r, c).into());
            let mut q5 = Vec::with_capacity(blocks * 176);
            for _ in 0..blocks {
                q5.extend(f16(bits()));
                q5.extend(f16(bits()));
                q5.extend((0..172).map(|_| bits() as u8));
            }
            formats[2].1.push(Q5KMatrix::from_q5_k(&q5, r, c).into());
            let mut q6 = Vec::with_capacity(blocks * 210);
            for _ in 0..blocks {
                q6.extend((0..208).map(|_| bits() as u8));
                q6.extend(f16(bits()));
            }
            formats[3].1.push(Q6KMatrix::from_q6_k(&q6, r, c).into());
            // The 32-value formats: an f16 scale and 16 (Q4_0) or 20
            // (Q5_0) bytes of quants per block.
            let small = r * c / 32;
            let mut q4_0 = Vec::with_capacity(small * 18);
            let mut q5_0 = Vec::with_capacity(small * 22);
            for _ in 0..small {
                q4_0.extend(f16(bits()));
                q4_0.extend((0..16).map(|_| bits() as u8));
                q5_0.extend(f16(bits()));
                q5_0.extend((0..20).map(|_| bits() as u8));
            }
            formats[4].1.push(Q4_0Matrix::from_q4_0(&q4_0, r, c).into());
            formats[5].1.push(Q5_0Matrix::from_q5_0(&q5_0, r, c).into());
        }
    }
    let weights: usize = formats[0].1.iter().map(|m| m.rows() * m.cols()).sum();
    println!();
    println!(
        "Llama-3.2-1B shapes, {layers} layers ({:.0} M weights), {} threads, best of {rounds}:",
        weights as f64 / 1e6,
        pool.current_num_threads()
    );
    println!();
    println!("| tokens | isa | format | bits/weight | ms | GMAC/s | weight GB/s | vs Q8_0 |");
    println!("|---:|---|---|---:|---:|---:|---:|---:|");
    for tokens in [1, 64] {
        let acts: Vec<Activations> = formats[0]
            .1
            .iter()
            .map(|m| {
                let x: Vec<f32> = (0..tokens * m.cols())
                    .map(|_| (bits() >> 24) as f32 / (1u64 << 24) as f32 - 0.5)
                    .collect();
                let mut a = Activations::default();
                a.quantize(&x, m.cols());
                a
            })
            .collect();
        let mut outs: Vec<Vec<f32>> = formats[0]
            .1
            .iter()
            .map(|m| vec![0f32; tokens * m.rows()])
            .collect();
        for isa in Isa::available() {
            // The portable path takes seconds per prompt pass.
            if isa == Isa::Scalar && tokens > 1 {
                continue;
            }
            let mut best = vec![f64::INFINITY; formats.len()];
            for _ in 0..rounds {
                for ((_, mats), best) in formats.iter().zip(&mut best) {
                    let mut run = || {
                        for ((m, a), y) in mats.iter().zip(&acts).zip(&mut outs) {
                            m.matmul_on(isa, a, y, Some(pool));
                        }
                    };
                    run();
                    let t = Instant::now();
                    run();
                    let once = t.elapsed().as_secs_f64();
                    let reps = ((0.2 / once) as usize).clamp(1, 1000);
                    let t = Instant::now();
                    for _ in 0..reps {
                        run();
                    }
                    *best = best.min(t.elapsed().as_secs_f64() / reps as f64);
                }
            }
            for ((name, mats), &secs) in formats.iter().zip(&best) {
                let bytes: usize = mats.iter().map(Weights::bytes).sum();
                println!(
                    "| {tokens} | {isa:?} | {name} | {:.3} | {:.2} | {:.1} | {:.1} | {:.2} |",
                    bytes as f64 * 8.0 / weights as f64,
                    secs * 1e3,
                    (weights * tokens) as f64 / secs / 1e9,
                    bytes as f64 / secs / 1e9,
                    best[0] / secs,
                );
            }
        }
    }
}
