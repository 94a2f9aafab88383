//! Regression tests for the escapes an outside hostile-plugin corpus found,
//! one section per class. Each test fails if its defence is removed:
//!
//! 1. observer hooks need the `conversation` permission;
//! 2. a registry entry's signature covers its permissions and config;
//! 3. taking over a namespace is said plainly and needs consent;
//! 4. a plugin's tools and events are fixed at install, and a clash it
//!    causes disables it alone;
//! 5. load-time calls are short, cached and concurrent;
//! 6. host memory and time spent on plugin-controlled data are bounded;
//! 8. a plugin's memory limit is the sum of its memories, and the host
//!    has a budget for all calls together;
//! 11. files are sized from their metadata before they are read.
//!
//! (Compilation, key-value quotas and terminal output have their own
//! modules.)

use ed25519_dalek::SigningKey;
use hearth::home::Home;
use hearth::manager::install::{self, Options};
use hearth::manager::registry::{self, Index, RawEntry};
use hearth::plugins::manifest::RawManifest;
use hearth::plugins::{
    CallScope, EventKind, InvokeError, LoadError, LoadedPlugin, Manifest, Runtime, ToolError,
};
use hearth_tests::{Scratch, fixtures, rss_bytes};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The hostile fixture's manifest with `edit` applied.
fn hostile_manifest(edit: impl FnOnce(String) -> String) -> Manifest {
    let text = std::fs::read_to_string(format!("{}/plugin.toml", fixtures::HOSTILE_DIR)).unwrap();
    Manifest::parse(&edit(text), "hostile/plugin.toml").unwrap()
}

fn hostile_bytes() -> Vec<u8> {
    std::fs::read(fixtures::HOSTILE_WASM).unwrap()
}

/// Loads (without activating) the hostile fixture with a manifest edit and
/// configuration overrides.
async fn load_hostile(
    runtime: &Runtime,
    edit: impl FnOnce(String) -> String,
    config: serde_json::Value,
) -> Result<Arc<LoadedPlugin>, LoadError> {
    runtime
        .load(hostile_manifest(edit), &hostile_bytes(), Some(&config))
        .await
}

fn home_of(s: &Scratch) -> Home {
    Home {
        root: s.dir.path().to_path_buf(),
    }
}

// 1. Observing conversations is a permission.

