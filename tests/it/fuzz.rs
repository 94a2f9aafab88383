//! Bounded fuzzing of everything hearth reads from a plugin or a registry
//! before any sandbox is in place: `plugin.toml` manifests
//! ([`Manifest::parse`]), registry indexes ([`Index::parse`], the signed
//! payload and the signature check behind it) and component bytes
//! ([`compile::precheck`] and [`contract::read_stamp`]).
//!
//! Each target gets two kinds of input: arbitrary text or bytes, and
//! structured mutations of a valid input (real manifests, a signed index,
//! the bundled `calc` component) that reach past the first syntax error:
//! values replaced by random or escaped text, huge numbers and deep nesting,
//! lines deleted, duplicated and swapped, control and bidi characters
//! inserted; components truncated, bit-flipped, nested and given lying
//! section lengths. The properties: nothing panics or hangs (every call runs
//! on its own thread with a tokio worker's 2 MiB stack and must return
//! within [`CALL_LIMIT`]); bad input is refused with an error that names its
//! file; what is accepted obeys the documented limits and reads back the
//! same once written out again; a signature verifies only for an entry as
//! its publisher signed it; and every field of an entry but `source` and
//! `signature` is covered by what is signed.
//!
//! CI runs a fixed number of cases per test (the `CASES_*` constants below),
//! about 10 to 20 seconds for the whole file in a debug build on two cores.
//! For a longer run, `HEARTH_FUZZ_CASES` sets the number of cases of every
//! test:
//!
//! ```text
//! HEARTH_FUZZ_CASES=200000 cargo test -p hearth-tests --test it fuzz::
//! ```
//!
//! Nothing is written into the repository: failures are not persisted; a
//! failing case is printed, shrunk, in the test output.

use ed25519_dalek::SigningKey;
use hearth::bundled::BUNDLED;
use hearth::home::Home;
use hearth::manager::registry::{self, Index, RawEntry, TrustedKeys};
use hearth::plugins::compile::{self, PrecheckError, precheck};
use hearth::plugins::contract;
use hearth::plugins::manifest::{self, Manifest, RawManifest};
use proptest::prelude::*;
use proptest::sample::Index as Pick;
use proptest::test_runner::TestCaseError;
use std::sync::LazyLock;
use std::time::Duration;

/// Cases per manifest test in CI.
const CASES_MANIFEST: u32 = 10_000;
/// Cases per index test in CI.
const CASES_INDEX: u32 = 4_000;
/// Cases of the component test in CI.
const CASES_COMPONENT: u32 = 5_000;

/// How long one parse may take before it counts as a hang. Generous: a
/// debug build on a loaded two-core machine; every call here normally takes
/// well under a millisecond.
const CALL_LIMIT: Duration = Duration::from_secs(20);

/// The stack each parse runs on: what a tokio worker thread gets, where
/// `hearth` loads indexes and manifests.
const STACK: usize = 2 * 1024 * 1024;

const MANIFEST_FILE: &str = "plugin.toml";
const INDEX_FILE: &str = "index.toml";

const HOSTILE_MANIFEST: &str = include_str!("../fixtures/hostile/plugin.toml");
const CALC_MANIFEST: &str = include_str!("../../plugins/calc/plugin.toml");
/// A manifest that also has conflicts and a config table, so that mutations
/// reach those too.
const CONFIG_MANIFEST: &str = r#"name = "settings"
namespace = "settings"
version = "2.3.4-beta.1+build.5"
contract = "0.1.0"
priority = -3
description = "Has a bit of everything"

[permissions]
http = ["https://*.example.com", "http://127.0.0.1:8080"]
conversation = "read"

[dependencies]
calc = ">=0.1, <0.3"

[conflicts]
weather = "*"

[config]
units = "metric"
limit = 3
ratio = 0.5
flags = [true, false]
nested = { deeper = { list = [1, 2, 3] } }
"#;

fn config(ci_cases: u32) -> ProptestConfig {
    let cases = std::env::var("HEARTH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(ci_cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 4_096,
        ..ProptestConfig::default()
    }
}

/// Runs `f` on its own thread with a tokio-sized stack and fails the case if
/// it does not return within [`CALL_LIMIT`]; a panic in `f` is re-raised
/// here so that proptest shrinks it like any other failure.
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(format!("fuzz {what}"))
        .stack_size(STACK)
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("a thread starts");
    match rx.recv_timeout(CALL_LIMIT) {
        Ok(value) => {
            let _ = handle.join();
            value
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not return within {CALL_LIMIT:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the thread sends before it ends"),
        },
    }
}

// ---------------------------------------------------------------- text input

