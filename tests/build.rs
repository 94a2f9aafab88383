//! Builds the guest fixtures under `tests/fixtures/` and generates one
//! constant per fixture (its `.wasm` path and `plugin.toml` path).

use std::fmt::Write;
use std::path::Path;

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let root = Path::new(&manifest_dir).parent().unwrap();
    let artifacts =
        hearth_guest_build::build(root, &["tests/fixtures/hostile", "tests/fixtures/spy"]);
    let mut code = String::new();
    for a in &artifacts {
        let name = a
            .package
            .trim_start_matches("hearth-fixture-")
            .replace('-', "_")
            .to_uppercase();
        writeln!(code, "/// `{}` built for wasm32-wasip2.", a.package).unwrap();
        writeln!(
            code,
            "pub const {name}_WASM: &str = {:?};",
            a.wasm.display().to_string()
        )
        .unwrap();
        writeln!(code, "/// The directory of `{}`.", a.package).unwrap();
        writeln!(
            code,
            "pub const {name}_DIR: &str = {:?};",
            a.dir.display().to_string()
        )
        .unwrap();
    }
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("fixtures.rs");
    std::fs::write(out, code).unwrap();
}
