//! The Js kit (being written).

use super::{Kit, KitError, Lang};
use crate::plugins::manifest::Manifest;
use std::path::Path;

/// Js plugins.
#[derive(Debug)]
pub struct Js;

impl Kit for Js {
    fn files(name: &str) -> Vec<(String, String)> {
        vec![("plugin.toml".into(), super::manifest_toml(name, ""))]
    }

    fn build(dir: &Path, _manifest: &Manifest) -> Result<(), KitError> {
        Err(KitError::Folder(format!(
            "{}: hearth cannot build {} plugins yet",
            dir.display(),
            Lang::Js
        )))
    }
}
