//! The JavaScript kit: an ES module built into a component by
//! componentize-qjs, which embeds the QuickJS engine, evaluates the module at
//! build time and snapshots the result (Wizer), so a call starts from an
//! already-initialised engine.
//!
//! componentize-qjs maps the world onto the module: the exported interface
//! `hearth:plugin/guest` is the object the module exports as `guest`, WIT
//! names become camelCase (`validate-config` → `validateConfig`), and each
//! imported interface is an ES module named by its WIT name
//! (`import tools from "hearth:plugin/tools@0.1.0"`). It imports every
//! interface of the world it is given, so the world hearth generates from
//! `plugin.toml` keeps a plugin's imports within its permissions.
//!
//! Its default runtime uses the component model's async ABI, which hearth
//! does not enable for plugins: the kit always passes `--sync`.

use super::{Kit, KitError, Lang, WORLD, find_program, run};
use crate::plugins::manifest::Manifest;
use std::path::{Path, PathBuf};

/// JavaScript plugins.
#[derive(Debug)]
pub struct Js;

/// The componentize-qjs release the kit's template and command line are
/// written for.
pub const COMPONENTIZE_QJS: &str = "componentize-qjs@0.4.5";

/// The toolchain's program.
const PROGRAM: &str = "componentize-qjs";

/// The module built when `package.json` names no `main`.
const DEFAULT_ENTRY: &str = "app.js";

const APP_JS: &str = r#"// {{name}}: a hearth plugin.
//
// `hearth plugin build` generates `wit/world.wit` from plugin.toml and runs
// componentize-qjs, which maps that world onto this module: the exported
// interface `hearth:plugin/guest` is the object exported as `guest` below
// (WIT names in camelCase: `validate-config` is `validateConfig`), and each
// imported interface is a module named by its WIT name. `logging` and
// `config` are always there; grant a permission in plugin.toml
// (`kv = true`, `llm-tokens = N`, `[dependencies]`) and, at the next build,
// its module ("hearth:plugin/kv@0.1.0", …) can be imported too.

import logging from "hearth:plugin/logging@0.1.0";

// QuickJS has no `console`: this one writes to hearth's log
// (`HEARTH_LOG=hearth=info` shows `console.log`).
const log =
  (level) =>
  (...parts) =>
    logging.log(level, parts.map((p) => (typeof p === "string" ? p : JSON.stringify(p))).join(" "));
globalThis.console = { debug: log("debug"), log: log("info"), info: log("info"), warn: log("warn"), error: log("error") };

const GREET_SCHEMA = {
  type: "object",
  properties: { name: { type: "string" } },
  required: ["name"],
  additionalProperties: false,
};

function greet(args) {
  return { greeting: `Hello, ${args.name}!` };
}

// Tool name -> its description (for the model), the JSON Schema of its
// arguments, and the function that runs it.
const TOOLS = {
  greet: { description: "Greets someone by name", schema: GREET_SCHEMA, run: greet },
};

// What hearth calls. componentize-qjs finds it by its name, `guest`.
export const guest = {
  describe() {
    return {
      tools: Object.entries(TOOLS).map(([name, tool]) => ({
        name,
        description: tool.description,
        parametersSchema: JSON.stringify(tool.schema),
      })),
      events: [],
    };
  },

  validateConfig(config) {
    // Throw a string (or an Error) to refuse a configuration: its message
    // names the key that is wrong.
  },

  invoke(tool, args, context) {
    const entry = TOOLS[tool];
    if (!entry) {
      throw { tag: "unknown-tool", val: tool };
    }
    // hearth has checked the arguments against the tool's schema. To report
    // a failure the caller should see, throw a tool error:
    //   throw { tag: "failed", val: "why" };
    // any other exception ends the call with its message and stack.
    return JSON.stringify(entry.run(JSON.parse(args)));
  },

  onEvent(event) {
    return { tag: "proceed" };
  },
};
"#;

