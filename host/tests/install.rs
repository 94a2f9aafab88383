//! Installing from an index: signatures, digests, sizes, permissions,
//! downgrades and crashes. Every failed install leaves the installed set
//! byte-for-byte as it was.
//!
//! Drives the `hearth` binary, like every test in `host/tests/`;
//! library-level tests are modules of `tests/it/` (see `tests/README.md`).

use ed25519_dalek::SigningKey;
use hearth::bundled::BUNDLED;
use hearth::manager::registry::{self, RawEntry};
use hearth::plugins::manifest::RawManifest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{hearth, invoke, text};

fn component(source: &str) -> &'static [u8] {
    BUNDLED
        .iter()
        .find(|b| b.source == source)
        .unwrap()
        .component
}

/// A manifest; its priority defaults to 7 so that reusing the bundled
/// components (and their tool names) does not tie with the bundled plugins.
fn manifest(namespace: &str, version: &str, extra: &str) -> RawManifest {
    let priority = if extra.contains("priority") {
        ""
    } else {
        "priority = 7\n"
    };
    toml::from_str(&format!(
        "name = \"{namespace}\"\nnamespace = \"{namespace}\"\nversion = \"{version}\"\ncontract = \"0.1.0\"\n\
         description = \"test plugin\"\n{priority}{extra}"
    ))
    .unwrap()
}

/// A local index with signed entries whose components sit beside it.
struct Index {
    dir: tempfile::TempDir,
    key: SigningKey,
    entries: Vec<RawEntry>,
}

impl Index {
    fn new() -> Index {
        Index {
            dir: tempfile::tempdir().unwrap(),
            key: SigningKey::from_bytes(&[7; 32]),
            entries: Vec::new(),
        }
    }

    fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// Adds a signed entry; returns it for editing.
    fn add(&mut self, manifest: &RawManifest, bytes: &[u8]) -> &mut RawEntry {
        let file = format!("{}-{}.wasm", manifest.namespace, manifest.version);
        std::fs::write(self.dir.path().join(&file), bytes).unwrap();
        self.entries
            .push(registry::signed_entry(&self.key, manifest, bytes, &file));
        self.entries.last_mut().unwrap()
    }

    fn component_file(&self, entry: usize) -> PathBuf {
        self.dir.path().join(&self.entries[entry].source)
    }

    fn write(&self) -> String {
        let mut text = format!("format = {}\n", registry::FORMAT);
        for e in &self.entries {
            text.push('\n');
            text.push_str(&registry::entry_toml(e));
        }
        let path = self.dir.path().join("index.toml");
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    }
}