#[tokio::test]
async fn observing_conversations_without_the_permission_is_refused_at_load() {
    let s = Scratch::new();
    let err = load_hostile(
        &s.runtime,
        |t| t.replace("conversation = \"modify\"\n", ""),
        json!({}),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, LoadError::ConversationNotGranted { .. }),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("before-prompt") && message.contains("conversation = \"read\""),
        "{message}"
    );
    // The same plugin observing only `activated` needs nothing.
    load_hostile(
        &s.runtime,
        |t| t.replace("conversation = \"modify\"\n", ""),
        json!({"events": ["activated"]}),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_read_only_observer_sees_the_prompt_but_cannot_change_or_refuse_it() {
    let s = Scratch::new();
    let plugin = load_hostile(
        &s.runtime,
        |t| t.replace("conversation = \"modify\"", "conversation = \"read\""),
        json!({"tag": "!"}),
    )
    .await
    .unwrap();
    s.runtime.activate(plugin);
    for text in ["hello", "this is forbidden"] {
        let payload = json!(text).to_string();
        let d = s
            .runtime
            .dispatch(EventKind::BeforePrompt, &payload, CallScope::new("t"))
            .await;
        assert_eq!(
            d.payload, payload,
            "a read-only observer changed the prompt"
        );
        assert!(
            d.vetoed.is_none(),
            "a read-only observer refused the prompt"
        );
        assert!(
            matches!(&d.failures[..], [(ns, InvokeError::Denied { .. })] if ns == "hostile"),
            "{:?}",
            d.failures
        );
    }
}

#[test]
fn the_install_summary_and_the_upgrade_diff_name_conversation_access() {
    let none = hostile_manifest(|t| t.replace("conversation = \"modify\"\n", ""));
    let read =
        hostile_manifest(|t| t.replace("conversation = \"modify\"", "conversation = \"read\""));
    let modify = hostile_manifest(|t| t);
    let summary = install::describe_permissions(&modify).join(", ");
    assert!(summary.contains("rewriting and refusing"), "{summary}");
    assert!(
        install::describe_permissions(&none)
            .iter()
            .all(|p| !p.contains("conversation")),
    );
    let added = install::added_permissions(&none, &read).join(", ");
    assert!(added.contains("reading every prompt"), "{added}");
    let added = install::added_permissions(&read, &modify).join(", ");
    assert!(added.contains("rewriting"), "{added}");
    assert!(install::added_permissions(&modify, &read).is_empty());
}

// 2, 3, 4: registry entries, through the real install path.

/// A local index signed by a key the scratch home trusts.
struct LocalIndex {
    dir: tempfile::TempDir,
    key: SigningKey,
    entries: Vec<RawEntry>,
}

impl LocalIndex {
    fn new(home: &Home) -> LocalIndex {
        let key = SigningKey::from_bytes(&[9; 32]);
        registry::TrustedKeys::add(home, &hex::encode(key.verifying_key().as_bytes())).unwrap();
        LocalIndex {
            dir: tempfile::tempdir().unwrap(),
            key,
            entries: Vec::new(),
        }
    }

    /// Adds a signed entry for `manifest` with the component `bytes`.
    fn add(&mut self, manifest: &str, bytes: &[u8]) -> &mut RawEntry {
        let raw: RawManifest = toml::from_str(manifest).unwrap();
        let file = format!("{}-{}.wasm", raw.name, self.entries.len());
        std::fs::write(self.dir.path().join(&file), bytes).unwrap();
        self.entries
            .push(registry::signed_entry(&self.key, &raw, bytes, &file));
        self.entries.last_mut().unwrap()
    }

    fn index(&self) -> Index {
        let mut text = format!("format = {}\n", registry::FORMAT);
        for e in &self.entries {
            text.push('\n');
            text.push_str(&registry::entry_toml(e));
        }
        let path = self.dir.path().join("index.toml");
        std::fs::write(&path, text).unwrap();
        Index::parse(
            &std::fs::read_to_string(&path).unwrap(),
            path.to_str().unwrap(),
            Some(self.dir.path()),
        )
        .unwrap()
    }
}

fn calc_bytes() -> &'static [u8] {
    hearth::bundled::BUNDLED
        .iter()
        .find(|b| b.source == "plugins/calc")
        .unwrap()
        .component
}

fn plain_manifest(name: &str, namespace: &str, version: &str) -> String {
    format!(
        "name = \"{name}\"\nnamespace = \"{namespace}\"\nversion = \"{version}\"\ncontract = \"0.1.0\"\n\
         priority = 7\ndescription = \"test plugin\"\n"
    )
}

/// Installs `name` from `index`; returns the summary shown and the outcome.
async fn try_install(
    s: &Scratch,
    index: &Index,
    name: &str,
    options: &Options,
) -> (String, Result<install::Report, install::InstallError>) {
    let mut shown = String::new();
    let outcome = install::install(
        &home_of(s),
        &s.runtime,
        index,
        name,
        &semver::VersionReq::STAR,
        options,
        &mut |summary| {
            shown = summary.to_string();
            true
        },
    )
    .await;
    (shown, outcome)
}

#[tokio::test]
async fn editing_a_signed_entrys_permissions_or_config_breaks_its_signature() {
    let s = Scratch::new();
    let home = home_of(&s);
    let mut local = LocalIndex::new(&home);
    local.add(&plain_manifest("mathx", "mathx", "1.0.0"), calc_bytes());
    // A signed entry, then its permissions widened as a registry could.
    let e = local.entries.last_mut().unwrap();
    e.permissions.memory_mb = Some(1024);
    e.permissions.time_limit_ms = Some(300_000);
    e.permissions.http = vec!["https://evil.example".into()];
    let (_, outcome) = try_install(&s, &local.index(), "mathx", &Options::default()).await;
    let err = outcome.unwrap_err();
    assert_eq!(err.step, install::Step::Signature, "{err}");
    assert!(err.message.contains("bad signature"), "{err}");

    // Config alone is covered too.
    let e = local.entries.last_mut().unwrap();
    e.permissions = Default::default();
    e.config
        .insert("units".into(), toml::Value::String("imperial".into()));
    let (_, outcome) = try_install(&s, &local.index(), "mathx", &Options::default()).await;
    assert_eq!(outcome.unwrap_err().step, install::Step::Signature);

    // Signed again as it now stands, it installs.
    let key = local.key.clone();
    registry::sign_entry(&key, local.entries.last_mut().unwrap());
    let (_, outcome) = try_install(&s, &local.index(), "mathx", &Options::default()).await;
    outcome.unwrap();
}

