//! Where hearth keeps its data: `$HEARTH_HOME`, or the platform's per-user
//! data directory (`~/.local/share/hearth` on Linux).

use std::path::PathBuf;

/// The data directory layout.
#[derive(Debug, Clone)]
pub struct Home {
    /// The root.
    pub root: PathBuf,
}

impl Home {
    /// `$HEARTH_HOME` if set, else the platform default.
    pub fn from_env() -> anyhow::Result<Home> {
        if let Some(dir) = std::env::var_os("HEARTH_HOME").filter(|d| !d.is_empty()) {
            return Ok(Home { root: dir.into() });
        }
        let dirs = directories::ProjectDirs::from("", "", "hearth").ok_or_else(|| {
            anyhow::anyhow!("cannot find a home directory; set HEARTH_HOME to choose one")
        })?;
        Ok(Home {
            root: dirs.data_dir().to_path_buf(),
        })
    }

    /// User configuration overrides per plugin: `config/<namespace>.toml`.
    pub fn config_dir(&self) -> PathBuf {
        self.root.join("config")
    }
}
