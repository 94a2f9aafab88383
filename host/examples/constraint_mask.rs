//! Cost of grammar-constrained sampling on a vocabulary the size of the
//! default model's (49,152 tokens, here random byte strings around the
//! toy vocabulary of `hearth::engine::constrain`'s unit tests): building the
//! [`TokenVocab`], compiling a JSON Schema into a [`Constraint`], and masking
//! the logits at every step of a fixed answer. Prints the figures; it checks
//! only that the answer completes the schema.
//!
//! `cargo run --release -p hearth --example constraint_mask`

use hearth::engine::constrain::{Constraint, OutputFormat, TokenVocab};
use serde_json::json;
use std::time::{Duration, Instant};

const VOCAB: usize = 49_152;

const SPECIALS: [&[u8]; 2] = [b"<|im_start|>", b"<|im_end|>"];
const MULTI: [&str; 58] = [
    "{\"", "\":", "\",", "\"}", "\"]", "\":\"", "\",\"", "\":[", "],\"", "]}", "[]", "{}", "},{",
    "true", "false", "null", "name", " \"", "city", "days", "unit", "values", "Paris", "London",
    " the", "ing", "er", "on", "\\n", "\\\"", "\\u00", "0.", ".5", "e+", "e-", "-1", "10", "11",
    "12", "13", "14", "15", "20", "25", "33", "42", "50", "64", "75", "99", "00", "\"c\"", "\"f\"",
    "\n", "  ", "\t", ", ", ": ",
];

/// xorshift64: the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Every byte, the multi-byte pieces above, the control tokens and eos;
/// returns (tokens, special ids, eos id).
fn toy_tokens() -> (Vec<Vec<u8>>, Vec<u32>, u32) {
    let mut toks: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    toks.extend(MULTI.iter().map(|s| s.as_bytes().to_vec()));
    let special: Vec<u32> = SPECIALS
        .iter()
        .map(|s| {
            toks.push(s.to_vec());
            toks.len() as u32 - 1
        })
        .collect();
    toks.push(b"<|endoftext|>".to_vec());
    let eos = toks.len() as u32 - 1;
    (toks, special, eos)
}

fn main() {
    let (mut toks, special, eos) = toy_tokens();
    let mut rng = Rng(12345);
    let letters = b"abcdefghijklmnopqrstuvwxyz";
    while toks.len() < VOCAB {
        let len = 2 + rng.below(8);
        let mut t: Vec<u8> = Vec::with_capacity(len + 1);
        if rng.below(2) == 0 {
            t.push(b' ');
        }
        for _ in 0..len {
            t.push(if rng.below(10) == 0 {
                rng.below(256) as u8
            } else {
                letters[rng.below(26)]
            });
        }
        toks.push(t);
    }
    let t0 = Instant::now();
    let vocab = TokenVocab::new(toks.clone(), &special, eos).expect("a usable vocabulary");
    let build = t0.elapsed();
    let schema = json!({
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 14}},
        "required": ["city", "days"]
    });
    let t0 = Instant::now();
    let mut c = Constraint::new(&vocab, &OutputFormat::JsonSchema(schema)).expect("a valid schema");
    let compile = t0.elapsed();
    // One byte token per step: the answer spelled out byte by byte.
    let script: Vec<u32> = "{\"city\":\"New York is big\",\"days\":12}"
        .bytes()
        .map(u32::from)
        .collect();
    let mut logits = vec![0.0f32; toks.len()];
    let (mut total, mut worst) = (Duration::ZERO, Duration::ZERO);
    for &t in &script {
        logits.fill(0.0);
        let t0 = Instant::now();
        c.mask_logits(&mut logits).expect("a mask");
        let dt = t0.elapsed();
        total += dt;
        worst = worst.max(dt);
        c.commit(t).expect("the answer follows the schema");
    }
    assert!(c.is_complete(), "the answer completes the schema");
    println!(
        "vocab {VOCAB}: build {build:?}, compile {compile:?}, mask mean {:?} max {worst:?} over {} steps",
        total / script.len() as u32,
        script.len()
    );
}