#[tokio::test]
async fn v1_signatures_verify_only_with_an_explicit_flag() {
    use ed25519_dalek::Signer;
    let s = Scratch::new();
    let mut local = LocalIndex::new(&home_of(&s));
    local.add(&plain_manifest("mathx", "mathx", "1.0.0"), calc_bytes());
    let e = local.entries.last_mut().unwrap();
    let v1 = registry::signed_message_v1(&e.namespace, &e.name, &e.version, &e.sha256);
    e.signature = Some(hex::encode(local.key.sign(&v1).to_bytes()));
    let index = local.index();
    let (_, outcome) = try_install(&s, &index, "mathx", &Options::default()).await;
    let err = outcome.unwrap_err();
    assert_eq!(err.step, install::Step::Signature);
    assert!(
        err.message.contains("v1") && err.message.contains("--allow-v1-signatures"),
        "{err}"
    );
    let options = Options {
        allow_v1_signatures: true,
        ..Options::default()
    };
    let (_, outcome) = try_install(&s, &index, "mathx", &options).await;
    outcome.unwrap();
}

#[tokio::test]
async fn a_bundled_namespace_is_reserved_unless_the_user_opts_in() {
    let s = Scratch::new();
    let mut local = LocalIndex::new(&home_of(&s));
    // Another name, the bundled calc's namespace, a trusted signature.
    local.add(&plain_manifest("mathx", "calc", "9.0.0"), calc_bytes());
    let index = local.index();
    let (_, outcome) = try_install(&s, &index, "mathx", &Options::default()).await;
    let err = outcome.unwrap_err();
    assert_eq!(err.step, install::Step::Resolve, "{err}");
    assert!(
        err.message.contains("bundled") && err.message.contains("--replace-bundled"),
        "{err}"
    );
    let options = Options {
        replace_bundled: true,
        ..Options::default()
    };
    let (summary, outcome) = try_install(&s, &index, "mathx", &options).await;
    outcome.unwrap();
    assert!(
        summary.contains("REPLACES the bundled plugin `calc` 0.1"),
        "{summary}"
    );
}

#[tokio::test]
async fn replacing_another_installed_plugin_is_said_plainly() {
    let s = Scratch::new();
    let mut local = LocalIndex::new(&home_of(&s));
    local.add(&plain_manifest("alpha", "alpha", "1.0.0"), calc_bytes());
    let (summary, outcome) = try_install(&s, &local.index(), "alpha", &Options::default()).await;
    outcome.unwrap();
    assert!(!summary.contains("REPLACES"), "{summary}");
    local.add(&plain_manifest("beta", "alpha", "2.0.0"), calc_bytes());
    let (summary, outcome) = try_install(&s, &local.index(), "beta", &Options::default()).await;
    outcome.unwrap();
    assert!(
        summary.contains("REPLACES alpha 1.0.0") && summary.contains("a different plugin"),
        "{summary}"
    );
}

/// Installs the hostile fixture from a signed local index.
async fn install_hostile(s: &Scratch) {
    let mut local = LocalIndex::new(&home_of(s));
    let manifest =
        std::fs::read_to_string(format!("{}/plugin.toml", fixtures::HOSTILE_DIR)).unwrap();
    local.add(&manifest, &hostile_bytes());
    let (_, outcome) = try_install(s, &local.index(), "hostile", &Options::default()).await;
    outcome.unwrap();
}

#[tokio::test]
async fn a_plugin_that_changes_its_description_after_install_disables_only_itself() {
    let s = Scratch::isolated();
    let home = home_of(&s);
    install_hostile(&s).await;
    let set = hearth::manager::reload(&s.runtime, &home).await.unwrap();
    assert!(set.resolution.is_consistent(), "{:?}", set.resolution);
    assert!(s.runtime.active("hostile").is_some());

    // Its answer changes (here through its configuration; a clock or its
    // key-value store would do the same): it claims calc's and notes'
    // tools at their priority, which would tie with both.
    std::fs::create_dir_all(home.config_dir()).unwrap();
    std::fs::write(
        home.config_dir().join("hostile.toml"),
        "extra_tools = [\"eval\", \"save\", \"search\"]\n",
    )
    .unwrap();
    let set = hearth::manager::reload(&s.runtime, &home).await.unwrap();
    assert!(s.runtime.active("hostile").is_none());
    let problems: Vec<String> = set
        .problems_of("hostile")
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("differently than when it was installed")),
        "{problems:?}"
    );
    for other in ["calc", "notes", "weather"] {
        assert!(s.runtime.active(other).is_some(), "{other} was taken down");
    }
    let v = s
        .call("calc.eval", json!({"expression": "2+2"}))
        .await
        .unwrap();
    assert_eq!(v["value"], 4);
}

