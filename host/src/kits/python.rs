//! The Python kit: an `app.py` module built into a component by
//! componentize-py, which bundles a CPython interpreter, the standard library
//! and the app, and pre-initializes it (imports run at build time).
//!
//! componentize-py imports every interface of the world it is given, so the
//! world hearth generates from `plugin.toml` — only what is granted — is what
//! keeps a Python plugin's imports within its permissions.

use super::{CONTRACT_VERSION, Kit, KitError, Lang, WORLD, find_program, run};
use crate::plugins::manifest::Manifest;
use std::path::Path;

/// Python plugins.
#[derive(Debug)]
pub struct Python;

/// The componentize-py release the kit's template and command line are
/// written for.
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// The module componentize-py wraps: `app.py` in the plugin folder.
const APP_MODULE: &str = "app";

const APP_PY: &str = r#""""{{name}}: a hearth plugin.

`hearth plugin build` generates `wit/world.wit` from plugin.toml and runs
componentize-py, which writes the `wit_world` bindings this module imports:
grant a permission in plugin.toml (`kv = true`, say) and its module
(`wit_world.imports.kv`) appears.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import types

GREET_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}},
    "required": ["name"],
    "additionalProperties": False,
}


def greet(args: dict) -> dict:
    return {"greeting": f"Hello, {args['name']}!"}


# Tool name -> (description, JSON Schema of its arguments, function).
TOOLS = {
    "greet": ("Greets someone by name", GREET_SCHEMA, greet),
}


class Guest(exports.Guest):
    """What hearth calls. componentize-py finds it by its name, `Guest`."""

    def describe(self) -> types.Description:
        return types.Description(
            tools=[
                types.Tool(
                    name=name,
                    description=description,
                    parameters_schema=json.dumps(schema),
                )
                for name, (description, schema, _) in TOOLS.items()
            ],
            events=[],
        )

    def validate_config(self, config: str) -> None:
        # Raise Err("what is wrong") to refuse a configuration.
        pass

    def invoke(self, tool: str, arguments: str, context: types.CallContext) -> str:
        if tool not in TOOLS:
            raise Err(types.ToolError_UnknownTool(tool))
        # hearth has checked the arguments against the tool's schema. A
        # tool reports a failure the caller should see with
        # `raise Err(types.ToolError_Failed("why"))`; any other exception
        # ends the call with its traceback.
        _, _, function = TOOLS[tool]
        return json.dumps(function(json.loads(arguments)))

    def on_event(self, event: types.Event) -> types.EventOutcome:
        return types.EventOutcome_Proceed()
"#;

const README_MD: &str = r#"# {{name}}

A hearth plugin in Python.

```sh
pip install {{componentize_py}}
hearth plugin build .
hearth plugin dev . --yes
hearth plugin invoke {{name}}.greet --args '{"name":"Ada"}'
```

`app.py` holds the tools: add one to `TOOLS` with its description and the
JSON Schema of its arguments. `hearth plugin build` writes `wit/` (a world
generated from `plugin.toml`) and runs componentize-py, which bundles the
interpreter, the standard library and the modules beside `app.py` into
`plugin.wasm`. Grant a permission in `plugin.toml` (`kv = true`) and, at the
next build, its module (`wit_world.imports.kv`) appears; to read the bindings,
run `componentize-py -d wit -w plugin --import-interface-name
hearth:plugin/types@{{contract}}=types bindings bindings/` after a build (the option
keeps the contract's module named `types` beside a granted `wasi:http/types`).

A Python component starts at about 12.5 MiB of linear memory: keep
`memory-mb` at 32 or more. An uncaught exception ends the call, and its
traceback is shown by `hearth plugin invoke`; to report a failure to the
caller, `raise Err(types.ToolError_Failed("why"))`.
"#;

const GITIGNORE: &str = "# Written by `hearth plugin build`.
/wit/
/plugin.wasm
__pycache__/
# componentize-py bindings, generated to read them.
/bindings/
";

impl Kit for Python {
    fn files(name: &str) -> Vec<(String, String)> {
        vec![
            ("plugin.toml".into(), super::manifest_toml(name, "")),
            ("app.py".into(), APP_PY.replace("{{name}}", name)),
            (
                "README.md".into(),
                README_MD
                    .replace("{{name}}", name)
                    .replace("{{componentize_py}}", COMPONENTIZE_PY)
                    .replace("{{contract}}", CONTRACT_VERSION),
            ),
            (".gitignore".into(), GITIGNORE.into()),
        ]
    }

    fn build(dir: &Path, _manifest: &Manifest) -> Result<(), KitError> {
        let Some(program) = find_program("componentize-py") else {
            return Err(KitError::Missing {
                lang: Lang::Python,
                program: "componentize-py".into(),
                install: format!("pip install {COMPONENTIZE_PY}"),
            });
        };
        // `-d wit -w plugin`: the generated world, never the contract's full
        // one. The app's folder is componentize-py's default Python path, so
        // modules beside app.py are bundled too. The contract's `types` keeps
        // its module name `types` even when a granted `wasi:http/types`
        // shares the name (componentize-py would qualify both, and the
        // template's `from wit_world.imports import types` would break);
        // the other is `wasi_http_types`.
        run(
            Lang::Python,
            dir,
            std::process::Command::new(program)
                .args(["--quiet", "-d", "wit", "-w", WORLD])
                .arg("--import-interface-name")
                .arg(format!("hearth:plugin/types@{CONTRACT_VERSION}=types"))
                .arg("componentize")
                .args([APP_MODULE, "-o", "plugin.wasm"])
                // With RUST_BACKTRACE set, componentize-py appends its own
                // Rust backtrace to an error, which would push the Python
                // traceback (what the author needs) out of the output kept.
                .env("RUST_LIB_BACKTRACE", "0"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scaffold_is_a_loadable_manifest_and_a_filled_in_app() {
        let files = Python::files("greeter");
        let file = |name: &str| super::super::scaffolded(&files, name);
        let manifest = Manifest::parse(file("plugin.toml"), "plugin.toml").unwrap();
        assert_eq!(manifest.namespace.as_str(), "greeter");
        // Room above the ~12.4 MiB a Python component starts with.
        assert!(manifest.permissions.memory_bytes >= 32 << 20);
        let app = file("app.py");
        assert!(app.starts_with("\"\"\"greeter: "), "{app}");
        assert!(app.contains("class Guest(exports.Guest):"), "{app}");
        for text in [app, file("README.md")] {
            assert!(!text.contains("{{"), "{text}");
        }
        assert!(file("README.md").contains("pip install componentize-py==0.25.1"));
        assert!(file(".gitignore").contains("/plugin.wasm"));
    }
}