const PACKAGE_JSON: &str = r#"{
  "name": "{{name}}",
  "version": "0.1.0",
  "description": "{{name}}: a hearth plugin",
  "private": true,
  "type": "module",
  "main": "app.js",
  "scripts": {
    "build": "hearth plugin build ."
  },
  "devDependencies": {
    "componentize-qjs": "{{version}}"
  }
}
"#;

const README_MD: &str = r#"# {{name}}

A hearth plugin in JavaScript.

```sh
npm install            # componentize-qjs, into node_modules/ (or: npm install -g {{componentize_qjs}})
hearth plugin build .
hearth plugin dev . --yes
hearth plugin invoke {{name}}.greet --args '{"name":"Ada"}'
```

`app.js` holds the tools: add one to `TOOLS` with its description and the
JSON Schema of its arguments. `hearth plugin build` writes `wit/` (a world
generated from `plugin.toml`) and runs
`componentize-qjs --sync --wit wit --world plugin --js app.js --output plugin.wasm`,
which embeds QuickJS, evaluates the module and snapshots it into
`plugin.wasm`. Modules `app.js` imports (relative paths, or ES module
packages in `node_modules/`) are bundled too. Grant a permission in `plugin.toml`
(`kv = true`) and, at the next build, its module
(`import kv from "hearth:plugin/kv@0.1.0"`) can be imported.

To fail a call with a message for the caller, `throw { tag: "failed", val: "why" }`;
any other exception ends the call, and `hearth plugin invoke` shows its
message and stack.
"#;

const GITIGNORE: &str = "# Written by `hearth plugin build`.
/wit/
/plugin.wasm
# Written by `npm install`.
/node_modules/
";

impl Kit for Js {
    fn files(name: &str) -> Vec<(String, String)> {
        let version = COMPONENTIZE_QJS
            .rsplit_once('@')
            .map_or(COMPONENTIZE_QJS, |(_, v)| v);
        vec![
            ("plugin.toml".into(), super::manifest_toml(name, "")),
            ("app.js".into(), APP_JS.replace("{{name}}", name)),
            (
                "package.json".into(),
                PACKAGE_JSON
                    .replace("{{name}}", name)
                    .replace("{{version}}", version),
            ),
            (
                "README.md".into(),
                README_MD
                    .replace("{{name}}", name)
                    .replace("{{componentize_qjs}}", COMPONENTIZE_QJS),
            ),
            (".gitignore".into(), GITIGNORE.into()),
        ]
    }

    fn build(dir: &Path, manifest: &Manifest) -> Result<(), KitError> {
        // Said before anything runs: componentize-qjs 0.4.5 pre-initializes
        // the module in a wasmtime of its own that links no `wasi:http`
        // matching WASI's streams, so it fails on such a world with a bare
        // linker error.
        if super::grants_http(manifest) {
            return Err(KitError::Unsupported {
                lang: Lang::Js,
                grant: "`http` (outgoing HTTP, wasi:http)".into(),
                why: format!(
                    "{COMPONENTIZE_QJS} cannot build a component that imports wasi:http (its \
                     build-time snapshot has no wasi:http to link); remove `http` from \
                     [permissions], or write the plugin in Python, Rust or C"
                ),
            });
        }
        // `npm install` in the plugin folder (the template's package.json
        // pins the tool) puts it here, without touching PATH.
        let local = dir.join("node_modules").join(".bin").join(PROGRAM);
        let Some(program) = Some(local)
            .filter(|p| p.is_file())
            .or_else(|| find_program(PROGRAM))
        else {
            return Err(KitError::Missing {
                lang: Lang::Js,
                program: PROGRAM.into(),
                install: format!("npm install -g {COMPONENTIZE_QJS}"),
            });
        };
        // The tool runs in `dir`: a relative path (from `hearth plugin
        // build some/dir`, or a relative PATH entry) would be looked up
        // from there.
        let program = std::path::absolute(&program).map_err(|source| KitError::Io {
            path: program.clone(),
            source,
        })?;
        let entry = entry(dir)?;
        if !dir.join(&entry).is_file() {
            return Err(KitError::Folder(format!(
                "{}: the entry module {} does not exist (package.json's `main`, or {DEFAULT_ENTRY})",
                dir.display(),
                entry.display()
            )));
        }
        // `--sync`: the default runtime uses the component model's async
        // ABI, which the host refuses. `--world plugin` over `wit/`: the
        // generated world, never the contract's full one. No `--minify`,
        // so an exception's stack names the lines of the source. The
        // module root is the plugin folder (the working directory), so
        // relative imports and `node_modules/` packages are bundled.
        run(
            Lang::Js,
            dir,
            std::process::Command::new(program)
                .args(["--sync", "--wit", "wit", "--world", WORLD, "--js"])
                .arg(&entry)
                .args(["--output", "plugin.wasm"])
                // As for componentize-py: with RUST_BACKTRACE set the tool
                // appends a Rust backtrace that pushes the JavaScript error
                // out of the output kept.
                .env("RUST_LIB_BACKTRACE", "0"),
        )
    }
}