#[test]
fn a_priority_tie_disables_the_newcomer_not_the_plugin_that_was_there_first() {
    use hearth::manager::{Candidate, resolve};
    let candidate = |ns: &str, rank: Option<u64>| {
        let m = Manifest::parse(
            &plain_manifest(ns, ns, "1.0.0").replace("priority = 7", "priority = 0"),
            "t",
        )
        .unwrap();
        let mut c = Candidate::from_manifest(m, "test");
        c.tools = vec!["eval".into()];
        c.rank = rank;
        c
    };
    let r = resolve(&[candidate("calc", Some(0)), candidate("late", Some(5))]);
    assert_eq!(r.order, ["calc"]);
    assert!(
        r.problems[0].to_string().contains("`calc` was there first"),
        "{}",
        r.problems[0]
    );
    // Without seniority (a folder being checked), nobody is preferred.
    let r = resolve(&[candidate("calc", None), candidate("late", None)]);
    assert!(r.order.is_empty());
}

// 5. Load-time calls.

/// A folder of plugin folders: copies of the hostile fixture under other
/// namespaces, each with `config` appended to its manifest.
fn hostile_folder(namespaces: &[&str], extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(format!("{}/plugin.toml", fixtures::HOSTILE_DIR)).unwrap();
    for (i, ns) in namespaces.iter().enumerate() {
        let folder = dir.path().join(ns);
        std::fs::create_dir_all(&folder).unwrap();
        let manifest = text
            .replace("name = \"hostile\"", &format!("name = \"{ns}\""))
            .replace("namespace = \"hostile\"", &format!("namespace = \"{ns}\""))
            .replace("priority = 0", &format!("priority = {}", 10 + i))
            .replace("time-limit-ms = 1000", "time-limit-ms = 5000");
        std::fs::write(folder.join("plugin.toml"), format!("{manifest}{extra}")).unwrap();
        std::fs::copy(fixtures::HOSTILE_WASM, folder.join("plugin.wasm")).unwrap();
    }
    dir
}

#[tokio::test]
async fn a_plugin_being_loaded_cannot_call_tools() {
    // What a plugin answers at load must not depend on other plugins: its
    // describe runs before it is active, so its tool calls are refused.
    let s = Scratch::new();
    s.bundled("calc").await;
    let plugin = load_hostile(&s.runtime, |t| t, json!({"describe_calls": "calc.eval"}))
        .await
        .unwrap();
    let said = &plugin.tools[0].description;
    assert!(said.starts_with("refused:"), "{said}");
    assert!(said.contains("not active yet"), "{said}");
    // Once active, the same call goes through.
    s.runtime.activate(plugin);
    let out = s
        .call(
            "hostile.call_tool",
            json!({"name": "calc.eval", "args": {"expression": "1+1"}}),
        )
        .await
        .unwrap();
    assert_eq!(out["exact"], "2", "{out}");
}

#[tokio::test]
async fn a_slow_describe_gets_the_short_load_limit_whatever_the_manifest_asks() {
    let s = Scratch::new();
    let started = Instant::now();
    let err = load_hostile(
        &s.runtime,
        |t| t.replace("time-limit-ms = 1000", "time-limit-ms = 300000"),
        json!({"describe_sleep_ms": 60_000}),
    )
    .await
    .unwrap_err();
    let took = started.elapsed();
    // The limit that stopped it is the load limit, not the manifest's 300 s.
    assert!(
        matches!(&err, LoadError::Call { export: "describe", error }
            if matches!(**error, InvokeError::Timeout { limit, .. } if limit == hearth::plugins::LOAD_CALL_LIMIT)),
        "{err}"
    );
    // And it was enforced: 10× the load limit leaves room for a busy
    // machine and is still far short of the describe's 60 s sleep.
    assert!(
        took < hearth::plugins::LOAD_CALL_LIMIT * 10,
        "took {took:?}"
    );
}

