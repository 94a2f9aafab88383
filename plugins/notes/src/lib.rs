//! `notes`: saves, lists and searches short notes in the plugin's own
//! key-value namespace.

use hearth_sdk::{Call, Plugin, Tool, ToolError, Value, json, kv};
use serde::{Deserialize, Serialize};

/// A stored note.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Note {
    /// Sequential id, starting at 1.
    pub id: u64,
    /// Short title; the first line of the text when none was given.
    pub title: String,
    /// The note itself.
    pub text: String,
    /// Seconds since the Unix epoch when it was saved.
    pub created: u64,
}

/// Longest note text accepted, in bytes.
pub const MAX_TEXT: usize = 16 * 1024;

const NEXT_ID: &str = "meta:next-id";

fn key(id: u64) -> String {
    // Zero-padded so that key order is id order.
    format!("note:{id:016}")
}

/// The title used when none is given: the first non-empty line, shortened.
pub fn default_title(text: &str) -> String {
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut title: String = line.trim().chars().take(60).collect();
    if line.trim().chars().count() > 60 {
        title.push('…');
    }
    title
}

/// Whether `note` matches every word of `query`, ignoring case.
pub fn matches(note: &Note, query: &str) -> bool {
    let haystack = format!("{}\n{}", note.title, note.text).to_lowercase();
    query
        .split_whitespace()
        .all(|word| haystack.contains(&word.to_lowercase()))
}

fn all_notes() -> Result<Vec<Note>, ToolError> {
    let mut notes = Vec::new();
    for k in kv::list_keys("note:")? {
        if let Some(note) = kv::get_json::<Note>(&k)? {
            notes.push(note);
        }
    }
    Ok(notes)
}

fn summary(note: &Note) -> Value {
    json!({ "id": note.id, "title": note.title, "created": note.created })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SaveArgs {
    text: String,
    title: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchArgs {
    query: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdArgs {
    id: u64,
}

struct Notes;

impl Plugin for Notes {
    fn tools() -> Vec<Tool> {
        let id_schema = json!({
            "type": "object",
            "properties": { "id": { "type": "integer", "minimum": 1 } },
            "required": ["id"],
            "additionalProperties": false
        });
        vec![
            Tool::new("save", "Save a note; returns its id").schema(json!({
                "type": "object",
                "properties": {
                    "text": { "type": "string", "description": "The note" },
                    "title": { "type": "string", "description": "Optional short title" }
                },
                "required": ["text"],
                "additionalProperties": false
            })),
            Tool::new("list", "List all notes (id, title, created)"),
            Tool::new("search", "Find notes containing every word of the query").schema(json!({
                "type": "object",
                "properties": { "query": { "type": "string" } },
                "required": ["query"],
                "additionalProperties": false
            })),
            Tool::new("get", "Read one note by id").schema(id_schema.clone()),
            Tool::new("delete", "Delete one note by id").schema(id_schema),
        ]
    }

    fn validate_config(config: &Value) -> Result<(), String> {
        match config.get("max-notes") {
            None => Ok(()),
            Some(v) if v.as_u64().is_some_and(|n| n > 0) => Ok(()),
            Some(v) => Err(format!("`max-notes` must be a positive integer, not {v}")),
        }
    }

    fn invoke(call: Call) -> Result<Value, ToolError> {
        match call.tool.as_str() {
            "save" => {
                let args: SaveArgs = call.args()?;
                if args.text.trim().is_empty() {
                    return Err(ToolError::invalid("`text` is empty"));
                }
                if args.text.len() > MAX_TEXT {
                    return Err(ToolError::invalid(format!(
                        "`text` is {} bytes; the limit is {MAX_TEXT}",
                        args.text.len()
                    )));
                }
                let max: u64 = hearth_sdk::config::get("max-notes")
                    .map_err(ToolError::failed)?
                    .unwrap_or(1000);
                let count = kv::list_keys("note:")?.len() as u64;
                if count >= max {
                    return Err(ToolError::failed(format!(
                        "there are already {count} notes (max-notes = {max}); delete some first"
                    )));
                }
                let id = kv::get_json::<u64>(NEXT_ID)?.unwrap_or(1);
                let created = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let note = Note {
                    id,
                    title: args
                        .title
                        .filter(|t| !t.trim().is_empty())
                        .unwrap_or_else(|| default_title(&args.text)),
                    text: args.text,
                    created,
                };
                kv::set_json(&key(id), &note)?;
                kv::set_json(NEXT_ID, &(id + 1))?;
                Ok(json!({ "id": id, "title": note.title }))
            }
            "list" => {
                let notes = all_notes()?;
                Ok(json!({ "notes": notes.iter().map(summary).collect::<Vec<_>>() }))
            }
            "search" => {
                let args: SearchArgs = call.args()?;
                let found: Vec<Value> = all_notes()?
                    .iter()
                    .filter(|n| matches(n, &args.query))
                    .map(|n| json!({ "id": n.id, "title": n.title, "text": n.text }))
                    .collect();
                Ok(json!({ "query": args.query, "notes": found }))
            }
            "get" => {
                let args: IdArgs = call.args()?;
                match kv::get_json::<Note>(&key(args.id))? {
                    Some(note) => Ok(serde_json::to_value(note).map_err(ToolError::failed)?),
                    None => Err(ToolError::failed(format!("no note with id {}", args.id))),
                }
            }
            "delete" => {
                let args: IdArgs = call.args()?;
                let existed = kv::delete(&key(args.id))?;
                if !existed {
                    return Err(ToolError::failed(format!("no note with id {}", args.id)));
                }
                Ok(json!({ "deleted": args.id }))
            }
            other => Err(ToolError::UnknownTool(other.to_string())),
        }
    }
}

hearth_sdk::register!(Notes);

#[cfg(test)]
mod tests {
    use super::*;

    fn note(title: &str, text: &str) -> Note {
        Note {
            id: 1,
            title: title.into(),
            text: text.into(),
            created: 0,
        }
    }

    #[test]
    fn titles_default_to_the_first_line() {
        assert_eq!(default_title("\n  buy milk \nand eggs"), "buy milk");
        let long = "x".repeat(100);
        assert_eq!(default_title(&long).chars().count(), 61);
    }

    #[test]
    fn search_needs_every_word_in_any_case() {
        let n = note("Shopping", "Buy MILK and eggs");
        assert!(matches(&n, "milk"));
        assert!(matches(&n, "shopping eggs"));
        assert!(!matches(&n, "milk bread"));
        assert!(matches(&n, ""));
    }

    #[test]
    fn keys_sort_by_id() {
        assert!(key(9) < key(10));
    }
}
