//! The Zig kit (being written).

use super::{Kit, KitError, Lang};
use crate::plugins::manifest::Manifest;
use std::path::Path;

/// Zig plugins.
#[derive(Debug)]
pub struct Zig;

impl Kit for Zig {
    fn files(name: &str) -> Vec<(String, String)> {
        vec![("plugin.toml".into(), super::manifest_toml(name, ""))]
    }

    fn build(dir: &Path, _manifest: &Manifest) -> Result<(), KitError> {
        Err(KitError::Folder(format!(
            "{}: hearth cannot build {} plugins yet",
            dir.display(),
            Lang::Zig
        )))
    }
}