/// Characters that trouble parsers and terminals: C0 and C1 controls,
/// bidi overrides and isolates, zero-width characters, TOML syntax.
const NASTY: &[char] = &[
    '\0',
    '\u{7}',
    '\u{8}',
    '\t',
    '\n',
    '\r',
    '\u{b}',
    '\u{c}',
    '\u{1b}',
    '\u{7f}',
    '\u{85}',
    '\u{9b}',
    '\u{9d}',
    '\u{61c}',
    '\u{200b}',
    '\u{200d}',
    '\u{200e}',
    '\u{200f}',
    '\u{2028}',
    '\u{202a}',
    '\u{202e}',
    '\u{2066}',
    '\u{2069}',
    '\u{feff}',
    '\u{fffd}',
    '\u{10ffff}',
    '"',
    '\'',
    '\\',
    '=',
    '[',
    ']',
    '{',
    '}',
    ',',
    '.',
    '#',
    ':',
    '/',
    '@',
    '*',
    '-',
    '_',
    '+',
];

fn nasty_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => any::<char>(),
        3 => prop::sample::select(NASTY),
        2 => prop::char::range('a', 'z'),
        1 => prop::char::range('0', '9'),
    ]
}

fn nasty_text(max: usize) -> BoxedStrategy<String> {
    prop::collection::vec(nasty_char(), 0..max)
        .prop_map(|chars| chars.into_iter().collect())
        .boxed()
}

/// Numbers and versions at and past every limit and integer width.
const HUGE: &[&str] = &[
    "0",
    "-1",
    "1025",
    "300001",
    "1000001",
    "2147483648",
    "-2147483649",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551616",
    "99999999999999999999999999999999999999999999",
    "1e400",
    "-0.0",
    "inf",
    "-inf",
    "nan",
    "0x7FFFFFFF",
    "0o777",
    "0b11",
    "1_000_000",
    "1979-05-27T07:32:00Z",
    "\"18446744073709551616.0.0\"",
    "\"0.1.99999999999999999999\"",
    "\"0.1.0-\"",
    "\"0.1.0+\"",
    "\"^0.1, <0.1\"",
    "\"*\"",
    "\"\"",
];

/// TOML fragments, to build text that gets past the tokenizer.
const TOKENS: &[&str] = &[
    "name",
    "namespace",
    "version",
    "contract",
    "priority",
    "description",
    "permissions",
    "http",
    "kv",
    "llm-tokens",
    "memory-mb",
    "time-limit-ms",
    "conversation",
    "dependencies",
    "conflicts",
    "config",
    "format",
    "toolchain",
    "plugin",
    "source",
    "publisher",
    "sha256",
    "size",
    "signature",
    " = ",
    "\n",
    "[permissions]\n",
    "[dependencies]\n",
    "[config]\n",
    "[[plugin]]\n",
    "format = 1\n",
    "\"",
    "'",
    "\"\"\"",
    "[",
    "]",
    "{",
    "}",
    ",",
    ".",
    "true",
    "false",
    "1",
    "-1",
    "4294967296",
    "\"0.1.0\"",
    "\"calc\"",
    "\"read\"",
    "\"modify\"",
    "\"https://a.example\"",
    "\"plugins/calc\"",
    "\"x.wasm\"",
    "\"https://example.invalid/x.wasm\"",
    "1e309",
    "nan",
    "#",
    "\\u0000",
    "\\u001b",
    "\u{1b}[2J",
    "\u{202e}",
];

fn token_soup() -> BoxedStrategy<String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..64)
        .prop_map(|tokens| tokens.concat())
        .boxed()
}

/// Arbitrary text: printable Unicode, any `char` at all, or TOML fragments.
fn arbitrary_text() -> BoxedStrategy<String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<char>(), 0..256).prop_map(|c| c.into_iter().collect()),
        nasty_text(256),
        token_soup(),
    ]
    .boxed()
}

