//! `registry.toml` agrees with what this checkout builds.
//!
//! First-party entries point at a source folder; the component built from
//! it must have exactly the recorded digest and size (reproducible builds),
//! and the entry must describe the same plugin as its `plugin.toml`.
//! `HEARTH_BLESS=1` re-records digests and sizes instead of failing.

use hearth::bundled::BUNDLED;
use hearth::plugins::Manifest;
use hearth::plugins::cache::sha256_hex;

fn registry_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../registry.toml")
}

#[test]
fn first_party_entries_match_the_reproducible_build() {
    let path = registry_path();
    let mut text = std::fs::read_to_string(&path).unwrap();
    let registry: toml::Table = toml::from_str(&text).unwrap();
    let entries = registry["plugin"].as_array().unwrap();
    let bless = std::env::var_os("HEARTH_BLESS").is_some();
    let mut problems = Vec::new();
    for bundled in BUNDLED {
        let manifest = Manifest::parse(bundled.manifest, bundled.source).unwrap();
        let Some(entry) = entries
            .iter()
            .find(|e| e.get("source").and_then(|s| s.as_str()) == Some(bundled.source))
        else {
            problems.push(format!(
                "{}: no registry.toml entry has this source",
                bundled.source
            ));
            continue;
        };
        let field = |k: &str| {
            entry
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        let name = field("name");
        for (key, want) in [
            ("name", manifest.name.to_string()),
            ("namespace", manifest.namespace.to_string()),
            ("version", manifest.version.to_string()),
            ("contract", manifest.contract.to_string()),
        ] {
            if field(key) != want {
                problems.push(format!(
                    "plugin `{name}`: `{key}` is {:?} but plugin.toml says {want:?}",
                    field(key)
                ));
            }
        }
        let digest = sha256_hex(bundled.component);
        let size = bundled.component.len() as i64;
        let recorded_size = entry.get("size").and_then(|v| v.as_integer()).unwrap_or(-1);
        if field("sha256") != digest || recorded_size != size {
            if bless {
                text = text.replace(&field("sha256"), &digest).replace(
                    &format!("size = {recorded_size}\n"),
                    &format!("size = {size}\n"),
                );
            } else {
                problems.push(format!(
                    "plugin `{name}`: registry.toml records sha256 {} and size {recorded_size}, but building {} gives sha256 {digest} and size {size}",
                    field("sha256"),
                    bundled.source
                ));
            }
        }
    }
    // The digests hold for one compiler: name the mismatch plainly.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let recorded = registry
        .get("toolchain")
        .and_then(|t| t.as_str())
        .unwrap_or("")
        .to_string();
    if !version.starts_with(&recorded) || recorded.is_empty() {
        if bless {
            let short = version.split(' ').take(2).collect::<Vec<_>>().join(" ");
            text = text.replace(
                &format!("toolchain = \"{recorded}\""),
                &format!("toolchain = \"{short}\""),
            );
        } else {
            problems.insert(0, format!(
                "the digests were recorded with {recorded:?} (`toolchain` in registry.toml) but this build uses {version:?}; build with that toolchain or re-record"
            ));
        }
    }
    if bless {
        std::fs::write(&path, text).unwrap();
    }
    assert!(
        problems.is_empty(),
        "registry.toml is out of date:\n  {}",
        problems.join("\n  ")
    );
}
