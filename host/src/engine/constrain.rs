//! Grammar-constrained sampling: keeps token-by-token generation inside a JSON Schema.
//!
//! The heavy lifting (schema compilation, Earley parsing, token-trie masking) is done by
//! `llguidance`; this module adapts it to hearth's vocabulary and logits conventions.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};

/// Why a constraint could not be built or advanced.
#[derive(Debug, thiserror::Error)]
pub enum ConstraintError {
    /// The requested schema is malformed or uses something the grammar compiler rejects.
    #[error("invalid JSON schema: {0}")]
    Schema(String),
    /// The vocabulary handed to [`TokenVocab::new`] is unusable.
    #[error("invalid vocabulary: {0}")]
    Vocab(String),
    /// The sampled token is not allowed by the grammar in the current state.
    #[error("token {token} is not allowed by the output constraint here")]
    Rejected {
        /// The offending token id.
        token: u32,
    },
    /// The grammar engine failed in a way the caller cannot fix.
    #[error("constraint engine error: {0}")]
    Internal(String),
}

/// The model's vocabulary as raw bytes, built once per model and shared (cheap to clone: Arc inside).
///
/// Building one precomputes llguidance's token-trie and lexer slices, which is the
/// expensive part; every [`Constraint`] made from it reuses that work.
#[derive(Clone)]
pub struct TokenVocab {
    inner: Arc<VocabInner>,
}

struct VocabInner {
    factory: ParserFactory,
    /// Control tokens, excluding eos, that are forced off in every mask.
    special: Vec<u32>,
    eos: u32,
    size: usize,
}

impl TokenVocab {
    /// tokens[i] = the exact bytes token i decodes to (byte-level BPE already undone by the caller);
    /// `special` = ids of control tokens (e.g. <|im_start|>, <|im_end|>) that must never be produced inside constrained text;
    /// `eos` = the end-of-sequence id that ends generation once the grammar accepts.
    pub fn new(
        mut tokens: Vec<Vec<u8>>,
        special: &[u32],
        eos: u32,
    ) -> Result<Self, ConstraintError> {
        let size = tokens.len();
        if size == 0 {
            return Err(ConstraintError::Vocab("vocabulary has no tokens".into()));
        }
        let n = u32::try_from(size).map_err(|_| {
            ConstraintError::Vocab(format!(
                "vocabulary has {size} tokens, more than u32 ids can address"
            ))
        })?;
        // The trie stores byte offsets as u32 and would panic past that.
        let total: usize = tokens.iter().map(|t| t.len() + 1).sum();
        if u32::try_from(total).is_err() {
            return Err(ConstraintError::Vocab(format!(
                "token bytes total {total}, over the 4 GiB limit"
            )));
        }
        if eos >= n {
            return Err(ConstraintError::Vocab(format!(
                "eos id {eos} is outside the vocabulary of {n} tokens"
            )));
        }
        if let Some(bad) = special.iter().find(|&&id| id >= n) {
            return Err(ConstraintError::Vocab(format!(
                "special token id {bad} is outside the vocabulary of {n} tokens"
            )));
        }
        // llguidance treats tokens whose bytes start with 0xFF as special: the trie walk
        // never reaches them from ordinary text, so the grammar cannot spell them out.
        for &id in special.iter().chain(std::iter::once(&eos)) {
            let t = &mut tokens[id as usize];
            if t.first() != Some(&TokTrie::SPECIAL_TOKEN_MARKER) {
                t.insert(0, TokTrie::SPECIAL_TOKEN_MARKER);
            }
        }
        let trie = TokTrie::from(&TokRxInfo::new(n, eos), &tokens);
        // Greedy tokenization is not the model's BPE, so the env reports itself as
        // non-canonical and llguidance will not force multi-token sequences from it.
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| ConstraintError::Vocab(format!("cannot index vocabulary: {e:#}")))?;
        factory.quiet();
        let mut special: Vec<u32> = special.iter().copied().filter(|&id| id != eos).collect();
        special.sort_unstable();
        special.dedup();
        Ok(Self {
            inner: Arc::new(VocabInner {
                factory,
                special,
                eos,
                size,
            }),
        })
    }

    /// Number of tokens in the vocabulary.
    pub fn len(&self) -> usize {
        self.inner.size
    }

    /// Always false: an empty vocabulary is rejected by [`TokenVocab::new`].
    pub fn is_empty(&self) -> bool {
        self.inner.size == 0
    }

    /// The end-of-sequence token id.
    pub fn eos(&self) -> u32 {
        self.inner.eos
    }
}