/// A TOML basic string holding `text`, control characters escaped, so the
/// text reaches validation rather than the tokenizer.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One change to a line-oriented TOML document.
#[derive(Debug, Clone)]
enum Edit {
    /// The line's value (after `=`) becomes raw text.
    RawValue(Pick, String),
    /// The line's value becomes a TOML string of (escaped) text.
    StringValue(Pick, String),
    /// The line's value becomes an extreme number or version.
    Huge(Pick, &'static str),
    /// The line's value becomes arrays or inline tables nested this deep.
    Nest(Pick, usize, bool),
    /// The line's value becomes a string this many bytes long.
    Long(Pick, usize),
    /// The line is deleted.
    Delete(Pick),
    /// The line is written twice.
    Duplicate(Pick),
    /// Two lines change places.
    Swap(Pick, Pick),
    /// Text is inserted into a line.
    Insert(Pick, Pick, String),
    /// A new line is inserted.
    NewLine(Pick, String),
}

fn edit() -> BoxedStrategy<Edit> {
    let pick = any::<Pick>;
    prop_oneof![
        2 => (pick(), nasty_text(24)).prop_map(|(l, t)| Edit::RawValue(l, t)),
        8 => (pick(), nasty_text(48)).prop_map(|(l, t)| Edit::StringValue(l, t)),
        5 => (pick(), prop::sample::select(HUGE)).prop_map(|(l, n)| Edit::Huge(l, n)),
        1 => (pick(), 1..120usize, any::<bool>()).prop_map(|(l, d, t)| Edit::Nest(l, d, t)),
        1 => (pick(), 0..100_000usize).prop_map(|(l, n)| Edit::Long(l, n)),
        2 => pick().prop_map(Edit::Delete),
        1 => pick().prop_map(Edit::Duplicate),
        1 => (pick(), pick()).prop_map(|(a, b)| Edit::Swap(a, b)),
        2 => (pick(), pick(), nasty_text(8)).prop_map(|(l, at, t)| Edit::Insert(l, at, t)),
        1 => (pick(), token_soup()).prop_map(|(l, t)| Edit::NewLine(l, t)),
    ]
    .boxed()
}

fn edits() -> BoxedStrategy<Vec<Edit>> {
    prop::collection::vec(edit(), 1..4).boxed()
}

/// Replaces the value of the key-value line at or after `at` (wrapping
/// around); a document with no such line gets `value` as a line of its own.
fn set_value(lines: &mut Vec<String>, at: usize, value: &str) {
    let n = lines.len();
    let found = (0..n)
        .map(|i| (at + i) % n)
        .find(|&i| lines[i].contains('=') && !lines[i].trim_start().starts_with('#'));
    match found {
        Some(i) => {
            let key = lines[i]
                .split_once('=')
                .map(|(k, _)| k.to_string())
                .unwrap();
            lines[i] = format!("{key}= {value}");
        }
        None => lines.insert(at.min(n), value.to_string()),
    }
}

/// Applies `edits` to `text`, line by line.
fn mutate(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for edit in edits {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let n = lines.len();
        match edit {
            Edit::RawValue(l, t) => set_value(&mut lines, l.index(n), t),
            Edit::StringValue(l, t) => set_value(&mut lines, l.index(n), &toml_string(t)),
            Edit::Huge(l, v) => set_value(&mut lines, l.index(n), v),
            Edit::Nest(l, depth, tables) => {
                let value = if *tables {
                    format!("{}1{}", "{ a = ".repeat(*depth), " }".repeat(*depth))
                } else {
                    format!("{}1{}", "[".repeat(*depth), "]".repeat(*depth))
                };
                set_value(&mut lines, l.index(n), &value)
            }
            Edit::Long(l, len) => {
                set_value(&mut lines, l.index(n), &toml_string(&"a".repeat(*len)))
            }
            Edit::Delete(l) => {
                lines.remove(l.index(n));
            }
            Edit::Duplicate(l) => {
                let i = l.index(n);
                let line = lines[i].clone();
                lines.insert(i, line);
            }
            Edit::Swap(a, b) => lines.swap(a.index(n), b.index(n)),
            Edit::Insert(l, at, t) => {
                let line = &mut lines[l.index(n)];
                let bounds: Vec<usize> = line
                    .char_indices()
                    .map(|(i, _)| i)
                    .chain([line.len()])
                    .collect();
                line.insert_str(bounds[at.index(bounds.len())], t);
            }
            Edit::NewLine(l, t) => lines.insert(l.index(n + 1), t.clone()),
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

// ------------------------------------------------------------------ manifests

/// What the host relies on in every manifest it accepts.
fn check_valid_manifest(m: &Manifest) -> Result<(), TestCaseError> {
    prop_assert!(!manifest::RESERVED_NAMESPACES.contains(&m.namespace.as_str()));
    prop_assert!(manifest::check_description(&m.description).is_ok());
    prop_assert!(!m.description.trim().is_empty());
    let mib = m.permissions.memory_bytes / (1024 * 1024);
    prop_assert!((1..=manifest::MAX_MEMORY_MB as usize).contains(&mib));
    prop_assert!(m.permissions.time_limit >= Duration::from_millis(1));
    prop_assert!(m.permissions.time_limit <= Duration::from_millis(manifest::MAX_TIME_LIMIT_MS));
    prop_assert!(m.permissions.llm_tokens <= manifest::MAX_LLM_TOKENS);
    prop_assert!(contract::check_supported(&m.contract).is_ok());
    prop_assert!(!m.dependencies.contains_key(&m.namespace));
    for grant in &m.permissions.http {
        prop_assert!(grant.host != "*" && !grant.host.is_empty());
    }
    prop_assert!(depth(&m.config) <= manifest::MAX_CONFIG_DEPTH + 1);
    Ok(())
}

/// How deeply a config value nests (a scalar: 0).
fn depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Parses `text` as a manifest and checks every property.
fn check_manifest(text: &str) -> Result<(), TestCaseError> {
    let owned = text.to_string();
    let parsed = bounded("Manifest::parse", move || {
        Manifest::parse(&owned, MANIFEST_FILE)
    });
    let manifest = match parsed {
        Err(e) => {
            prop_assert_eq!(&e.file, MANIFEST_FILE);
            prop_assert!(
                e.to_string().starts_with("plugin.toml: "),
                "the error does not name the file: {}",
                e
            );
            prop_assert!(!e.message.trim().is_empty(), "an empty error: {:?}", e);
            return Ok(());
        }
        Ok(m) => m,
    };
    check_valid_manifest(&manifest)?;
    // The same text read as written validates to the same manifest...
    let raw: RawManifest = toml::from_str(text)
        .map_err(|e| TestCaseError::fail(format!("parsed, but not as RawManifest: {e}")))?;
    prop_assert_eq!(&raw.clone().validate(MANIFEST_FILE).unwrap(), &manifest);
    // ...and so does what the host writes out for it when it installs it.
    let written = toml::to_string(&raw)
        .map_err(|e| TestCaseError::fail(format!("an accepted manifest cannot be written: {e}")))?;
    let again = match Manifest::parse(&written, MANIFEST_FILE) {
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "an accepted manifest, written out, is refused: {e}"
            )));
        }
        Ok(again) => again,
    };
    prop_assert_eq!(again, manifest);
    Ok(())
}

