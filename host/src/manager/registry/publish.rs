//! Adding a signed entry to an index file, checked before it is written.

use super::*;

/// The text of the index at `path` with `entry` added: appended to the
/// existing text (kept as written), or, when an entry of the same
/// namespace and version is listed, refused — or put in its place when
/// `replace`. A missing or empty file starts a new index.
pub fn index_with(path: &Path, entry: &RawEntry, replace: bool) -> Result<String, String> {
    let old = match crate::home::read_text_capped(path, MAX_INDEX_BYTES) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read: {e}")),
    };
    if old.trim().is_empty() {
        return Ok(format!("format = {FORMAT}\n\n{}", entry_toml(entry)));
    }
    let mut table: toml::Table =
        toml::from_str(&old).map_err(|e| format!("is not valid TOML: {e}"))?;
    let same = |t: &toml::Value| {
        t.get("namespace").and_then(toml::Value::as_str) == Some(entry.namespace.as_str())
            && t.get("version").and_then(toml::Value::as_str) == Some(entry.version.as_str())
    };
    let listed = table
        .get("plugin")
        .and_then(toml::Value::as_array)
        .is_some_and(|entries| entries.iter().any(same));
    if !listed {
        let separator = if old.ends_with('\n') { "\n" } else { "\n\n" };
        return Ok(format!("{old}{separator}{}", entry_toml(entry)));
    }
    if !replace {
        return Err(format!(
            "{}@{} is already listed; pass --replace to put this entry in its place",
            entry.namespace, entry.version
        ));
    }
    let new = toml::Value::try_from(entry).map_err(|e| e.to_string())?;
    if let Some(toml::Value::Array(entries)) = table.get_mut("plugin")
        && let Some(old) = entries.iter_mut().find(|e| same(e))
    {
        *old = new;
    }
    toml::to_string(&table).map_err(|e| e.to_string())
}

/// The TOML text of one entry, to append to an index.
pub fn entry_toml(entry: &RawEntry) -> String {
    #[derive(Serialize)]
    struct One<'a> {
        plugin: [&'a RawEntry; 1],
    }
    toml::to_string(&One { plugin: [entry] }).expect("entries serialise")
}