#[tokio::test]
async fn slow_plugins_load_concurrently_and_their_answers_are_cached() {
    let s = Scratch::new();
    let home = home_of(&s);
    // Compiled beforehand, so that only the describe calls are timed.
    load_hostile(&s.runtime, |t| t, json!({})).await.unwrap();
    let dir = hostile_folder(
        &["slow-a", "slow-b", "slow-c"],
        "\n[config]\ndescribe_sleep_ms = 1500\n",
    );
    let discovery = hearth::manager::discover_dir(dir.path()).unwrap();
    let started = Instant::now();
    let set = hearth::manager::load_and_activate(&s.runtime, &home, discovery).await;
    let first = started.elapsed();
    for ns in ["slow-a", "slow-b", "slow-c"] {
        assert!(
            set.loaded
                .iter()
                .any(|(p, _)| p.manifest.namespace.as_str() == ns),
            "{ns} did not load: {:?}",
            set.resolution.problems
        );
    }
    // One after the other would take at least 4.5 s; together they take
    // the 1.5 s sleep and about 50 ms more. The bound leaves 2 s for a busy
    // machine and stays clear of 4.5 s. (The sleep cannot be made longer
    // to widen the gap: a describe gets LOAD_CALL_LIMIT, 2 s, at most.)
    assert!(
        first < Duration::from_millis(3500),
        "first load took {first:?}"
    );
    let discovery = hearth::manager::discover_dir(dir.path()).unwrap();
    let started = Instant::now();
    hearth::manager::load_and_activate(&s.runtime, &home, discovery).await;
    let again = started.elapsed();
    // Asking again would take at least 1.5 s; from the cache it takes
    // about 60 ms, so the bound is 20× that.
    assert!(
        again < Duration::from_millis(1200),
        "cached load took {again:?}"
    );
}

// 6. Plugin-controlled data meeting host memory and time.

#[tokio::test]
async fn a_schema_whose_references_double_at_each_level_is_refused_quickly() {
    let s = Scratch::new();
    let started = Instant::now();
    let err = load_hostile(&s.runtime, |t| t, json!({"schema_ref_depth": 22}))
        .await
        .unwrap_err();
    // Refused by the reference budget (the error below says so) in about
    // 10 ms; the bound, 500× that, only catches a load that expands the
    // 2^22 nodes anyway.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(&err, LoadError::BadTool { tool, .. } if tool == "ping"),
        "{err}"
    );
    assert!(err.to_string().contains("references"), "{err}");
    // Shallow doubling (2^12 nodes) is within the budget and still checks
    // arguments.
    let err = load_hostile(&s.runtime, |t| t, json!({"schema_ref_depth": 14}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("too expensive"), "{err}");
    let plugin = load_hostile(&s.runtime, |t| t, json!({"schema_ref_depth": 8}))
        .await
        .unwrap();
    s.runtime.activate(plugin);
    s.call("hostile.ping", json!({})).await.unwrap();
}

