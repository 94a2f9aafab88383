//! What the runtime refuses at load time, and the compiled-component cache.

use hearth::bundled::BUNDLED;
use hearth::plugins::{CacheOutcome, LoadError, Manifest};
use hearth_tests::{Scratch, fixtures, load_bundled};
use serde_json::json;

fn calc_manifest() -> Manifest {
    let calc = BUNDLED.iter().find(|b| b.source == "plugins/calc").unwrap();
    Manifest::parse(calc.manifest, "plugins/calc/plugin.toml").unwrap()
}

#[tokio::test]
async fn malformed_bytes_are_refused_with_a_clear_error() {
    let s = Scratch::new();
    for bytes in [
        &b""[..],
        b"not wasm at all",
        b"\0asm\x0d\0\x01\0\xff\xff\xff garbage",
        b"\0asm\x01\0\0\0", // a core module, not a component
    ] {
        let err = s
            .runtime
            .load(calc_manifest(), bytes, None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, LoadError::Invalid(_) | LoadError::NotAPlugin(_)),
            "{bytes:?}: {err}"
        );
    }
    // Truncating a real component breaks it too.
    let calc = BUNDLED.iter().find(|b| b.source == "plugins/calc").unwrap();
    let half = &calc.component[..calc.component.len() / 2];
    let err = s
        .runtime
        .load(calc_manifest(), half, None)
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::Invalid(_)), "{err}");
}

#[tokio::test]
async fn a_component_that_exports_no_guest_interface_is_refused() {
    let s = Scratch::new();
    let err = s
        .runtime
        .load(
            calc_manifest(),
            &wat::parse_str("(component)").unwrap(),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::NotAPlugin(_)), "{err}");
    assert!(
        err.to_string().contains("exports no `hearth:plugin/guest`")
            && err.to_string().contains(">=0.1.0, <0.2.0"),
        "{err}"
    );
}

/// A component exporting an (empty) instance as the guest interface of
/// `version`, stamped with `stamp` if given.
fn guest_named(version: &str, stamp: Option<&str>) -> Vec<u8> {
    let stamp = stamp
        .map(|s| format!(r#"(core module (@custom "hearth:contract-version" "{s}"))"#))
        .unwrap_or_default();
    wat::parse_str(format!(
        r#"(component {stamp} (instance $g) (export "hearth:plugin/guest@{version}" (instance $g)))"#
    ))
    .unwrap()
}

#[tokio::test]
async fn the_contract_version_is_read_from_the_exported_interface() {
    let s = Scratch::new();
    // No stamp needed: 0.1.0 is read from the export's name, and loading
    // goes on to find that the interface lacks its functions.
    let err = s
        .runtime
        .load(calc_manifest(), &guest_named("0.1.0", None), None)
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::BadExports(_)), "{err}");
    // A version this host does not speak is named with the supported ones.
    let err = s
        .runtime
        .load(calc_manifest(), &guest_named("0.2.0", None), None)
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::UnsupportedContract(_)), "{err}");
    assert!(
        err.to_string().contains("at 0.2.0") && err.to_string().contains(">=0.1.0, <0.2.0"),
        "{err}"
    );
    // A stamp, when present, must agree with the export.
    let err = s
        .runtime
        .load(calc_manifest(), &guest_named("0.1.0", Some("0.2.0")), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, LoadError::NotAPlugin(_)) && err.to_string().contains("stamp says 0.2.0"),
        "{err}"
    );
}

/// A component that exports nothing, stamped with `contract`.
fn stamped(contract: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(component (core module (@custom "hearth:contract-version" "{contract}")))"#
    ))
    .unwrap()
}

#[tokio::test]
async fn stamped_components_with_the_wrong_exports_or_contract_are_refused() {
    let s = Scratch::new();
    let err = s
        .runtime
        .load(calc_manifest(), &stamped("0.1.0"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::NotAPlugin(_)), "{err}");
    assert!(err.to_string().contains("hearth:plugin/guest"), "{err}");
    let err = s
        .runtime
        .load(calc_manifest(), &stamped("0.2.0"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::NotAPlugin(_)), "{err}");
}