/// A data directory that trusts `index`'s key.
fn home_trusting(index: &Index) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let out = hearth(home.path(), &["registry", "trust", &index.public_hex()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    home
}

fn install(home: &Path, index: &str, spec: &str, extra: &[&str]) -> Output {
    let mut args = vec!["plugin", "install", spec, "--registry", index, "--yes"];
    args.extend_from_slice(extra);
    hearth(home, &args)
}

/// The lock file and every stored object, for byte-for-byte comparison.
fn snapshot(home: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let lock = home.join("installed.toml");
    if let Ok(bytes) = std::fs::read(&lock) {
        files.insert(lock, bytes);
    }
    if let Ok(entries) = std::fs::read_dir(home.join("store")) {
        for e in entries.flatten() {
            files.insert(e.path(), std::fs::read(e.path()).unwrap());
        }
    }
    files
}

/// An index with `base` 1.0.0 (the calc component) and `mathx` 1.0.0,
/// which depends on it and runs `mathx_component` with `mathx_extra` added
/// to its manifest.
fn index_with_dependency(mathx_component: &str, mathx_extra: &str) -> Index {
    let mut index = Index::new();
    index.add(
        &manifest("base", "1.0.0", "priority = 1\n"),
        component("plugins/calc"),
    );
    let extra = format!("priority = 5\n{mathx_extra}[dependencies]\nbase = \"^1\"\n");
    index.add(
        &manifest("mathx", "1.0.0", &extra),
        component(mathx_component),
    );
    index
}

#[test]
fn installs_signed_plugins_with_their_dependencies() {
    let index = index_with_dependency("plugins/calc", "");
    let location = index.write();
    let home = home_trusting(&index);

    let out = install(home.path(), &location, "mathx", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("installed base@1.0.0\ninstalled mathx@1.0.0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("mathx@1.0.0 asks for: calling tools of `base` ^1"),
        "{stdout}"
    );

    let out = invoke(home.path(), "mathx.eval", r#"{"expression":"6*7"}"#);
    assert!(
        text(&out.stdout).contains("\"value\":42"),
        "{}",
        text(&out.stderr)
    );

    // Taking the dependency away leaves the dependent out, with the reason.
    let out = hearth(home.path(), &["plugin", "disable", "base"]);
    assert!(out.status.success());
    let out = invoke(home.path(), "mathx.eval", r#"{"expression":"1"}"#);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("plugin `mathx` is not active") && stderr.contains("`base`"),
        "{stderr}"
    );
    hearth(home.path(), &["plugin", "enable", "base"]);

    // Removing a dependency needs --force, which disables the dependents.
    let out = hearth(home.path(), &["plugin", "remove", "base"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("needed by `mathx`"),
        "{}",
        text(&out.stderr)
    );
    let out = hearth(home.path(), &["plugin", "remove", "base", "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("disabled mathx"));
    let out = hearth(home.path(), &["plugin", "check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[test]
fn bad_installs_fail_at_the_named_step_and_change_nothing() {
    let calc = component("plugins/calc");
    // Each case builds an index, then expects the step and message.
    type Case = (&'static str, fn(&mut Index), &'static str);
    let cases: Vec<Case> = vec![
        (
            "digest mismatch",
            |i| {
                let path = i.component_file(0);
                let mut bytes = std::fs::read(&path).unwrap();
                let at = bytes.len() / 2;
                bytes[at] ^= 1;
                std::fs::write(path, bytes).unwrap();
            },
            "failed at step `digest`: digest mismatch",
        ),
        (
            "bad signature",
            |i| {
                let e = &mut i.entries[0];
                let mut sig = hex::decode(e.signature.as_ref().unwrap()).unwrap();
                sig[0] ^= 1;
                e.signature = Some(hex::encode(sig));
            },
            "failed at step `signature`: bad signature",
        ),
        (
            "unknown key",
            |i| {
                let stranger = SigningKey::from_bytes(&[9; 32]);
                let m = manifest("mathx", "1.0.0", "");
                let bytes = std::fs::read(i.component_file(0)).unwrap();
                i.entries[0] =
                    registry::signed_entry(&stranger, &m, &bytes, &i.entries[0].source.clone());
            },
            "which you do not trust",
        ),
        (
            "unsigned",
            |i| {
                i.entries[0].signature = None;
                i.entries[0].publisher = None;
            },
            "failed at step `signature`: mathx@1.0.0 is not signed",
        ),
        (
            "truncated download",
            |i| {
                let path = i.component_file(0);
                let bytes = std::fs::read(&path).unwrap();
                std::fs::write(path, &bytes[..bytes.len() - 100]).unwrap();
            },
            "failed at step `digest`: size mismatch",
        ),
        (
            "larger than declared",
            |i| {
                let path = i.component_file(0);
                let mut bytes = std::fs::read(&path).unwrap();
                bytes.extend_from_slice(&[0; 4096]);
                std::fs::write(path, bytes).unwrap();
            },
            "failed at step `download`: larger than its declared size",
        ),
        (
            "permissions the entry does not list",
            |i| {
                // notes imports the key-value store; this entry does not grant it.
                let m = manifest("mathx", "1.0.0", "");
                let notes = component("plugins/notes");
                std::fs::write(i.component_file(0), notes).unwrap();
                let source = i.entries[0].source.clone();
                i.entries[0] = registry::signed_entry(&i.key, &m, notes, &source);
            },
            "failed at step `validate`: component imports what plugin `mathx` was not granted: `hearth:plugin/kv@0.1.0` (needs [permissions] kv = true)",
        ),
    ];
    for (name, spoil, expected) in cases {
        let mut index = Index::new();
        index.add(&manifest("mathx", "1.0.0", ""), calc);
        spoil(&mut index);
        let location = index.write();
        let home = home_trusting(&index);
        // Something installed already, to prove it stays as it was.
        let out = hearth(home.path(), &["plugin", "install", "notes", "--yes"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let before = snapshot(home.path());
        let out = install(home.path(), &location, "mathx", &[]);
        assert!(!out.status.success(), "{name}: the install succeeded");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("installing mathx@1.0.0 failed"),
            "{name}: {stderr}"
        );
        assert!(
            stderr.contains(expected),
            "{name}: expected {expected:?} in {stderr}"
        );
        assert!(stderr.contains("nothing was changed"), "{name}: {stderr}");
        assert_eq!(
            snapshot(home.path()),
            before,
            "{name}: the installed set changed"
        );
        assert!(
            !home.path().join("staging").exists()
                || std::fs::read_dir(home.path().join("staging"))
                    .unwrap()
                    .next()
                    .is_none()
        );
    }
}

#[test]
fn unsigned_entries_need_allow_unsigned() {
    let mut index = Index::new();
    let e = index.add(&manifest("mathx", "1.0.0", ""), component("plugins/calc"));
    e.signature = None;
    e.publisher = None;
    let location = index.write();
    let home = tempfile::tempdir().unwrap();
    let out = install(home.path(), &location, "mathx", &["--allow-unsigned"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn downgrades_are_refused_and_upgrades_show_new_permissions() {
    let mut index = Index::new();
    index.add(&manifest("mathx", "1.0.0", ""), component("plugins/calc"));
    index.add(
        &manifest(
            "mathx",
            "2.0.0",
            "[permissions]\nhttp = [\"https://api.example.com\"]\nmemory-mb = 128\n",
        ),
        component("plugins/calc"),
    );
    let location = index.write();
    let home = home_trusting(&index);
    let out = install(home.path(), &location, "mathx@^1", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Without --yes nobody grants the new permissions: nothing changes.
    let before = snapshot(home.path());
    let out = hearth(home.path(), &["plugin", "update"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("failed at step `permissions`"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(snapshot(home.path()), before);
    let out = hearth(home.path(), &["plugin", "update", "--yes"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("installed mathx@2.0.0"), "{stdout}");
    let out = hearth(home.path(), &["plugin", "update", "--yes"]);
    assert!(
        text(&out.stdout).contains("everything is up to date"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        stdout.contains("mathx@2.0.0 (upgrade from 1.0.0)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "NEW permissions: http to https://api.example.com:443, 128 MiB of memory (was 64)"
        ),
        "{stdout}"
    );
    let before = snapshot(home.path());
    let out = install(home.path(), &location, "mathx@=1.0.0", &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("refusing to downgrade"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(snapshot(home.path()), before);
    let out = install(
        home.path(),
        &location,
        "mathx@=1.0.0",
        &["--allow-downgrade"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn first_party_plugins_install_from_the_built_in_index_by_digest() {
    let home = tempfile::tempdir().unwrap();
    let out = hearth(home.path(), &["plugin", "install", "weather", "--yes"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("weather@0.1.1 asks for: http to https://wttr.in:443"));
    let out = hearth(home.path(), &["plugin", "list", "--format", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let weather = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["namespace"] == "weather")
        .unwrap();
    assert_eq!(weather["origin"], "installed from registry.toml (built in)");
}

/// Kills the installer at random moments; every time, the previous set must
/// still be intact and load, and the next command cleans up after it.
#[test]
fn an_install_killed_at_any_moment_leaves_the_previous_set() {
    // mathx runs the notes component, which needs the key-value store.
    let index = index_with_dependency("plugins/notes", "[permissions]\nkv = true\n");
    let location = index.write();
    let home = home_trusting(&index);

    // How long an uninterrupted install takes here (with the compile cache
    // warm, as in every round) bounds the kill times.
    let remove_both = || {
        assert!(
            hearth(home.path(), &["plugin", "remove", "mathx"])
                .status
                .success()
        );
        assert!(
            hearth(home.path(), &["plugin", "remove", "base"])
                .status
                .success()
        );
    };
    assert!(
        install(home.path(), &location, "mathx", &[])
            .status
            .success()
    );
    remove_both();
    let started = std::time::Instant::now();
    assert!(
        install(home.path(), &location, "mathx", &[])
            .status
            .success()
    );
    let full = started.elapsed().as_micros() as u64;
    remove_both();

    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill schedule seed {seed}, full install {full} µs");
    let mut completed = 0;
    for round in 0..20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = std::time::Duration::from_micros(seed % (full + full / 4));
        let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args([
                "plugin",
                "install",
                "mathx",
                "--registry",
                &location,
                "--yes",
            ])
            .env("HEARTH_HOME", home.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        if status.success() {
            completed += 1;
        }
        // The set on disk is either the old one or the new one, whole.
        let out = hearth(home.path(), &["plugin", "check", "--format", "json"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "round {round} (killed after {delay:?}): {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let order: Vec<&str> = report["order"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let has_new = order.contains(&"mathx");
        assert!(
            !has_new || order.contains(&"base"),
            "round {round}: {order:?}"
        );
        if has_new {
            let out = hearth(home.path(), &["plugin", "invoke", "mathx.list"]);
            assert!(out.status.success(), "round {round}: {}", text(&out.stderr));
            // Start again from the previous set for the next round.
            remove_both();
        }
        let staging = home.path().join("staging");
        assert!(
            !staging.exists(),
            "round {round}: staging leftovers were not cleaned"
        );
    }
    eprintln!("{completed} of 20 installs completed before the kill");
}

#[test]
fn a_publisher_signs_with_the_cli_and_a_user_installs() {
    let publisher = tempfile::tempdir().unwrap();
    let key = publisher.path().join("publisher.key");
    let out = hearth(
        publisher.path(),
        &["registry", "keygen", "--out", key.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let public = stdout
        .lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .expect("keygen prints the public key")
        .to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the secret key is readable by others: {mode:o}"
        );
    }
    let dir = publisher.path();
    std::fs::write(dir.join("plugin.toml"), "name = \"mathx\"\nnamespace = \"mathx\"\nversion = \"1.0.0\"\ncontract = \"0.1.0\"\npriority = 3\ndescription = \"math\"\n").unwrap();
    std::fs::write(dir.join("mathx.wasm"), component("plugins/calc")).unwrap();
    let index = dir.join("index.toml");
    let (manifest_path, component_path) = (dir.join("plugin.toml"), dir.join("mathx.wasm"));
    let add = |extra: &[&str]| {
        let mut args = vec![
            "registry",
            "add",
            "--index",
            index.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--manifest",
            manifest_path.to_str().unwrap(),
            "--component",
            component_path.to_str().unwrap(),
            "--source",
            "mathx.wasm",
        ];
        args.extend_from_slice(extra);
        hearth(dir, &args)
    };
    let out = add(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("added mathx@1.0.0"),
        "{}",
        text(&out.stdout)
    );
    // The same version again is refused, and the index is left as it was.
    let before = std::fs::read(&index).unwrap();
    let out = add(&[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("mathx@1.0.0 is already listed")
            && text(&out.stderr).contains("--replace"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(&index).unwrap(), before);
    // With --replace, it takes the old entry's place: still one entry.
    let out = add(&["--replace"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("(1 entries)"),
        "{}",
        text(&out.stdout)
    );

    let user = tempfile::tempdir().unwrap();
    let out = install(user.path(), index.to_str().unwrap(), "mathx", &[]);
    assert!(!out.status.success(), "installed without trusting the key");
    assert!(
        text(&out.stderr).contains("which you do not trust"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        hearth(user.path(), &["registry", "trust", &public])
            .status
            .success()
    );
    let out = install(user.path(), index.to_str().unwrap(), "mathx", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = invoke(user.path(), "mathx.eval", r#"{"expression":"2^10"}"#);
    assert!(
        text(&out.stdout).contains("\"value\":1024"),
        "{}",
        text(&out.stderr)
    );
}
