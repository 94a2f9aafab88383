//! Golden tests for bad input files: each `tests/ui/<kind>/*.toml` must fail
//! with exactly the message in the `.err` beside it. `HEARTH_BLESS=1`
//! re-records the `.err` files.

use hearth::manager::registry::Index;
use hearth::plugins::Manifest;
use std::path::Path;

/// Runs every case of `tests/ui/<kind>` through `check`, which returns the
/// error text (or says the file was wrongly accepted).
fn golden(kind: &str, check: impl Fn(&str, &str) -> String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui").join(kind);
    let bless = std::env::var_os("HEARTH_BLESS").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 10,
        "expected the golden cases in {}",
        dir.display()
    );
    let mut mismatches = Vec::new();
    for case in cases {
        let name = format!("ui/{kind}/{}", case.file_name().unwrap().to_string_lossy());
        let text = std::fs::read_to_string(&case).unwrap();
        let actual = check(&text, &name);
        let golden = case.with_extension("err");
        if bless {
            std::fs::write(&golden, format!("{actual}\n")).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        if expected.trim_end() != actual {
            mismatches.push(format!(
                "{name}:\n  expected: {}\n  actual:   {actual}",
                expected.trim_end()
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn bad_manifests_get_the_recorded_errors() {
    golden("manifest", |text, name| match Manifest::parse(text, name) {
        Ok(_) => format!("(accepted: {name} should be refused)"),
        Err(e) => e.to_string(),
    });
}

#[test]
fn bad_registry_files_get_the_recorded_errors() {
    golden("registry", |text, name| {
        match Index::parse(text, name, None) {
            Ok(_) => format!("(accepted: {name} should be refused)"),
            Err(e) => e.to_string(),
        }
    });
}