/// The module to build, relative to `dir`: `package.json`'s `main` when it
/// names one, else `app.js`.
fn entry(dir: &Path) -> Result<PathBuf, KitError> {
    let path = dir.join("package.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DEFAULT_ENTRY.into()),
        Err(source) => return Err(KitError::Io { path, source }),
    };
    let package: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| KitError::Folder(format!("{}: {e}", path.display())))?;
    match package.get("main") {
        None => Ok(DEFAULT_ENTRY.into()),
        Some(serde_json::Value::String(main)) if !main.is_empty() => Ok(main.into()),
        Some(_) => Err(KitError::Folder(format!(
            "{}: `main` must be the path of the plugin's module, e.g. \"{DEFAULT_ENTRY}\"",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scaffold_is_a_loadable_manifest_and_a_filled_in_module() {
        let files = Js::files("greeter");
        let file = |name: &str| super::super::scaffolded(&files, name);
        let manifest = Manifest::parse(file("plugin.toml"), "plugin.toml").unwrap();
        assert_eq!(manifest.namespace.as_str(), "greeter");
        let app = file("app.js");
        assert!(app.starts_with("// greeter: "), "{app}");
        assert!(app.contains("export const guest = {"), "{app}");
        assert!(app.contains("globalThis.console = {"), "{app}");
        let package: serde_json::Value = serde_json::from_str(file("package.json")).unwrap();
        assert_eq!(package["name"], "greeter");
        assert_eq!(package["main"], DEFAULT_ENTRY);
        assert_eq!(package["devDependencies"]["componentize-qjs"], "0.4.5");
        for text in [app, file("README.md"), file("package.json")] {
            assert!(!text.contains("{{"), "{text}");
        }
        assert!(file("README.md").contains("npm install -g componentize-qjs@0.4.5"));
        let ignored = file(".gitignore");
        assert!(ignored.contains("/plugin.wasm") && ignored.contains("/node_modules/"));
    }

    #[test]
    fn the_entry_is_package_json_main_or_app_js() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(entry(dir.path()).unwrap(), PathBuf::from("app.js"));
        std::fs::write(dir.path().join("package.json"), r#"{"name":"x"}"#).unwrap();
        assert_eq!(entry(dir.path()).unwrap(), PathBuf::from("app.js"));
        std::fs::write(dir.path().join("package.json"), r#"{"main":"src/main.js"}"#).unwrap();
        assert_eq!(entry(dir.path()).unwrap(), PathBuf::from("src/main.js"));
        std::fs::write(dir.path().join("package.json"), r#"{"main":3}"#).unwrap();
        assert!(entry(dir.path()).is_err());
    }

    #[test]
    fn granting_http_is_refused_at_build_naming_the_toolchain() {
        let dir = tempfile::tempdir().unwrap();
        let text = super::super::manifest_toml("j", "http = [\"https://api.example.com\"]\n");
        let manifest = Manifest::parse(&text, "plugin.toml").unwrap();
        let err = Js::build(dir.path(), &manifest).unwrap_err().to_string();
        assert!(
            err.contains("plugin.toml grants `http`")
                && err.contains("js plugins cannot use yet")
                && err.contains(
                    "componentize-qjs@0.4.5 cannot build a component that imports wasi:http"
                ),
            "{err}"
        );
    }
}