fn manifest_text() -> BoxedStrategy<&'static str> {
    prop::sample::select(&[HOSTILE_MANIFEST, CALC_MANIFEST, CONFIG_MANIFEST][..]).boxed()
}

#[test]
fn the_manifest_fixtures_are_valid() {
    for text in [HOSTILE_MANIFEST, CALC_MANIFEST, CONFIG_MANIFEST] {
        Manifest::parse(text, MANIFEST_FILE).unwrap();
        check_manifest(text).unwrap();
    }
}

proptest! {
    #![proptest_config(config(CASES_MANIFEST))]

    #[test]
    fn manifests_from_arbitrary_text(text in arbitrary_text()) {
        check_manifest(&text)?;
    }

    #[test]
    fn manifests_mutated_from_valid_ones(base in manifest_text(), edits in edits()) {
        check_manifest(&mutate(base, &edits))?;
    }
}

// -------------------------------------------------------------------- indexes

struct Publisher {
    key: SigningKey,
    trusted: TrustedKeys,
    /// A valid index of signed entries.
    index: String,
    /// Its entries as written.
    entries: Vec<RawEntry>,
    /// Its entries as validated.
    valid: Index,
}

/// A publisher key the fuzzed indexes are signed with, trusted by a
/// throw-away home, and a valid index of its entries.
static PUBLISHER: LazyLock<Publisher> = LazyLock::new(|| {
    let key = SigningKey::from_bytes(&[42; 32]);
    let trusted = {
        let dir = tempfile::tempdir().unwrap();
        let home = Home {
            root: dir.path().to_path_buf(),
        };
        TrustedKeys::add(&home, &hex::encode(key.verifying_key().as_bytes())).unwrap();
        TrustedKeys::load(&home).unwrap()
    };
    let sources = [
        (HOSTILE_MANIFEST, "https://example.invalid/hostile.wasm"),
        (CALC_MANIFEST, "calc.wasm"),
        (CONFIG_MANIFEST, "file:///srv/plugins/settings.wasm"),
    ];
    let entries: Vec<RawEntry> = sources
        .iter()
        .map(|(text, source)| {
            let raw: RawManifest = toml::from_str(text).unwrap();
            let component = format!("component of {}", raw.namespace);
            registry::signed_entry(&key, &raw, component.as_bytes(), source)
        })
        .collect();
    let mut index = String::from("format = 1\ntoolchain = \"rustc 1.95.0\"\n\n");
    for entry in &entries {
        index.push_str(&registry::entry_toml(entry));
        index.push('\n');
    }
    let valid = Index::parse(&index, INDEX_FILE, None).unwrap();
    Publisher {
        key,
        trusted,
        index,
        entries,
        valid,
    }
});

/// The `[[plugin]]` entries of an index text, as written. (Read straight
/// from the text: going through `toml::Value` would turn datetimes into
/// strings.)
fn raw_entries(text: &str) -> Result<Vec<RawEntry>, String> {
    #[derive(serde::Deserialize)]
    struct Entries {
        #[serde(default)]
        plugin: Vec<RawEntry>,
    }
    toml::from_str::<Entries>(text)
        .map(|e| e.plugin)
        .map_err(|e| e.to_string())
}

fn index_of(entries: &[RawEntry]) -> String {
    let mut text = String::from("format = 1\n");
    for entry in entries {
        text.push_str(&registry::entry_toml(entry));
    }
    text
}

