//! Builds the first-party plugins in `plugins/` as wasm components and
//! generates `bundled.rs`, which embeds them with their manifests.

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
}
