//! Terminal-safe rendering: what the CLI prints of text a plugin controls
//! (descriptions, errors, JSON results), escaped so that it cannot drive
//! the terminal or pass for the host's own lines.

use super::args::Format;
use crate::manager;
use crate::plugins::Runtime;

/// Most bytes of plugin-controlled text shown in one place (an error, a
/// summary); more is cut. Descriptions are capped far below at load.
const MAX_SHOWN: usize = 64 << 10;

/// Plugin-controlled text for the terminal: control characters (ANSI and
/// OSC sequences start with them) and the invisible characters that
/// reorder or hide text are shown escaped; newlines are kept.
pub(super) fn shown(text: &str) -> String {
    crate::plugins::sanitize(text, MAX_SHOWN)
}

/// As [`shown`], and newlines escaped too, for text printed inside a line
/// of ours: a description must not be able to start lines that look like
/// the host's own.
pub(crate) fn one_line(text: &str) -> String {
    shown(text).replace('\n', "\\n")
}

/// JSON text made safe to print: DEL, the C1 controls (U+0080–U+009F; a
/// terminal reads U+009B as the start of a control sequence) and the
/// invisible format characters that reorder or hide text are rewritten as
/// `\uXXXX` escapes. JSON strings may hold all of them raw, so the result is
/// the same JSON. The C0 controls cannot appear raw in valid JSON; should
/// the text not be valid, they are escaped the same way, except that a
/// carriage return, which in valid JSON can only be whitespace between
/// tokens, becomes a space.
pub fn json_for_terminal(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c == '\r' {
            out.push(' ');
        } else if crate::plugins::manifest::is_disguising(c) {
            // Every such character is in the Basic Multilingual Plane.
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// What `hearth plugin invoke` prints on stderr when the call fails: the
/// error (which may quote the plugin) made safe for a terminal.
pub fn render_invoke_error(tool: &str, error: &crate::plugins::InvokeError) -> String {
    format!("error: {}: {}", one_line(tool), shown(&error.to_string()))
}

/// What `hearth plugin check` prints for `resolution`. In text, problem
/// messages (which may quote a plugin) are made safe for a terminal; in
/// JSON, the whole document goes through [`json_for_terminal`].
pub fn render_check(resolution: &manager::Resolution, format: Format) -> anyhow::Result<String> {
    let r = resolution;
    let mut out = String::new();
    match format {
        Format::Json => {
            let json = serde_json::to_string_pretty(&serde_json::json!({
                "consistent": r.is_consistent(),
                "order": r.order,
                "problems": r.problems.iter().map(|p| {
                    let mut v = serde_json::to_value(p).unwrap_or_default();
                    v["message"] = serde_json::Value::String(p.to_string());
                    v
                }).collect::<Vec<_>>(),
            }))?;
            out.push_str(&json_for_terminal(&json));
            out.push('\n');
        }
        Format::Text => {
            let order = one_line(&r.order.join(", "));
            if r.is_consistent() {
                out.push_str(&format!(
                    "ok: {} plugins, activation order: {order}\n",
                    r.order.len()
                ));
            } else {
                out.push_str(&format!("{} problem(s):\n", r.problems.len()));
                for p in &r.problems {
                    out.push_str(&format!("  - {}\n", one_line(&p.to_string())));
                }
                out.push_str(&format!(
                    "would activate: {}\n",
                    if r.order.is_empty() {
                        "nothing"
                    } else {
                        &order
                    }
                ));
            }
        }
    }
    Ok(out)
}

/// What `hearth plugin list` prints for `loaded`, marking which are active
/// in `runtime`. In text, every string a plugin controls (descriptions,
/// names, grants, origin) is made safe for a terminal and kept on its line;
/// in JSON, the whole document goes through [`json_for_terminal`].
pub fn render_list(
    runtime: &Runtime,
    loaded: &[(
        std::sync::Arc<crate::plugins::LoadedPlugin>,
        manager::Origin,
    )],
    format: Format,
) -> anyhow::Result<String> {
    let is_active = |p: &std::sync::Arc<crate::plugins::LoadedPlugin>| {
        runtime
            .active(p.manifest.namespace.as_str())
            .is_some_and(|a| std::sync::Arc::ptr_eq(&a, p))
    };
    let mut out = String::new();
    match format {
        Format::Json => {
            let list: Vec<serde_json::Value> = loaded
                .iter()
                .map(|(p, origin)| {
                    let mut v = p.summary();
                    v["origin"] = origin.to_string().into();
                    v["active"] = is_active(p).into();
                    v
                })
                .collect();
            out.push_str(&json_for_terminal(&serde_json::to_string_pretty(&list)?));
            out.push('\n');
        }
        Format::Text => {
            for (p, origin) in loaded {
                let m = &p.manifest;
                let namespace = one_line(m.namespace.as_str());
                out.push_str(&format!(
                    "{namespace} {}{} — {}\n  from: {}\n",
                    one_line(&m.version.to_string()),
                    if is_active(p) { "" } else { " (not active)" },
                    one_line(&m.description),
                    one_line(&origin.to_string()),
                ));
                for t in &p.tools {
                    out.push_str(&format!(
                        "  tool {namespace}.{}: {}\n",
                        one_line(&t.name),
                        one_line(&t.description)
                    ));
                }
                // The same wording as the install summary and the upgrade diff.
                let granted = crate::manager::install::describe_permissions(m);
                out.push_str(&format!(
                    "  permissions: {}\n",
                    one_line(&granted.join("; "))
                ));
            }
        }
    }
    Ok(out)
}
