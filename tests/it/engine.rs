//! The engine on the real default model (SmolLM2-135M-Instruct, pulled
//! through pip once per build folder and re-quantised to Q8_0): tokenizer,
//! chat template, sampling, batching, stops, limits, cancelling,
//! constrained output, broken files. In process; `hearth run`, `chat` and
//! `model` as a user runs them are in `host/tests/model.rs`.

use hearth::engine::{
    CancelToken, ChatMessage, Engine, EngineError, EngineOptions, Event, FinishReason,
    GenerateRequest, OutputFormat, Prompt, Role, SamplingParams,
};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::OnceLock;

fn model_path() -> PathBuf {
    hearth_tests::default_model()
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::load(&model_path(), &EngineOptions::default()).unwrap())
}

fn ask(
    question: &str,
    params: SamplingParams,
    format: Option<OutputFormat>,
) -> hearth::engine::Completion {
    let request = GenerateRequest {
        prompt: Prompt::Chat {
            messages: vec![ChatMessage::new(Role::User, question)],
            tools: Vec::new(),
        },
        params,
        format,
        cancel: CancelToken::default(),
    };
    let mut streamed = String::new();
    let done = engine()
        .generate(request)
        .unwrap()
        .wait(&mut |t| streamed.push_str(t))
        .unwrap();
    assert_eq!(
        streamed, done.text,
        "the streamed pieces add up to the text"
    );
    done
}

#[test]
fn tokenizer_ids_match_the_model_vocabulary() {
    let _memory = crate::MEMORY.blocking_read();
    let t = engine().tokenizer();
    assert_eq!(t.encode("<|im_start|>system").unwrap(), [1, 9690]);
    assert_eq!(t.encode(" Paris").unwrap(), [7042]);
    assert_eq!(t.encode("Paris").unwrap(), [38634]);
    assert_eq!(t.eos_ids(), [2]);
    let ids = t.encode("héllo wörld 🦀\n\tdone").unwrap();
    assert_eq!(t.decode(&ids), "héllo wörld 🦀\n\tdone");
}

#[test]
fn chat_template_from_the_file_renders_as_the_model_was_trained() {
    let _memory = crate::MEMORY.blocking_read();
    let prompt = engine()
        .render(
            &[ChatMessage::new(
                Role::User,
                "What is the capital of France?",
            )],
            &[],
        )
        .unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    );
    let prompt = engine()
        .render(
            &[
                ChatMessage::new(Role::System, "Be brief."),
                ChatMessage::new(Role::User, "Hi"),
                ChatMessage::new(Role::Assistant, "Hello!"),
                ChatMessage::new(Role::User, "Bye"),
            ],
            &[],
        )
        .unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn answers_the_capital_of_france_greedily() {
    let _memory = crate::MEMORY.blocking_read();
    // What `hearth run --temperature 0` does: greedy, default repeat penalty.
    let params = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 100,
        ..SamplingParams::default()
    };
    let done = ask("What is the capital of France?", params, None);
    assert!(done.text.contains("Paris"), "{}", done.text);
    assert_eq!(done.finish_reason, FinishReason::Stop, "{}", done.text);
    assert!(done.usage.prompt_tokens > 20);
}

#[test]
fn same_seed_same_tokens() {
    let _memory = crate::MEMORY.blocking_read();
    let params = SamplingParams {
        max_new_tokens: 24,
        seed: Some(1234),
        temperature: 1.0,
        ..SamplingParams::default()
    };
    let a = ask("Write a short poem about bread.", params.clone(), None);
    let b = ask("Write a short poem about bread.", params.clone(), None);
    assert_eq!(a.text, b.text);
    let greedy_a = ask("Name a colour.", SamplingParams::greedy(16), None);
    let greedy_b = ask("Name a colour.", SamplingParams::greedy(16), None);
    assert_eq!(greedy_a.text, greedy_b.text);
    // Different seeds explore different outputs (over a few tries).
    let others: Vec<String> = (0..4)
        .map(|s| {
            ask(
                "Write a short poem about bread.",
                SamplingParams {
                    seed: Some(s),
                    ..params.clone()
                },
                None,
            )
            .text
        })
        .collect();
    assert!(others.iter().any(|o| *o != a.text));
}