#[tokio::test]
async fn compilation_is_bounded_by_the_watchdog() {
    // Nothing cached, and no time to compile: the load is refused instead
    // of waiting on the compiler.
    let s = Scratch::with(|o| o.compile_timeout = std::time::Duration::from_micros(1));
    let calc = BUNDLED.iter().find(|b| b.source == "plugins/calc").unwrap();
    let err = s
        .runtime
        .load(calc_manifest(), calc.component, None)
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::CompileTimeout(_)), "{err}");
}

#[tokio::test]
async fn oversized_components_are_refused_before_parsing() {
    let s = Scratch::with(|o| o.max_component_bytes = 1024);
    let calc = BUNDLED.iter().find(|b| b.source == "plugins/calc").unwrap();
    let err = s
        .runtime
        .load(calc_manifest(), calc.component, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, LoadError::TooLarge { limit: 1024, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn an_import_no_host_provides_is_refused() {
    let s = Scratch::new();
    let bytes = std::fs::read(fixtures::SPY_WASM).unwrap();
    let manifest = Manifest::parse(
        "name = \"spy\"\nnamespace = \"spy\"\nversion = \"0.1.0\"\ncontract = \"0.1.0\"\ndescription = \"spy\"\n",
        "spy/plugin.toml",
    )
    .unwrap();
    let err = s.runtime.load(manifest, &bytes, None).await.unwrap_err();
    match &err {
        LoadError::UnknownImport { import } => assert_eq!(import, "evil:spy/secrets"),
        other => panic!("{other}"),
    }
    assert!(s.runtime.active("spy").is_none());
}

#[tokio::test]
async fn configuration_is_validated_by_the_plugin() {
    let s = Scratch::new();
    let err = load_bundled(
        &s.runtime,
        "weather",
        Some(json!({"units": "kelvin"})),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, LoadError::Config { plugin, message } if plugin == "weather" && message.contains("units")),
        "{err}"
    );
}

#[tokio::test]
async fn compiled_components_are_cached_and_tampering_is_detected() {
    let s = Scratch::isolated();
    let first = s.bundled("calc").await;
    assert_eq!(first.cache, CacheOutcome::Compiled);

    // A restart loads the verified artifact instead of compiling.
    let again = Scratch::runtime_in(s.dir.path(), |_| {});
    let calc = load_bundled(&again, "calc", None, |_| {}).await.unwrap();
    assert_eq!(calc.cache, CacheOutcome::Hit);

    // Flip one byte in the artifact: it must be rejected and recompiled,
    // never loaded.
    let path = again.cache().artifact_path(again.engine(), &calc.digest);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let third = Scratch::runtime_in(s.dir.path(), |_| {});
    let calc = load_bundled(&third, "calc", None, |_| {}).await.unwrap();
    match &calc.cache {
        CacheOutcome::Recompiled(why) => assert!(why.contains("checksum"), "{why}"),
        other => panic!("tampered artifact was not detected: {other:?}"),
    }
    let out = third
        .invoke_qualified(
            "calc.eval",
            r#"{"expression":"2*(3+4)"}"#,
            hearth::plugins::CallScope::new("t"),
        )
        .await
        .unwrap();
    assert!(out.contains("\"value\":14"), "{out}");

    // The recompiled artifact replaced the tampered one.
    let fourth = Scratch::runtime_in(s.dir.path(), |_| {});
    let calc = load_bundled(&fourth, "calc", None, |_| {}).await.unwrap();
    assert_eq!(calc.cache, CacheOutcome::Hit);
}

#[tokio::test]
async fn a_missing_checksum_means_recompiling() {
    let s = Scratch::isolated();
    let calc = s.bundled("calc").await;
    let path = s
        .runtime
        .cache()
        .artifact_path(s.runtime.engine(), &calc.digest);
    std::fs::remove_file(path.with_extension("cwasm.sha256")).unwrap();
    let again = Scratch::runtime_in(s.dir.path(), |_| {});
    let calc = load_bundled(&again, "calc", None, |_| {}).await.unwrap();
    assert!(
        matches!(calc.cache, CacheOutcome::Recompiled(_)),
        "{:?}",
        calc.cache
    );
}
