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

    /// The native engine's weight images (see
    /// [`crate::engine::WeightCache`]): safe to delete at any time; a
    /// model's image is made again on its next load.
    pub fn weight_cache_dir(&self) -> PathBuf {
        self.root.join("cache").join("weights")
    }

    /// User configuration overrides per plugin: `config/<namespace>.toml`.
    pub fn config_dir(&self) -> PathBuf {
        self.root.join("config")
    }
}

/// Reads a whole file of at most `max` bytes. The size is checked from the
/// file's metadata before anything is read, and the read itself stops one
/// byte past `max` (a file that grows meanwhile is refused too), so an
/// oversized or sparse file never costs more than `max` bytes of memory.
pub fn read_capped(path: &std::path::Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let too_large = |size: u64| {
        std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("it is {size} bytes; the limit is {max}"),
        )
    };
    if len > max {
        return Err(too_large(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// [`read_capped`] for UTF-8 text.
pub fn read_text_capped(path: &std::path::Path, max: u64) -> std::io::Result<String> {
    String::from_utf8(read_capped(path, max)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_files_are_refused_from_their_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        // A sparse file of 3 GiB: refused without reading (and without
        // allocating) a single page of it.
        std::fs::File::create(&path)
            .unwrap()
            .set_len(3 << 30)
            .unwrap();
        let e = read_capped(&path, 1 << 20).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::FileTooLarge);
        assert!(e.to_string().contains("3221225472 bytes"), "{e}");
        std::fs::write(&path, b"small").unwrap();
        assert_eq!(read_capped(&path, 5).unwrap(), b"small");
        assert!(read_capped(&path, 4).is_err());
    }
}