#[test]
fn a_reused_prompt_prefix_gives_the_same_answer_as_a_fresh_start() {
    let _memory = crate::MEMORY.blocking_read();
    let system = ChatMessage::new(
        Role::System,
        "You are a terse assistant. Answer in one sentence.",
    );
    let turn = |q: &str| vec![system.clone(), ChatMessage::new(Role::User, q)];
    let run = |engine: &Engine, q: &str| {
        let mut req = GenerateRequest::chat(turn(q));
        req.params = SamplingParams::greedy(24);
        engine
            .generate(req)
            .unwrap()
            .wait(&mut |_| {})
            .unwrap()
            .text
    };
    let warm = Engine::load(&model_path(), &EngineOptions::default()).unwrap();
    run(&warm, "Name a river in Africa.");
    // Shares the system prompt with the previous request: only the rest is evaluated.
    let after = run(&warm, "Name a mountain in Asia.");
    let fresh = Engine::load(&model_path(), &EngineOptions::default()).unwrap();
    assert_eq!(after, run(&fresh, "Name a mountain in Asia."));
}

#[test]
fn conversations_generated_together_match_each_one_alone() {
    let _memory = crate::MEMORY.blocking_read();
    let questions = [
        "What is the capital of France?",
        "Name a river in Africa.",
        "Write a haiku about the sea.",
        "What is two plus two?",
        "Name a mountain in Asia.",
    ];
    let request = |q: &str| {
        let mut req = GenerateRequest::chat(vec![ChatMessage::new(Role::User, q)]);
        req.params = SamplingParams::greedy(24);
        req
    };
    let batched = Engine::load(
        &model_path(),
        &EngineOptions {
            parallel: Some(4),
            ..EngineOptions::default()
        },
    )
    .unwrap();
    assert_eq!(batched.parallel(), 4);
    // Five at once on four sequences: four run together, the fifth takes
    // the first free one (and reuses its cached chat-template prefix).
    let generations: Vec<_> = questions
        .iter()
        .map(|q| batched.generate(request(q)).unwrap())
        .collect();
    let together: Vec<String> = generations
        .into_iter()
        .map(|g| g.wait(&mut |_| {}).unwrap().text)
        .collect();
    for (q, text) in questions.iter().zip(&together) {
        let alone = engine()
            .generate(request(q))
            .unwrap()
            .wait(&mut |_| {})
            .unwrap()
            .text;
        assert_eq!(text, &alone, "{q}");
    }
    assert!(together[0].contains("Paris"), "{}", together[0]);
}

#[test]
fn stop_sequences_end_the_answer_before_them() {
    let _memory = crate::MEMORY.blocking_read();
    let full = ask(
        "Count from 1 to 10, separated by commas.",
        SamplingParams::greedy(40),
        None,
    );
    // Pick a piece from the middle of the greedy answer as the stop.
    let chars: Vec<char> = full.text.chars().collect();
    assert!(chars.len() > 8, "{}", full.text);
    let mid = chars.len() / 2;
    let stop: String = chars[mid..mid + 3].iter().collect();
    let cut = ask(
        "Count from 1 to 10, separated by commas.",
        SamplingParams {
            stop: vec![stop.clone()],
            ..SamplingParams::greedy(40)
        },
        None,
    );
    assert_eq!(cut.finish_reason, FinishReason::Stop);
    assert_eq!(
        cut.text,
        full.text[..full.text.find(&stop).unwrap()],
        "stop {stop:?}"
    );
}

#[test]
fn max_tokens_ends_with_length() {
    let _memory = crate::MEMORY.blocking_read();
    let done = ask(
        "Tell me a long story about a dragon.",
        SamplingParams::greedy(5),
        None,
    );
    assert_eq!(done.finish_reason, FinishReason::Length);
    assert_eq!(done.usage.completion_tokens, 5);
}