/// Parses `text` as an index and checks every property.
fn check_index(text: &str) -> Result<(), TestCaseError> {
    let owned = text.to_string();
    let parsed = bounded("Index::parse", move || {
        Index::parse(&owned, INDEX_FILE, None)
    });
    let index = match parsed {
        Err(e) => {
            prop_assert_eq!(&e.location, INDEX_FILE);
            prop_assert!(
                e.to_string().starts_with("index.toml: "),
                "the error does not name the index: {}",
                e
            );
            prop_assert!(!e.message.trim().is_empty(), "an empty error: {:?}", e);
            return Ok(());
        }
        Ok(index) => index,
    };
    let mut ids = std::collections::BTreeSet::new();
    for entry in &index.entries {
        check_valid_manifest(&entry.manifest)?;
        prop_assert!(ids.insert(entry.id()), "{} listed twice", entry.id());
        prop_assert_eq!(entry.sha256.len(), 64);
        prop_assert!(
            entry
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        prop_assert!((1..=registry::MAX_COMPONENT_SIZE).contains(&entry.size));
        prop_assert_eq!(entry.signature.is_some(), entry.publisher.is_some());
        // A signature that still verifies vouches for an entry exactly as
        // its publisher signed it: whatever was edited, it was not anything
        // that decides what the plugin is or may do.
        let p = &*PUBLISHER;
        if entry.source.needs_signature() && p.trusted.verify(entry, false).is_ok() {
            prop_assert!(
                p.valid.entries.iter().any(|signed| {
                    signed.manifest == entry.manifest
                        && signed.raw_manifest.description == entry.raw_manifest.description
                        && signed.sha256 == entry.sha256
                        && signed.size == entry.size
                        && signed.publisher == entry.publisher
                }),
                "an edited entry still verifies: {:?}",
                entry
            );
        }
    }
    // The entries as written, each written out again on its own (as
    // `hearth registry sign` does), make the same index.
    let raw = raw_entries(text).map_err(|e| {
        TestCaseError::fail(format!("parsed, but its entries do not read back: {e}"))
    })?;
    let again = match Index::parse(&index_of(&raw), INDEX_FILE, None) {
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "an accepted index, written out, is refused: {e}"
            )));
        }
        Ok(again) => again,
    };
    prop_assert_eq!(again.entries.len(), index.entries.len());
    for (a, b) in again.entries.iter().zip(&index.entries) {
        prop_assert_eq!(&a.manifest, &b.manifest);
        prop_assert_eq!(&a.source, &b.source);
        prop_assert_eq!(&a.sha256, &b.sha256);
        prop_assert_eq!(a.size, b.size);
        prop_assert_eq!(&a.signature, &b.signature);
        prop_assert_eq!(&a.signed_payload, &b.signed_payload);
    }
    Ok(())
}

/// A change to one field of an entry that a signature must cover.
#[derive(Debug, Clone)]
enum FieldChange {
    Name(String),
    Namespace(String),
    Version(String),
    Contract(String),
    Description(String),
    Publisher(String),
    Sha256(Vec<u8>),
    Size(u64),
    Priority(i32),
    Http(String),
    Kv,
    LlmTokens(u32),
    MemoryMb(Option<u32>),
    TimeLimitMs(Option<u64>),
    Conversation(Option<String>),
    Dependency(String, Option<String>),
    Conflict(String, Option<String>),
    Config(String, i64),
    ConfigNested(String),
}

fn field_change() -> BoxedStrategy<FieldChange> {
    let ident = "[a-z][a-z0-9-]{0,12}";
    prop_oneof![
        nasty_text(16).prop_map(FieldChange::Name),
        prop::string::string_regex(ident)
            .unwrap()
            .prop_map(FieldChange::Namespace),
        prop::string::string_regex(
            "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(-[a-z0-9.]{1,6})?(\\+[a-z0-9.]{1,6})?"
        )
        .unwrap()
        .prop_map(FieldChange::Version),
        prop::string::string_regex("0\\.1\\.[0-9]{1,3}")
            .unwrap()
            .prop_map(FieldChange::Contract),
        nasty_text(32).prop_map(FieldChange::Description),
        prop::string::string_regex("[0-9a-f]{16}")
            .unwrap()
            .prop_map(FieldChange::Publisher),
        prop::collection::vec(any::<u8>(), 32).prop_map(FieldChange::Sha256),
        any::<u64>().prop_map(FieldChange::Size),
        any::<i32>().prop_map(FieldChange::Priority),
        prop::string::string_regex("https?://[a-z*.]{1,12}(:[0-9]{1,5})?")
            .unwrap()
            .prop_map(FieldChange::Http),
        Just(FieldChange::Kv),
        any::<u32>().prop_map(FieldChange::LlmTokens),
        any::<Option<u32>>().prop_map(FieldChange::MemoryMb),
        any::<Option<u64>>().prop_map(FieldChange::TimeLimitMs),
        prop::option::of(prop::sample::select(
            &["read", "modify", "Read", "write", ""][..]
        ))
        .prop_map(|c| FieldChange::Conversation(c.map(str::to_string))),
        (
            prop::string::string_regex(ident).unwrap(),
            prop::option::of(prop::string::string_regex("[<>=^~*]{0,2}[0-9]\\.[0-9]").unwrap())
        )
            .prop_map(|(k, v)| FieldChange::Dependency(k, v)),
        (
            prop::string::string_regex(ident).unwrap(),
            prop::option::of(prop::string::string_regex("[<>=^~*]{0,2}[0-9]\\.[0-9]").unwrap())
        )
            .prop_map(|(k, v)| FieldChange::Conflict(k, v)),
        (nasty_text(8), any::<i64>()).prop_map(|(k, v)| FieldChange::Config(k, v)),
        nasty_text(8).prop_map(FieldChange::ConfigNested),
    ]
    .boxed()
}

