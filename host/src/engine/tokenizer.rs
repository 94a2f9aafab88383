//! The tokenizer, built from the GGUF file's own vocabulary, merges and
//! pre-tokenizer name, so a model never needs a separate tokenizer.json.
//!
//! Text is decoded from each token's raw bytes rather than by the
//! `tokenizers` decoder, so a character split across tokens streams out
//! whole once its last byte arrives ([`StreamDecoder`]).

use super::error::EngineError;
use super::gguf::ModelFile;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

/// Llama 3 / GPT-4 style splitting (digits in groups of up to three).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2 splitting (every digit alone).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF `tokenizer.ggml.token_type` values: ordinary byte-level tokens,
/// and control tokens (turn markers, end of text) that are never text.
const TYPE_NORMAL: i32 = 1;
const TYPE_CONTROL: i32 = 3;

/// A model's tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bytes: Vec<Vec<u8>>,
    special: Vec<bool>,
    eos: Vec<u32>,
    bos: Option<u32>,
    add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.bytes.len())
            .field("eos", &self.eos)
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes (byte-level BPE, the
    /// `gpt2` tokenizer model used by Llama 3, Qwen and SmolLM).
    pub fn from_gguf(file: &ModelFile) -> Result<Tokenizer, EngineError> {
        let err = |m: String| EngineError::Tokenizer(format!("{}: {m}", file.path.display()));
        let model = file.str("tokenizer.ggml.model").unwrap_or("");
        if model != "gpt2" {
            return Err(err(format!(
                "tokenizer model `{model}` is not supported (supported: gpt2, byte-level BPE)"
            )));
        }
        let md = &file.content.metadata;
        let strings = |key: &str| -> Result<Vec<String>, EngineError> {
            let list = md
                .get(key)
                .and_then(|v| v.to_vec().ok())
                .ok_or_else(|| err(format!("no {key} list")))?;
            list.iter()
                .map(|v| {
                    v.to_string()
                        .cloned()
                        .map_err(|e| err(format!("{key}: {e}")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| err(e.to_string()))?
                .iter()
                .map(|t| t.to_i32().unwrap_or(TYPE_NORMAL))
                .collect(),
            None => vec![TYPE_NORMAL; tokens.len()],
        };
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| err(format!("merge `{m}` is not two tokens")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| err(e.to_string()))?;
        let pre = file.str("tokenizer.ggml.pre").unwrap_or("default");
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            "default" | "gpt2" | "smollm" | "gpt-2" => ByteLevel::new(false, true, true).into(),
            "llama3" | "llama-bpe" | "smaug-bpe" | "dbrx" => split_then_bytes(LLAMA3_SPLIT)?,
            "qwen2" | "qwen35" => split_then_bytes(QWEN2_SPLIT)?,
            other => {
                return Err(err(format!(
                    "pre-tokenizer `{other}` is not supported (supported: gpt2, smollm, llama-bpe, qwen2)"
                )));
            }
        };
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t != TYPE_NORMAL)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| err(e.to_string()))?;

        let unicode_to_byte = byte_level_inverse();
        let bytes = tokens
            .iter()
            .zip(&types)
            .map(|(t, ty)| {
                if *ty == TYPE_NORMAL {
                    t.chars()
                        .map(|c| unicode_to_byte(c).unwrap_or(b'?'))
                        .collect()
                } else {
                    t.as_bytes().to_vec()
                }
            })
            .collect();
        let special = types.iter().map(|t| *t == TYPE_CONTROL).collect();
        let id = |key: &str| file.int(key).map(|v| v as u32);
        let mut eos: Vec<u32> = [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ]
        .iter()
        .filter_map(|k| id(k))
        .collect();
        // Chat models whose eos is a document end still close each turn with
        // their template's end-of-turn token.
        if let Some(template) = file.str("tokenizer.chat_template") {
            for end in ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"] {
                if template.contains(end)
                    && let Some(i) = tokens.iter().position(|t| t == end)
                {
                    eos.push(i as u32);
                }
            }
        }
        eos.sort_unstable();
        eos.dedup();
        if eos.is_empty() {
            return Err(err("no tokenizer.ggml.eos_token_id".into()));
        }
        Ok(Tokenizer {
            inner,
            bytes,
            special,
            eos,
            bos: id("tokenizer.ggml.bos_token_id"),
            add_bos: file
                .content
                .metadata
                .get("tokenizer.ggml.add_bos_token")
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(false),
        })
    }

    /// Token ids for `text`; special tokens written in the text (such as
    /// `<|im_start|>` from a chat template) become their ids. Adds the BOS
    /// token when the file asks for it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos
            && let Some(bos) = self.bos
        {
            ids.push(bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The bytes token `id` stands for (empty for ids outside the vocabulary).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Whether `id` is a control token (never printed as text).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// Whether `id` ends generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos.contains(&id)
    }

    /// The end-of-generation ids from the file.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// The text of `ids`, control tokens left out.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .filter(|id| !self.is_special(**id))
            .flat_map(|id| self.token_bytes(*id).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// Every token's bytes, for the output constraint.
    pub fn all_token_bytes(&self) -> Vec<Vec<u8>> {
        self.bytes.clone()
    }

    /// Ids of control tokens.
    pub fn special_ids(&self) -> Vec<u32> {
        (0..self.special.len() as u32)
            .filter(|i| self.special[*i as usize])
            .collect()
    }
}

fn split_then_bytes(pattern: &str) -> Result<PreTokenizerWrapper, EngineError> {
    let split = Split::new(
        SplitPattern::Regex(pattern.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
    Ok(Sequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, false).into(),
    ])
    .into())
}

/// The inverse of GPT-2's byte-to-printable-character table: printable
/// Latin-1 bytes stand for themselves, the other 68 bytes are shifted to
/// U+0100 onwards in byte order.
fn byte_level_inverse() -> impl Fn(char) -> Option<u8> {
    let mut table = std::collections::HashMap::with_capacity(256);
    let mut shifted = 0u32;
    for b in 0u32..256 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            shifted += 1;
            255 + shifted
        };
        table.insert(char::from_u32(c).expect("valid code point"), b as u8);
    }
    move |c| table.get(&c).copied()
}

/// Turns a stream of token bytes into text without ever splitting a
/// UTF-8 character: incomplete trailing bytes wait for the next token;
/// invalid sequences become U+FFFD.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// Adds bytes; returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).expect("checked"));
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left at the end (an unfinished character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_tokens_come_out_whole() {
        let mut d = StreamDecoder::default();
        let e = "é".as_bytes();
        assert_eq!(d.push(b"caf"), "caf");
        assert_eq!(d.push(&e[..1]), "");
        assert_eq!(d.push(&e[1..]), "é");
        let crab = "🦀".as_bytes();
        assert_eq!(d.push(&crab[..3]), "");
        assert_eq!(d.push(&[crab[3], b'!']), "🦀!");
        assert_eq!(d.push(&[0xff, b'a']), "\u{FFFD}a");
        assert_eq!(d.push(&crab[..2]), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }

    #[test]
    fn byte_level_table_is_a_bijection() {
        let inv = byte_level_inverse();
        assert_eq!(inv('Ġ'), Some(b' '));
        assert_eq!(inv('Ċ'), Some(b'\n'));
        assert_eq!(inv('a'), Some(b'a'));
        let mut seen = std::collections::HashSet::new();
        for c in (0u32..400).filter_map(char::from_u32) {
            if let Some(b) = inv(c) {
                assert!(seen.insert(b), "byte {b} twice");
            }
        }
        assert_eq!(seen.len(), 256);
    }
}