/// What the output must be.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputFormat {
    /// Any JSON object.
    JsonObject,
    /// A JSON value valid against this JSON Schema.
    JsonSchema(Value),
}

/// Per-generation grammar state; move it to the generation thread and drive it with
/// `mask_logits` → sample → `commit` until eos is committed.
pub struct Constraint {
    matcher: Matcher,
    vocab: TokenVocab,
    /// Mask from the last `mask_logits`, so `commit` can check the token without recomputing.
    mask: Option<SimpleVob>,
    complete: bool,
}

impl Constraint {
    /// Compiles `format` against `vocab`; a bad schema gives [`ConstraintError::Schema`].
    pub fn new(vocab: &TokenVocab, format: &OutputFormat) -> Result<Self, ConstraintError> {
        let schema = match format {
            OutputFormat::JsonObject => json!({ "type": "object" }),
            OutputFormat::JsonSchema(s) => s.clone(),
        };
        let schema = compact(schema)?;
        let parser = vocab
            .inner
            .factory
            .create_parser(TopLevelGrammar::from_json_schema(schema))
            .map_err(|e| ConstraintError::Schema(format!("{e:#}")))?;
        let mut matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ConstraintError::Schema(e));
        }
        let complete = matcher.is_stopped() || matcher.is_accepting().unwrap_or(false);
        Ok(Self {
            matcher,
            vocab: vocab.clone(),
            mask: None,
            complete,
        })
    }

    /// Sets logits of tokens the grammar forbids to f32::NEG_INFINITY (logits.len() may exceed the vocab: extra entries are forbidden). When the grammar is complete only eos is allowed.
    ///
    /// While the text is a complete value that could still grow (a bare top-level number),
    /// both eos and the continuations stay allowed; for objects and arrays the grammar
    /// stops at the closing bracket, leaving eos alone.
    pub fn mask_logits(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        self.ensure_mask()?;
        let mask = self.mask.as_ref().expect("ensure_mask sets it");
        let n = self.vocab.inner.size.min(mask.len());
        for (i, l) in logits.iter_mut().enumerate() {
            if i >= n || !mask.get(i) {
                *l = f32::NEG_INFINITY;
            }
        }
        for &id in &self.vocab.inner.special {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Advances with the sampled token; error if the token was not allowed.
    pub fn commit(&mut self, token: u32) -> Result<(), ConstraintError> {
        let eos = self.vocab.inner.eos;
        if self.matcher.is_stopped() && !self.matcher.is_error() {
            // The parser refuses input once stopped; a repeated eos is harmless.
            return if token == eos {
                Ok(())
            } else {
                Err(ConstraintError::Rejected { token })
            };
        }
        let allowed = (token as usize) < self.vocab.inner.size
            && self.vocab.inner.special.binary_search(&token).is_err()
            && {
                self.ensure_mask()?;
                self.mask.as_ref().is_some_and(|m| m.get(token as usize))
            };
        if !allowed {
            return Err(ConstraintError::Rejected { token });
        }
        self.mask = None;
        self.matcher.consume_token(token).map_err(|e| {
            ConstraintError::Internal(format!("consuming allowed token {token}: {e:#}"))
        })?;
        self.complete = self.matcher.is_stopped() || self.matcher.is_accepting().unwrap_or(false);
        Ok(())
    }

    /// True once the text so far is a complete value (eos allowed / grammar stopped).
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    fn ensure_mask(&mut self) -> Result<(), ConstraintError> {
        if self.mask.is_none() {
            let m = self
                .matcher
                .compute_mask_or_eos()
                .map_err(|e| ConstraintError::Internal(format!("computing token mask: {e:#}")))?;
            self.mask = Some(m);
        }
        Ok(())
    }
}

/// Disables free whitespace between JSON tokens unless the schema asks otherwise,
/// so a weak model cannot stall by emitting spaces or newlines forever.
fn compact(schema: Value) -> Result<Value, ConstraintError> {
    let mut schema = match schema {
        Value::Object(_) => schema,
        // Boolean schemas are legal JSON Schema; `true` accepts anything.
        Value::Bool(true) => json!({}),
        Value::Bool(false) => {
            return Err(ConstraintError::Schema(
                "schema `false` accepts no value".into(),
            ));
        }
        other => {
            return Err(ConstraintError::Schema(format!(
                "schema must be a JSON object or boolean, got {other}"
            )));
        }
    };
    let obj = schema.as_object_mut().expect("checked above");
    let opts = obj.entry("x-guidance").or_insert_with(|| json!({}));
    let Some(opts) = opts.as_object_mut() else {
        return Err(ConstraintError::Schema(
            "`x-guidance` must be an object".into(),
        ));
    };
    opts.entry("whitespace_flexible")
        .or_insert(Value::Bool(false));
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECIALS: [&[u8]; 2] = [b"<|im_start|>", b"<|im_end|>"];
    const MULTI: [&str; 58] = [
        "{\"", "\":", "\",", "\"}", "\"]", "\":\"", "\",\"", "\":[", "],\"", "]}", "[]", "{}",
        "},{", "true", "false", "null", "name", " \"", "city", "days", "unit", "values", "Paris",
        "London", " the", "ing", "er", "on", "\\n", "\\\"", "\\u00", "0.", ".5", "e+", "e-", "-1",
        "10", "11", "12", "13", "14", "15", "20", "25", "33", "42", "50", "64", "75", "99", "00",
        "\"c\"", "\"f\"", "\n", "  ", "\t", ", ", ": ",
    ];

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

    /// Returns (tokens, special ids, eos id).
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

    fn toy_vocab() -> (TokenVocab, Vec<Vec<u8>>, Vec<u32>) {
        let (toks, special, eos) = toy_tokens();
        (
            TokenVocab::new(toks.clone(), &special, eos).unwrap(),
            toks,
            special,
        )
    }

    /// One random walk; returns the output bytes if eos was reached.
    fn walk(
        vocab: &TokenVocab,
        toks: &[Vec<u8>],
        special: &[u32],
        fmt: &OutputFormat,
        rng: &mut Rng,
    ) -> Option<Vec<u8>> {
        let eos = vocab.eos();
        let mut c = Constraint::new(vocab, fmt).unwrap();
        let mut out = Vec::new();
        for step in 0..400 {
            let mut logits = vec![0.0f32; toks.len() + 7];
            c.mask_logits(&mut logits).unwrap();
            assert!(logits[toks.len()..].iter().all(|l| *l == f32::NEG_INFINITY));
            for &s in special {
                assert_eq!(
                    logits[s as usize],
                    f32::NEG_INFINITY,
                    "special token {s} allowed"
                );
            }
            let allowed: Vec<u32> = (0..toks.len() as u32)
                .filter(|&i| logits[i as usize] == 0.0)
                .collect();
            assert!(
                !allowed.is_empty(),
                "no token allowed after {:?}",
                String::from_utf8_lossy(&out)
            );
            assert_eq!(
                allowed.contains(&eos),
                c.is_complete(),
                "eos allowed iff complete"
            );
            if step % 7 == 0 {
                let forbidden: Vec<u32> = (0..toks.len() as u32)
                    .filter(|i| !allowed.contains(i))
                    .collect();
                let bad = forbidden[rng.below(forbidden.len())];
                assert!(
                    matches!(c.commit(bad), Err(ConstraintError::Rejected { token }) if token == bad)
                );
            }
            // Favour structural and multi-byte tokens so most walks finish within the step budget.
            let preferred: Vec<u32> = allowed
                .iter()
                .copied()
                .filter(|&t| {
                    t == eos
                        || toks[t as usize].len() > 1
                        || b"\"{}[],:0123456789".contains(&toks[t as usize][0])
                })
                .collect();
            let pool = if !preferred.is_empty() && rng.below(4) != 0 {
                &preferred
            } else {
                &allowed
            };
            let mut pool: Vec<u32> = pool
                .iter()
                .copied()
                .filter(|&t| !overflows(&out, &toks[t as usize]))
                .collect();
            if pool.is_empty() {
                pool = allowed;
            }
            let t = pool[rng.below(pool.len())];
            c.commit(t).unwrap();
            if t == eos {
                assert!(matches!(
                    c.commit(toks.len() as u32 - 3),
                    Err(ConstraintError::Rejected { .. })
                ));
                return Some(out);
            }
            out.extend_from_slice(&toks[t as usize]);
        }
        None
    }

    /// serde_json rejects numbers beyond f64 range (e.g. `1E999`) that are valid JSON,
    /// so walks avoid growing a trailing number run past it.
    fn overflows(out: &[u8], t: &[u8]) -> bool {
        let all = [out, t].concat();
        let start = all
            .iter()
            .rposition(|b| !b"0123456789eE+-.".contains(b))
            .map_or(0, |i| i + 1);
        std::str::from_utf8(&all[start..])
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .is_some_and(f64::is_infinite)
    }

    fn run_walks(fmt: &OutputFormat, seed: u64, check: impl Fn(&Value)) {
        let (vocab, toks, special) = toy_vocab();
        let mut rng = Rng(seed);
        let mut finished = 0;
        for _ in 0..50 {
            let Some(out) = walk(&vocab, &toks, &special, fmt, &mut rng) else {
                continue;
            };
            finished += 1;
            if finished <= 2 {
                eprintln!("sample output: {}", String::from_utf8_lossy(&out));
            }
            let text = String::from_utf8(out).expect("output is UTF-8");
            assert!(
                !text.contains(['\n', '\t']) && !text.starts_with(' '),
                "free whitespace in {text}"
            );
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            check(&v);
        }
        eprintln!("{finished}/50 walks finished");
        assert!(finished >= 25, "only {finished}/50 walks finished");
    }

    #[test]
    fn schema_city_days() {
        let schema = json!({
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1, "maximum": 14}
            },
            "required": ["city", "days"],
            "additionalProperties": false
        });
        run_walks(
            &OutputFormat::JsonSchema(schema),
            0x9E37_79B9_7F4A_7C15,
            |v| {
                let o = v.as_object().expect("object");
                assert!(o["city"].is_string(), "{v}");
                let d = o["days"].as_i64().expect("integer days");
                assert!((1..=14).contains(&d), "{v}");
                assert_eq!(o.len(), 2, "{v}");
            },
        );
    }

    #[test]
    fn schema_unit_values() {
        let schema = json!({
            "type": "object",
            "properties": {
                "unit": {"enum": ["c", "f"]},
                "values": {"type": "array", "items": {"type": "number"}, "maxItems": 3}
            },
            "required": ["unit", "values"],
            "additionalProperties": false
        });
        run_walks(&OutputFormat::JsonSchema(schema), 42, |v| {
            let o = v.as_object().expect("object");
            assert!(matches!(o["unit"].as_str(), Some("c" | "f")), "{v}");
            let vals = o["values"].as_array().expect("array");
            assert!(vals.len() <= 3 && vals.iter().all(Value::is_number), "{v}");
            assert_eq!(o.len(), 2, "{v}");
        });
    }

    #[test]
    fn any_object() {
        run_walks(&OutputFormat::JsonObject, 7, |v| {
            assert!(v.is_object(), "{v}")
        });
    }

    #[test]
    fn errors_name_the_problem() {
        let (vocab, toks, _) = toy_vocab();
        let toks_len = toks.len();
        let bad = Constraint::new(&vocab, &OutputFormat::JsonSchema(json!({"type": 5})));
        match bad {
            Err(ConstraintError::Schema(msg)) => assert!(msg.contains("type"), "{msg}"),
            _ => panic!("expected a schema error"),
        }
        let bad = json!({"type": "object", "properties": {"a": {"minimum": "x"}}});
        assert!(matches!(
            Constraint::new(&vocab, &OutputFormat::JsonSchema(bad)),
            Err(ConstraintError::Schema(_))
        ));
        let bad = Constraint::new(&vocab, &OutputFormat::JsonSchema(json!(5)));
        assert!(matches!(bad, Err(ConstraintError::Schema(_))));
        assert!(matches!(
            TokenVocab::new(toks.clone(), &[], 99_999),
            Err(ConstraintError::Vocab(_))
        ));
        assert!(matches!(
            TokenVocab::new(toks, &[99_999], 0),
            Err(ConstraintError::Vocab(_))
        ));
        assert!(matches!(
            TokenVocab::new(vec![], &[], 0),
            Err(ConstraintError::Vocab(_))
        ));
        let mut c = Constraint::new(&vocab, &OutputFormat::JsonObject).unwrap();
        assert!(matches!(
            c.commit(b'x' as u32),
            Err(ConstraintError::Rejected { token: 120 })
        ));
        assert!(matches!(
            c.commit(vocab.eos()),
            Err(ConstraintError::Rejected { .. })
        ));
        assert!(matches!(
            c.commit(1 << 30),
            Err(ConstraintError::Rejected { .. })
        ));
        c.commit(b'{' as u32).unwrap();
        c.commit(b'}' as u32).unwrap();
        assert!(c.is_complete());
        let mut logits = vec![0.0f32; toks_len];
        c.mask_logits(&mut logits).unwrap();
        let allowed: Vec<usize> = (0..toks_len).filter(|&i| logits[i] == 0.0).collect();
        assert_eq!(
            allowed,
            [vocab.eos() as usize],
            "only eos after the closing brace"
        );
        c.commit(vocab.eos()).unwrap();
        c.commit(vocab.eos()).unwrap();
        assert!(matches!(
            c.commit(b' ' as u32),
            Err(ConstraintError::Rejected { token: 32 })
        ));
    }

    #[test]
    fn is_send() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<Constraint>();
        send_sync::<TokenVocab>();
    }
}