/// `candidate`, or something else if that is what `old` already is.
fn differs<T: PartialEq>(old: &T, candidate: T, otherwise: impl FnOnce(&T) -> T) -> T {
    if *old == candidate {
        otherwise(old)
    } else {
        candidate
    }
}

fn suffixed(s: &String) -> String {
    format!("{s}x")
}

fn toggle_map(
    map: &mut std::collections::BTreeMap<String, String>,
    key: &str,
    value: &Option<String>,
) {
    match (map.get(key), value) {
        (Some(_), None) => {
            map.remove(key);
        }
        (Some(old), Some(v)) if old == v => {
            map.insert(key.to_string(), format!("{v}.0"));
        }
        (None, None) => {
            map.insert(key.to_string(), "*".to_string());
        }
        (_, Some(v)) => {
            map.insert(key.to_string(), v.clone());
        }
    }
}

/// Applies a change that always leaves the field different from before.
fn apply(entry: &mut RawEntry, change: &FieldChange) {
    use FieldChange as F;
    match change {
        F::Name(v) => entry.name = differs(&entry.name, v.clone(), suffixed),
        F::Namespace(v) => entry.namespace = differs(&entry.namespace, v.clone(), suffixed),
        F::Version(v) => entry.version = differs(&entry.version, v.clone(), suffixed),
        F::Contract(v) => entry.contract = differs(&entry.contract, v.clone(), suffixed),
        F::Description(v) => entry.description = differs(&entry.description, v.clone(), suffixed),
        F::Publisher(v) => {
            entry.publisher = differs(&entry.publisher, Some(v.clone()), |_| {
                Some("0000000000000000".into())
            })
        }
        F::Sha256(bytes) => {
            let candidate = hex::encode(bytes);
            entry.sha256 = if candidate.eq_ignore_ascii_case(&entry.sha256) {
                let mut flipped = bytes.clone();
                flipped[0] ^= 1;
                hex::encode(flipped)
            } else {
                candidate
            }
        }
        F::Size(v) => entry.size = differs(&entry.size, *v, |s| s.wrapping_add(1)),
        F::Priority(v) => entry.priority = differs(&entry.priority, *v, |p| p.wrapping_add(1)),
        F::Http(origin) => {
            let http = &mut entry.permissions.http;
            if http.contains(origin) {
                http.retain(|o| o != origin);
            } else {
                http.push(origin.clone());
            }
        }
        F::Kv => entry.permissions.kv = !entry.permissions.kv,
        F::LlmTokens(v) => {
            entry.permissions.llm_tokens =
                differs(&entry.permissions.llm_tokens, *v, |t| t.wrapping_add(1))
        }
        F::MemoryMb(v) => {
            entry.permissions.memory_mb = differs(&entry.permissions.memory_mb, *v, |m| {
                Some(m.unwrap_or(0).wrapping_add(1))
            })
        }
        F::TimeLimitMs(v) => {
            entry.permissions.time_limit_ms = differs(&entry.permissions.time_limit_ms, *v, |t| {
                Some(t.unwrap_or(0).wrapping_add(1))
            })
        }
        F::Conversation(v) => {
            entry.permissions.conversation =
                differs(&entry.permissions.conversation, v.clone(), |c| match c {
                    None => Some("read".into()),
                    Some(_) => None,
                })
        }
        F::Dependency(k, v) => toggle_map(&mut entry.dependencies, k, v),
        F::Conflict(k, v) => toggle_map(&mut entry.conflicts, k, v),
        F::Config(k, v) => {
            let old = entry.config.get(k).cloned();
            let new = differs(&old, Some(toml::Value::Integer(*v)), |_| {
                Some(toml::Value::String("changed".into()))
            });
            entry.config.insert(k.clone(), new.unwrap());
        }
        F::ConfigNested(v) => {
            // Deep inside a nested table, where a shallow comparison would
            // not look.
            let nested = entry
                .config
                .entry("nested")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(t) = nested {
                let old = t.get("deeper").cloned();
                let new = differs(&old, Some(toml::Value::String(v.clone())), |_| {
                    Some(toml::Value::Array(Vec::new()))
                });
                t.insert("deeper".into(), new.unwrap());
            } else {
                *nested = toml::Value::Table(toml::Table::new());
            }
        }
    }
}

