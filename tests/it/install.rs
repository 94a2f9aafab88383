//! Installing over HTTP: the index and the component both come from a
//! loopback server.

use hearth::home::Home;
use hearth::manager::install::{self, Options};
use hearth::manager::registry::{self, Index};
use hearth::plugins::manifest::RawManifest;
use hearth_tests::{MockServer, Scratch};

#[tokio::test]
async fn index_and_component_are_fetched_over_http() {
    let calc = hearth::bundled::BUNDLED
        .iter()
        .find(|b| b.source == "plugins/calc")
        .unwrap()
        .component;
    let manifest: RawManifest = toml::from_str(
        "name = \"mathx\"\nnamespace = \"mathx\"\nversion = \"1.0.0\"\ncontract = \"0.1.0\"\npriority = 3\ndescription = \"math\"\n",
    )
    .unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    // The entry's source is filled in once the server's port is known.
    let server = {
        let index = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let served = index.clone();
        let server = MockServer::routes(200, move |path| match path {
            "/index.toml" => Some(bytes::Bytes::from(served.lock().unwrap().clone())),
            "/mathx.wasm" => Some(bytes::Bytes::from_static(calc)),
            _ => None,
        })
        .await;
        let entry = registry::signed_entry(
            &key,
            &manifest,
            calc,
            &format!("http://{}/mathx.wasm", server.addr),
        );
        *index.lock().unwrap() = format!("format = 1\n\n{}", registry::entry_toml(&entry));
        server
    };
    let index = Index::load(&format!("http://{}/index.toml", server.addr))
        .await
        .unwrap();
    assert_eq!(index.entries.len(), 1);

    let s = Scratch::new();
    let home = Home {
        root: s.dir.path().to_path_buf(),
    };
    registry::TrustedKeys::add(&home, &hex_public(&key)).unwrap();
    let report = install::install(
        &home,
        &s.runtime,
        &index,
        "mathx",
        &semver::VersionReq::STAR,
        &Options::default(),
        &mut |_| true,
    )
    .await
    .unwrap();
    assert_eq!(report.installed, ["mathx@1.0.0"]);
    assert_eq!(server.hits(), 2, "one index and one component download");

    // A running host picks the change up without restarting.
    assert!(s.runtime.active("mathx").is_none());
    hearth::manager::reload(&s.runtime, &home).await.unwrap();
    let v = s
        .call("mathx.eval", serde_json::json!({"expression": "3*3"}))
        .await
        .unwrap();
    assert_eq!(v["value"], 9);
    install::set_enabled(&home, "mathx", false).unwrap();
    hearth::manager::reload(&s.runtime, &home).await.unwrap();
    assert!(s.runtime.active("mathx").is_none());
    assert!(s.runtime.active("calc").is_some());
}

#[tokio::test]
async fn downloads_stop_at_the_declared_size_and_do_not_follow_redirects() {
    let calc = hearth::bundled::BUNDLED
        .iter()
        .find(|b| b.source == "plugins/calc")
        .unwrap()
        .component;
    // The server sends 100 bytes more than the signed entry declares.
    let mut padded = calc.to_vec();
    padded.extend_from_slice(&[0; 100]);
    let padded = bytes::Bytes::from(padded);
    let server = MockServer::routes(200, move |path| {
        (path == "/mathx.wasm").then(|| padded.clone())
    })
    .await;
    let manifest: RawManifest = toml::from_str(
        "name = \"mathx\"\nnamespace = \"mathx\"\nversion = \"1.0.0\"\ncontract = \"0.1.0\"\ndescription = \"math\"\n",
    )
    .unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let url = format!("http://{}/mathx.wasm", server.addr);
    let entry = registry::signed_entry(&key, &manifest, calc, &url);
    let text = format!("format = 1\n\n{}", registry::entry_toml(&entry));
    let index = Index::parse(&text, "test index", None).unwrap();
    let staging = tempfile::tempdir().unwrap();
    let err = registry::fetch(&index.entries[0], staging.path())
        .await
        .unwrap_err();
    assert!(err.contains("larger than its declared size"), "{err}");
    assert!(err.contains(&url), "{err}");

    // An index behind a redirect: the 302 and where it points are
    // reported, and the target is never asked.
    let target = MockServer::start(200, "format = 1\n").await;
    let redirector = MockServer::redirect(format!("http://{}/index.toml", target.addr)).await;
    let location = format!("http://{}/index.toml", redirector.addr);
    let err = Index::load(&location).await.unwrap_err().to_string();
    assert!(err.contains("302"), "{err}");
    assert!(
        err.contains(&format!("http://{}/index.toml", target.addr)),
        "{err}"
    );
    assert_eq!(target.hits(), 0, "redirects are not followed");
}

fn hex_public(key: &ed25519_dalek::SigningKey) -> String {
    key.verifying_key()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
