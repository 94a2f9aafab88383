//! Builds the first-party plugins in `plugins/` as wasm components and
//! generates `bundled.rs`, which embeds them with their manifests, and
//! `web_assets.rs`, which embeds the web page's files from `web/` as they
//! are (no bundler: the files served are the files in the repository).

use std::fmt::Write;
use std::path::Path;

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let root = Path::new(&manifest_dir).parent().unwrap();
    let artifacts =
        hearth_guest_build::build(root, &["plugins/calc", "plugins/notes", "plugins/weather"]);
    let mut code = String::from("&[\n");
    for a in &artifacts {
        let manifest = a.dir.join("plugin.toml");
        println!("cargo:rerun-if-changed={}", manifest.display());
        writeln!(
            code,
            "    Bundled {{ source: {:?}, manifest: include_str!({:?}), component: include_bytes!({:?}) }},",
            a.dir.strip_prefix(root).unwrap().display().to_string(),
            manifest.display().to_string(),
            a.wasm.display().to_string(),
        )
        .unwrap();
    }
    code.push_str("]\n");
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("bundled.rs");
    std::fs::write(out, code).unwrap();
    web_assets(Path::new(&manifest_dir));
}

/// `web_assets.rs`: `(name, bytes)` for every file of `web/`, sorted.
fn web_assets(manifest_dir: &Path) {
    let web = manifest_dir.join("web");
    // A directory here makes cargo look at every file in it.
    println!("cargo:rerun-if-changed={}", web.display());
    let mut names: Vec<String> = std::fs::read_dir(&web)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut code = String::from("&[\n");
    for name in names {
        writeln!(
            code,
            "    ({name:?}, include_bytes!({:?}) as &[u8]),",
            web.join(&name).display().to_string()
        )
        .unwrap();
    }
    code.push_str("]\n");
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("web_assets.rs");
    std::fs::write(out, code).unwrap();
}