#[test]
fn the_index_fixture_is_valid_and_verifies() {
    let p = &*PUBLISHER;
    check_index(&p.index).unwrap();
    assert_eq!(p.valid.entries.len(), 3);
    for entry in &p.valid.entries {
        p.trusted.verify(entry, false).unwrap();
    }
}

proptest! {
    #![proptest_config(config(CASES_INDEX))]

    #[test]
    fn indexes_from_arbitrary_text(text in arbitrary_text()) {
        check_index(&text)?;
    }

    #[test]
    fn indexes_mutated_from_a_signed_one(edits in edits()) {
        check_index(&mutate(&PUBLISHER.index, &edits))?;
    }

    #[test]
    fn signed_entries_with_arbitrary_text_appended(text in arbitrary_text()) {
        check_index(&format!("{}{text}", PUBLISHER.index))?;
    }

    /// Changing any one field a signature covers changes what is signed,
    /// and the old signature no longer verifies; `source`, `signature` and
    /// the case of `sha256` are outside the payload.
    #[test]
    fn every_signed_field_is_covered(which in any::<Pick>(), change in field_change()) {
        let p = &*PUBLISHER;
        let original = which.get(&p.entries);
        let signed = registry::signed_payload(original);
        let mut changed = original.clone();
        apply(&mut changed, &change);
        prop_assert_ne!(&registry::signed_payload(&changed), &signed, "{:?} is not signed", change);
        let text = index_of(std::slice::from_ref(&changed));
        if let Ok(index) = Index::parse(&text, INDEX_FILE, None) {
            for entry in &index.entries {
                prop_assert!(
                    p.trusted.verify(entry, true).is_err(),
                    "{:?} keeps a valid signature",
                    change
                );
            }
        }
        // Re-signed, the changed entry verifies again: the signature was
        // refused for the change, not for something else.
        let mut resigned = changed.clone();
        registry::sign_entry(&p.key, &mut resigned);
        if let Ok(index) = Index::parse(&index_of(&[resigned]), INDEX_FILE, None) {
            for entry in &index.entries {
                prop_assert!(p.trusted.verify(entry, false).is_ok());
            }
        }
        // What a signature does not cover.
        let mut moved = original.clone();
        moved.source = "https://mirror.invalid/elsewhere.wasm".into();
        moved.signature = Some("00".repeat(64));
        moved.sha256 = moved.sha256.to_ascii_uppercase();
        prop_assert_eq!(registry::signed_payload(&moved), signed);
    }
}

// ----------------------------------------------------------------- components

/// The component preamble: `\0asm`, version 0x0d, layer 1.
const COMPONENT_PREAMBLE: [u8; 8] = *b"\0asm\x0d\x00\x01\x00";
/// The core module preamble.
const MODULE_PREAMBLE: [u8; 8] = *b"\0asm\x01\x00\x00\x00";

fn bundled_component() -> &'static [u8] {
    BUNDLED
        .iter()
        .find(|b| b.source == "plugins/calc")
        .unwrap_or(&BUNDLED[0])
        .component
}

static BUNDLED_STAMP: LazyLock<semver::Version> = LazyLock::new(|| {
    contract::read_stamp(bundled_component())
        .unwrap()
        .expect("the bundled component is stamped")
});

fn leb(n: u64, out: &mut Vec<u8>) {
    wasm_encoder::Encode::encode(&n, out);
}

/// Bytes a hostile registry or plugin folder might hand over.
#[derive(Debug, Clone)]
enum Component {
    /// Anything.
    Random(Vec<u8>),
    /// A valid preamble, then anything.
    AfterPreamble(bool, Vec<u8>),
    /// A valid preamble, then a section of this id claiming this length.
    LyingSection(u8, u32, Vec<u8>),
    /// The bundled component cut short.
    Truncated(Pick),
    /// The bundled component with bytes flipped (and maybe cut short).
    Flipped(Vec<(Pick, u8)>, Option<Pick>),
    /// Components nested this deep, the innermost followed by these bytes.
    Nested(usize, Vec<u8>),
    /// A component whose one type nests this many component types.
    NestedTypes(usize),
}