#[test]
fn the_context_window_is_enforced() {
    let _memory = crate::MEMORY.blocking_read();
    let small = Engine::load(
        &model_path(),
        &EngineOptions {
            context: Some(48),
            ..Default::default()
        },
    )
    .unwrap();
    let long = "word ".repeat(60);
    let err = small
        .generate(GenerateRequest::chat(vec![ChatMessage::new(
            Role::User,
            long,
        )]))
        .unwrap_err();
    match &err {
        EngineError::ContextOverflow {
            prompt_tokens,
            context,
        } => {
            assert!(*prompt_tokens > 48);
            assert_eq!(*context, 48);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().contains("context window is 48 tokens"),
        "{err}"
    );
    // Far too long in bytes to fit: refused before it is tokenised, so a
    // tool result or hook rewrite of megabytes costs no tokenising work.
    let started = std::time::Instant::now();
    let err = small
        .generate(GenerateRequest::chat(vec![ChatMessage::new(
            Role::User,
            "x".repeat(16 << 20),
        )]))
        .unwrap_err();
    assert!(
        matches!(err, EngineError::PromptTooLong { context: 48, .. }),
        "{err:?}"
    );
    // PromptTooLong is only returned before tokenising (a tokenised prompt
    // that does not fit is a ContextOverflow), so the variant above is the
    // proof. The bound is a backstop: the refusal takes about 10 ms, while
    // tokenising 16 MiB would take well over 15 s (0.9 s for 1 MiB here,
    // growing faster than the text); 5 s leaves room for a busy machine.
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // A prompt that fits stops at the window with `length`.
    let mut req = GenerateRequest::chat(vec![ChatMessage::new(Role::User, "Hi")]);
    req.params = SamplingParams::greedy(500);
    let done = small.generate(req).unwrap().wait(&mut |_| {}).unwrap();
    if done.finish_reason == FinishReason::Length {
        assert_eq!(done.usage.prompt_tokens + done.usage.completion_tokens, 48);
    }
}

#[test]
fn cancelling_stops_between_tokens() {
    let _memory = crate::MEMORY.blocking_read();
    let cancel = CancelToken::default();
    let mut req =
        GenerateRequest::chat(vec![ChatMessage::new(Role::User, "Tell me a long story.")]);
    req.params = SamplingParams::greedy(400);
    req.cancel = cancel.clone();
    let mut generation = engine().generate(req).unwrap();
    let mut pieces = 0;
    while let Some(event) = generation.blocking_next() {
        match event.unwrap() {
            Event::Text(_) => {
                pieces += 1;
                if pieces == 3 {
                    cancel.cancel();
                }
            }
            Event::Done(done) => {
                assert_eq!(done.finish_reason, FinishReason::Cancelled);
                assert!(done.usage.completion_tokens < 20);
                return;
            }
        }
    }
    panic!("no Done event");
}

#[test]
fn the_candle_backend_runs_the_same_file() {
    let _memory = crate::MEMORY.blocking_read();
    let options = EngineOptions {
        backend: hearth::engine::Backend::Candle,
        ..Default::default()
    };
    let candle = Engine::load(&model_path(), &options).unwrap();
    let run = || {
        let mut req = GenerateRequest::chat(vec![ChatMessage::new(Role::User, "Name a fruit.")]);
        req.params = SamplingParams::greedy(8);
        candle.generate(req).unwrap().wait(&mut |_| {}).unwrap()
    };
    let (a, b) = (run(), run());
    assert_eq!(a.text, b.text);
    assert!(!a.text.is_empty());
    assert_eq!(a.usage.completion_tokens, 8);
}

#[test]
fn invalid_sampling_values_are_refused_by_name() {
    let _memory = crate::MEMORY.blocking_read();
    let mut req = GenerateRequest::chat(vec![ChatMessage::new(Role::User, "Hi")]);
    req.params.top_p = 0.0;
    let err = engine().generate(req).unwrap_err();
    assert!(
        err.to_string().contains("invalid parameter `top_p`"),
        "{err}"
    );
}

fn constrained(question: &str, schema: Value) -> Value {
    let done = ask(
        question,
        SamplingParams {
            seed: Some(3),
            max_new_tokens: 200,
            ..SamplingParams::default()
        },
        Some(OutputFormat::JsonSchema(schema)),
    );
    assert_eq!(done.finish_reason, FinishReason::Stop, "{}", done.text);
    serde_json::from_str(&done.text).unwrap_or_else(|e| panic!("{e}: {}", done.text))
}

#[test]
fn constrained_output_parses_and_validates() {
    let _memory = crate::MEMORY.blocking_read();
    let v = constrained(
        "Plan a trip to Paris as JSON.",
        json!({"type": "object", "properties": {
            "city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 14}
        }, "required": ["city", "days"], "additionalProperties": false}),
    );
    assert!(v["city"].is_string(), "{v}");
    let days = v["days"].as_i64().unwrap();
    assert!((1..=14).contains(&days), "{v}");

    let v = constrained(
        "Give the temperature readings as JSON.",
        json!({"type": "object", "properties": {
            "unit": {"enum": ["c", "f"]},
            "values": {"type": "array", "items": {"type": "number"}, "maxItems": 3}
        }, "required": ["unit", "values"], "additionalProperties": false}),
    );
    assert!(v["unit"] == "c" || v["unit"] == "f", "{v}");
    let values = v["values"].as_array().unwrap();
    assert!(
        values.len() <= 3 && values.iter().all(Value::is_number),
        "{v}"
    );

    let v = constrained(
        "Call the calculator for 2+2.",
        json!({"type": "object", "properties": {
            "name": {"const": "calc.eval"},
            "arguments": {"type": "object", "properties": {"expression": {"type": "string", "maxLength": 40}}, "required": ["expression"], "additionalProperties": false}
        }, "required": ["name", "arguments"], "additionalProperties": false}),
    );
    assert_eq!(v["name"], "calc.eval");
    assert!(v["arguments"]["expression"].is_string(), "{v}");

    let done = ask(
        "Describe a cat.",
        SamplingParams {
            seed: Some(1),
            max_new_tokens: 200,
            ..Default::default()
        },
        Some(OutputFormat::JsonObject),
    );
    let v: Value =
        serde_json::from_str(&done.text).unwrap_or_else(|e| panic!("{e}: {}", done.text));
    assert!(v.is_object());
}

#[test]
fn a_bad_schema_is_refused_before_generating() {
    let _memory = crate::MEMORY.blocking_read();
    let mut req = GenerateRequest::chat(vec![ChatMessage::new(Role::User, "Hi")]);
    req.format = Some(OutputFormat::JsonSchema(json!({"type": 5})));
    let err = engine().generate(req).unwrap_err();
    assert!(err.to_string().contains("output constraint"), "{err}");
}

#[test]
fn broken_files_are_named() {
    let _memory = crate::MEMORY.blocking_read();
    let dir = tempfile::tempdir().unwrap();
    let not_gguf = dir.path().join("notes.gguf");
    std::fs::write(&not_gguf, b"hello, I am not a model").unwrap();
    let err = Engine::load(&not_gguf, &EngineOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("notes.gguf is not a usable GGUF file"),
        "{err}"
    );

    let truncated = dir.path().join("cut.gguf");
    let bytes = std::fs::read(model_path()).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = Engine::load(&truncated, &EngineOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("cut.gguf") && msg.contains("truncated"),
        "{msg}"
    );

    let header_only = dir.path().join("header.gguf");
    std::fs::write(&header_only, &bytes[..1000]).unwrap();
    let err = Engine::load(&header_only, &EngineOptions::default()).unwrap_err();
    assert!(err.to_string().contains("header.gguf"), "{err}");

    let missing = dir.path().join("missing.gguf");
    let err = Engine::load(&missing, &EngineOptions::default()).unwrap_err();
    assert!(err.to_string().contains("missing.gguf"), "{err}");
}

/// The native engine's weight image: the first load writes it, later ones
/// map it (it shows in this process's mappings) and answer exactly as a
/// load from the file does; a damaged image is rebuilt, not trusted.
#[test]
fn weights_are_mapped_from_their_image_after_the_first_load() {
    let _memory = crate::MEMORY.blocking_read();
    let cache = tempfile::tempdir().unwrap();
    let options = EngineOptions {
        weight_cache: Some(cache.path().to_path_buf()),
        ..EngineOptions::default()
    };
    let answer = |engine: &Engine| {
        let mut req = GenerateRequest::chat(vec![ChatMessage::new(
            Role::User,
            "What is the capital of France?",
        )]);
        req.params = SamplingParams::greedy(12);
        engine
            .generate(req)
            .unwrap()
            .wait(&mut |_| {})
            .unwrap()
            .text
    };
    let private = answer(&Engine::load(&model_path(), &EngineOptions::default()).unwrap());
    assert!(private.contains("Paris"), "{private}");
    let images = || -> Vec<PathBuf> {
        std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "weights"))
            .collect()
    };
    let mapped = |image: &std::path::Path| {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .contains(image.to_str().unwrap())
    };

    // First load: the image is written, then mapped.
    let first = Engine::load(&model_path(), &options).unwrap();
    let [image] = images().try_into().unwrap();
    assert!(mapped(&image), "{} is not mapped", image.display());
    assert_eq!(answer(&first), private);
    drop(first);
    let written = std::fs::metadata(&image).unwrap().len();
    let file = std::fs::metadata(model_path()).unwrap().len();
    // Q8_0 blocks widen their scale to f32: a little over the file's size.
    assert!(
        written > file * 9 / 10 && written < file * 13 / 10,
        "image {written} bytes for a {file}-byte model"
    );

    // Second load: the same image, mapped, the same answer.
    let modified = std::fs::metadata(&image).unwrap().modified().unwrap();
    let second = Engine::load(&model_path(), &options).unwrap();
    assert_eq!(images(), std::slice::from_ref(&image));
    assert_eq!(
        std::fs::metadata(&image).unwrap().modified().unwrap(),
        modified
    );
    assert!(mapped(&image));
    assert_eq!(answer(&second), private);
    drop(second);

    // A damaged image (cut short) is rebuilt.
    let bytes = std::fs::read(&image).unwrap();
    std::fs::write(&image, &bytes[..bytes.len() / 2]).unwrap();
    let third = Engine::load(&model_path(), &options).unwrap();
    assert_eq!(std::fs::metadata(&image).unwrap().len(), written);
    assert_eq!(answer(&third), private);
    drop(third);

    // A cache that cannot be written costs only the cache.
    let blocked = cache.path().join("not-a-folder");
    std::fs::write(&blocked, b"").unwrap();
    let options = EngineOptions {
        weight_cache: Some(blocked),
        ..EngineOptions::default()
    };
    assert_eq!(
        answer(&Engine::load(&model_path(), &options).unwrap()),
        private
    );
}