#[tokio::test]
async fn a_describe_answer_past_the_bounds_is_refused() {
    let s = Scratch::new();
    let err = load_hostile(&s.runtime, |t| t, json!({"tool_count": 1000}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("the limit is 64"), "{err}");
    let err = load_hostile(&s.runtime, |t| t, json!({"description_bytes": 1_000_000}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("the limit is 1024"), "{err}");
    let err = load_hostile(
        &s.runtime,
        |t| t,
        json!({"description": "ok\u{1b}]52;c;aGk=\u{7}"}),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("U+001B"), "{err}");
}

/// A model that counts the calls that reach it.
struct CountingModel(std::sync::atomic::AtomicUsize);

impl hearth::plugins::LlmBackend for CountingModel {
    fn complete<'a>(
        &'a self,
        _namespace: &'a str,
        _request: hearth::plugins::LlmRequest,
        _budget: u32,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<hearth::plugins::Completion, hearth::plugins::LlmError>,
                > + Send
                + 'a,
        >,
    > {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async {
            Ok(hearth::plugins::Completion {
                text: "ok".into(),
                prompt_tokens: 1,
                completion_tokens: 1,
            })
        })
    }
}

#[tokio::test]
async fn a_model_prompt_too_long_for_the_budget_is_refused_before_any_work() {
    let model = Arc::new(CountingModel(Default::default()));
    let backend: Arc<dyn hearth::plugins::LlmBackend> = model.clone();
    let s = Scratch::with(|o| o.llm = Some(backend));
    s.hostile(|t| t).await.unwrap();
    let err = s
        .call(
            "hostile.llm",
            json!({"prompt": "x", "repeat": 4_000_000, "max_tokens": 8}),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, InvokeError::Tool(ToolError::Denied(m)) if m.contains("bytes")),
        "{err}"
    );
    assert_eq!(model.0.load(std::sync::atomic::Ordering::SeqCst), 0);
    s.call("hostile.llm", json!({"prompt": "hi", "max_tokens": 8}))
        .await
        .unwrap();
    assert_eq!(model.0.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_hook_may_not_blow_up_the_prompt() {
    let s = Scratch::new();
    let plugin = load_hostile(&s.runtime, |t| t, json!({"hook_grow_bytes": 4_000_000}))
        .await
        .unwrap();
    s.runtime.activate(plugin);
    let payload = json!("hello").to_string();
    let d = s
        .runtime
        .dispatch(EventKind::BeforePrompt, &payload, CallScope::new("t"))
        .await;
    assert_eq!(d.payload, payload);
    assert!(
        matches!(&d.failures[..], [(_, InvokeError::OutputTooLarge { .. })]),
        "{:?}",
        d.failures
    );
}

#[tokio::test]
async fn a_huge_tool_error_is_cut_to_the_error_cap() {
    let s = Scratch::new();
    s.hostile(|t| t).await.unwrap();
    let err = s
        .call("hostile.big_error", json!({"bytes": 12 << 20}))
        .await
        .unwrap_err();
    let InvokeError::Tool(ToolError::Failed(message)) = &err else {
        panic!("{err}");
    };
    assert!(
        message.len() <= hearth::plugins::MAX_TOOL_ERROR_BYTES + 64,
        "{} bytes",
        message.len()
    );
}

// 8. Memory limits.

/// The component with `extra` more core modules appended, each defining
/// (not exporting) a memory of `mib` MiB, and one core instance of each:
/// instantiating the component instantiates them, and their memories.
fn with_helper_memories(component: &[u8], extra: usize, mib: u32) -> Vec<u8> {
    // Core modules already in the component's top-level index space.
    let mut depth = 0;
    let mut modules = 0u32;
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        match payload.unwrap() {
            wasmparser::Payload::Version { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth -= 1,
            wasmparser::Payload::ModuleSection { .. } if depth == 1 => modules += 1,
            _ => {}
        }
    }
    fn leb(v: u32, out: &mut Vec<u8>) {
        wasm_encoder::Encode::encode(&v, out);
    }
    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        wasm_encoder::Encode::encode(body, out);
    }
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    let mut memory = vec![1, 0x00];
    leb(mib * 16, &mut memory); // 64 KiB pages
    section(5, &memory, &mut module);
    let mut out = component.to_vec();
    for i in 0..extra as u32 {
        section(1, &module, &mut out);
        let mut instance = vec![1, 0x00];
        leb(modules + i, &mut instance);
        instance.push(0);
        section(2, &instance, &mut out);
    }
    out
}

#[tokio::test]
async fn the_memory_limit_is_the_sum_of_all_of_a_plugins_memories() {
    let s = Scratch::new();
    // Three helper memories of 24 MiB each: every one alone is under the
    // 64 MiB limit; together they are over it.
    let bytes = with_helper_memories(&hostile_bytes(), 3, 24);
    let manifest = hostile_manifest(|t| t.replace("memory-mb = 32", "memory-mb = 64"));
    let plugin = s.runtime.load(manifest, &bytes, None).await;
    // Loading runs `describe` in an instance, which already needs them.
    let err = plugin.unwrap_err();
    assert!(
        matches!(&err, LoadError::Call { error, .. } if matches!(**error, InvokeError::MemoryLimit { .. })),
        "{err}"
    );
    // Two of them fit.
    let bytes = with_helper_memories(&hostile_bytes(), 2, 24);
    let manifest = hostile_manifest(|t| t.replace("memory-mb = 32", "memory-mb = 64"));
    let plugin = s.runtime.load(manifest, &bytes, None).await.unwrap();
    s.runtime.activate(plugin);
    s.call("hostile.ping", json!({})).await.unwrap();
}

#[tokio::test]
async fn concurrent_calls_share_one_host_memory_budget_and_no_plugin_takes_it_all() {
    let _serial = crate::MEMORY.write().await;
    let s = Scratch::with(|o| o.memory_budget = 100 << 20);
    let roomy = |t: String| {
        t.replace("memory-mb = 32", "memory-mb = 64")
            .replace("time-limit-ms = 1000", "time-limit-ms = 5000")
    };
    s.hostile(roomy).await.unwrap();
    let other = s
        .runtime
        .load(
            hostile_manifest(|t| {
                roomy(t)
                    .replace("name = \"hostile\"", "name = \"other\"")
                    .replace("namespace = \"hostile\"", "namespace = \"other\"")
            }),
            &hostile_bytes(),
            None,
        )
        .await
        .unwrap();
    s.runtime.activate(other);
    let hold = |qualified: &'static str, mb: u64, ms: u64| {
        let runtime = s.runtime.clone();
        tokio::spawn(async move {
            runtime
                .invoke_qualified(
                    qualified,
                    &json!({"mb": mb, "ms": ms}).to_string(),
                    CallScope::new("t"),
                )
                .await
        })
    };
    // Four calls of one plugin at once, ~26 MiB each: the budget would hold
    // three, but one plugin may take only half of it.
    let flood: Vec<_> = (0..4).map(|_| hold("hostile.hold", 24, 3000)).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Another plugin still gets ~42 MiB while they run.
    hold("other.hold", 40, 10).await.unwrap().unwrap();
    let mut refused = 0;
    let mut held = 0;
    for call in flood {
        match call.await.unwrap() {
            Ok(_) => held += 1,
            Err(e @ InvokeError::HostMemoryBudget { .. }) => {
                assert!(e.to_string().contains("at most half"), "{e}");
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((held, refused), (1, 3));
    // Given back when the calls ended.
    assert_eq!(s.runtime.plugin_memory(), (0, 100 << 20));
    let calls: Vec<_> = (0..2)
        .map(|i| hold(["hostile.hold", "other.hold"][i], 40, 300))
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
}

// 11. Sizes from metadata before reading.

#[tokio::test]
async fn a_sparse_multi_gigabyte_component_is_refused_without_reading_it() {
    let _serial = crate::MEMORY.write().await;
    let s = Scratch::new();
    let dir = hostile_folder(&["sparse"], "");
    std::fs::File::create(dir.path().join("sparse/plugin.wasm"))
        .unwrap()
        .set_len(3 << 30)
        .unwrap();
    let before = rss_bytes();
    let discovery = hearth::manager::discover_dir(dir.path()).unwrap();
    let set = hearth::manager::load_and_activate(&s.runtime, &home_of(&s), discovery).await;
    let grown = rss_bytes().saturating_sub(before);
    let problems: Vec<String> = set
        .problems_of("sparse")
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("3221225472 bytes; the limit is")),
        "{problems:?}"
    );
    assert!(grown < 64 << 20, "resident memory grew by {grown} bytes");
}

// One-off commands load only what they call.

#[tokio::test]
async fn a_one_off_call_loads_only_the_plugin_and_its_dependencies() {
    let s = Scratch::isolated();
    let home = home_of(&s);
    install_hostile(&s).await;
    // A fresh runtime over the same data, as a new `hearth plugin invoke`.
    let s = s.restart();
    let discovery = hearth::manager::discover_installed(&home).unwrap();
    let set = hearth::manager::load_for(&s.runtime, &home, discovery, "calc").await;
    let loaded: Vec<&str> = set
        .loaded
        .iter()
        .map(|(p, _)| p.manifest.namespace.as_str())
        .collect();
    assert_eq!(loaded, ["calc"]);
    assert!(s.runtime.active("hostile").is_none());
    // The rest of the set is still known to the resolver.
    assert!(
        set.candidates
            .iter()
            .any(|c| c.manifest.namespace.as_str() == "hostile")
    );
    let discovery = hearth::manager::discover_installed(&home).unwrap();
    let set = hearth::manager::load_for(&s.runtime, &home, discovery, "hostile").await;
    let mut loaded: Vec<&str> = set
        .loaded
        .iter()
        .map(|(p, _)| p.manifest.namespace.as_str())
        .collect();
    loaded.sort();
    assert_eq!(loaded, ["calc", "hostile"], "{:?}", set.resolution);
    let v = s
        .call(
            "hostile.call_tool",
            json!({"name": "calc.eval", "args": {"expression": "6*7"}}),
        )
        .await
        .unwrap();
    assert_eq!(v["value"], 42, "{v}");
}