impl Component {
    fn bytes(&self) -> Vec<u8> {
        let real = bundled_component();
        match self {
            Component::Random(b) => b.clone(),
            Component::AfterPreamble(module, b) => {
                let mut out = if *module {
                    MODULE_PREAMBLE.to_vec()
                } else {
                    COMPONENT_PREAMBLE.to_vec()
                };
                out.extend_from_slice(b);
                out
            }
            Component::LyingSection(id, len, b) => {
                let mut out = COMPONENT_PREAMBLE.to_vec();
                out.push(*id);
                leb((*len).into(), &mut out);
                if *id == 0 {
                    out.push(contract::STAMP_SECTION.len() as u8);
                    out.extend_from_slice(contract::STAMP_SECTION.as_bytes());
                }
                out.extend_from_slice(b);
                out
            }
            Component::Truncated(at) => real[..at.index(real.len())].to_vec(),
            Component::Flipped(flips, cut) => {
                let mut out = real.to_vec();
                for (at, mask) in flips {
                    let i = at.index(out.len());
                    out[i] ^= mask;
                }
                if let Some(cut) = cut {
                    out.truncate(cut.index(out.len() + 1));
                }
                out
            }
            Component::Nested(depth, tail) => {
                // Inside out: each level is a preamble and one nested
                // component section (id 4) holding the level below.
                let mut inner = COMPONENT_PREAMBLE.to_vec();
                inner.extend_from_slice(tail);
                for _ in 1..*depth {
                    let mut outer = COMPONENT_PREAMBLE.to_vec();
                    outer.push(4);
                    leb(inner.len() as u64, &mut outer);
                    outer.extend_from_slice(&inner);
                    inner = outer;
                }
                inner
            }
            Component::NestedTypes(depth) => {
                // A type section (id 7) of one type: `depth` component types
                // of one type declaration each, around an empty one.
                let mut body = vec![1];
                for _ in 0..*depth {
                    body.extend_from_slice(&[0x41, 1, 0x01]);
                }
                body.extend_from_slice(&[0x41, 0]);
                let mut out = COMPONENT_PREAMBLE.to_vec();
                out.push(7);
                leb(body.len() as u64, &mut out);
                out.extend_from_slice(&body);
                out
            }
        }
    }
}

fn component() -> BoxedStrategy<Component> {
    let bytes = |max| prop::collection::vec(any::<u8>(), 0..max);
    prop_oneof![
        2 => bytes(4096).prop_map(Component::Random),
        3 => (any::<bool>(), bytes(4096)).prop_map(|(m, b)| Component::AfterPreamble(m, b)),
        1 => (0u8..16, any::<u32>(), bytes(64)).prop_map(|(id, l, b)| Component::LyingSection(id, l, b)),
        2 => any::<Pick>().prop_map(Component::Truncated),
        3 => (
            prop::collection::vec((any::<Pick>(), 1u8..=255), 1..16),
            prop::option::of(any::<Pick>())
        )
            .prop_map(|(f, c)| Component::Flipped(f, c)),
        1 => (1usize..40, prop_oneof![Just(Vec::new()), bytes(32)])
            .prop_map(|(d, t)| Component::Nested(d, t)),
        1 => (0usize..2_000).prop_map(Component::NestedTypes),
    ]
    .boxed()
}

#[test]
fn the_bundled_component_is_stamped_and_passes_the_precheck() {
    assert!(contract::check_supported(&BUNDLED_STAMP).is_ok());
    precheck(bundled_component()).unwrap();
}

proptest! {
    #![proptest_config(config(CASES_COMPONENT))]

    #[test]
    fn component_prechecks_and_stamps(input in component()) {
        let bytes = input.bytes();
        let (checked, stamp) = bounded("precheck and read_stamp", move || {
            (precheck(&bytes), contract::read_stamp(&bytes))
        });
        match &checked {
            Err(PrecheckError::Malformed(m)) => prop_assert!(!m.trim().is_empty()),
            Err(PrecheckError::Limit { found, limit, .. }) => prop_assert!(found > limit),
            // What the precheck walked whole parses for the stamp reader
            // too (whose stamp may still be bad).
            Ok(()) => prop_assert!(
                !matches!(&stamp, Err(e) if e.starts_with("not a valid WebAssembly")),
                "{:?}",
                stamp
            ),
        }
        if let Err(e) = &stamp {
            prop_assert!(!e.trim().is_empty());
        }
        let limited = |what: &str| {
            matches!(&checked, Err(PrecheckError::Limit { what: w, .. }) if w.contains(what))
        };
        match input {
            // A prefix of the real component has no other stamp than its own.
            Component::Truncated(_) => {
                if let Ok(Some(found)) = &stamp {
                    prop_assert_eq!(found, &*BUNDLED_STAMP);
                }
            }
            Component::Nested(depth, tail) => {
                let too_deep = depth > compile::MAX_NESTING_DEPTH as usize;
                prop_assert_eq!(limited("nesting depth of modules"), too_deep, "{:?}", checked);
                if !too_deep && tail.is_empty() {
                    prop_assert!(checked.is_ok(), "{:?}", checked);
                }
            }
            Component::NestedTypes(depth) => {
                let too_deep = depth + 1 > compile::MAX_TYPE_NESTING as usize;
                prop_assert_eq!(limited("nesting depth of component"), too_deep, "{:?}", checked);
                prop_assert_eq!(checked.is_ok(), !too_deep, "{:?}", checked);
            }
            _ => {}
        }
    }
}
