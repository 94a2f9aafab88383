//! Weight images for the native engine: the model's matrices, regrouped
//! once into the kernels' layout and written to a cache folder, then
//! memory-mapped on every start (see `hearth_kernels::image`).
//!
//! Why: regrouping a model's tensors into panels takes seconds and a copy
//! of the weights in private memory per process. A mapped image loads in
//! the time its pages take to fault in (page-cache reads on a second
//! start), its resident memory is the file's size, and every process
//! running the model shares the same pages.
//!
//! Images are named by the SHA-256 of the model file, so a model copied or
//! renamed keeps its image and a changed model never meets a stale one.
//! Hashing reads the whole file, so the digest is remembered per (path,
//! size, modification time, inode): only a changed file is hashed again.
//! An image is written under a temporary name and renamed into place, so
//! concurrent starts never see half an image; a damaged one (or one of an
//! older format) is rebuilt. Any failure of the cache itself (a read-only
//! folder, a full disk) costs only the cache: the model then runs from
//! private memory, as without one.

use hearth_kernels::llama::Llama;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufWriter, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A folder of weight images.
#[derive(Debug, Clone)]
pub struct WeightCache {
    dir: PathBuf,
}

/// How a model's weights were obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Mapped from an image made earlier.
    Mapped,
    /// Read from the model file, then written as an image and mapped.
    Built,
    /// Read from the model file; the cache could not be used.
    Private,
}

impl WeightCache {
    /// A cache in `dir` (created when the first image is written).
    pub fn new(dir: impl Into<PathBuf>) -> WeightCache {
        WeightCache { dir: dir.into() }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The model at `model`, mapped from its image when there is a valid
    /// one; otherwise `build` reads it, and the result is written as an
    /// image and mapped (falling back to `build`'s model when the cache
    /// cannot be written).
    pub fn load<E>(
        &self,
        model: &Path,
        threads: usize,
        build: impl FnOnce() -> Result<Llama, E>,
    ) -> Result<(Llama, Source), E> {
        let digest = match self.digest(model) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(model = %model.display(), error = %e, "cannot hash the model for its weight image; loading without one");
                return Ok((build()?, Source::Private));
            }
        };
        let image = self.dir.join(format!("{}.weights", hex::encode(digest)));
        if image.exists() {
            match map(&image, &digest, threads) {
                Ok(llama) => return Ok((llama, Source::Mapped)),
                Err(e) => {
                    tracing::warn!(image = %image.display(), error = %e, "rebuilding the weight image");
                    let _ = std::fs::remove_file(&image);
                }
            }
        }
        let llama = build()?;
        match self.write(&llama, &digest, &image) {
            Ok(()) => match map(&image, &digest, threads) {
                Ok(mapped) => Ok((mapped, Source::Built)),
                Err(e) => {
                    tracing::warn!(image = %image.display(), error = %e, "cannot map the weight image just written; running from private memory");
                    Ok((llama, Source::Private))
                }
            },
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write a weight image; running from private memory");
                Ok((llama, Source::Private))
            }
        }
    }

    /// Writes `llama`'s image to `path`, under a temporary name first.
    fn write(&self, llama: &Llama, digest: &[u8; 32], path: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        let out = llama.write_image(digest, BufWriter::with_capacity(1 << 20, tmp))?;
        let tmp = out.into_inner().map_err(|e| e.into_error())?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }

    /// The model file's SHA-256, from the memo when the file is unchanged.
    fn digest(&self, model: &Path) -> std::io::Result<[u8; 32]> {
        let meta = std::fs::metadata(model)?;
        let canonical = std::fs::canonicalize(model)?;
        let identity = format!(
            "{}\0{}\0{}\0{}\0{}\0{}",
            canonical.display(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.dev(),
            meta.ino()
        );
        let memo = self
            .dir
            .join("digests")
            .join(hex::encode(Sha256::digest(identity.as_bytes())));
        if let Ok(text) = std::fs::read_to_string(&memo)
            && let Ok(bytes) = hex::decode(text.trim())
            && let Ok(digest) = <[u8; 32]>::try_from(bytes)
        {
            return Ok(digest);
        }
        let mut hasher = Sha256::new();
        let mut file = File::open(model)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let digest: [u8; 32] = hasher.finalize().into();
        // Only a memo: a failure to keep it costs a hash next time.
        if let Some(parent) = memo.parent()
            && std::fs::create_dir_all(parent).is_ok()
            && let Ok(mut tmp) = tempfile::NamedTempFile::new_in(parent)
        {
            use std::io::Write;
            if tmp.write_all(hex::encode(digest).as_bytes()).is_ok() {
                let _ = tmp.persist(&memo);
            }
        }
        Ok(digest)
    }
}

/// Maps an image and reads the model from it. The mapping is populated
/// up front (read-ahead in one pass rather than a fault per page in the
/// first forward pass).
fn map(path: &Path, digest: &[u8; 32], threads: usize) -> Result<Llama, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    // SAFETY: images are written under another name and renamed into
    // place, never modified afterwards, so the mapped bytes do not change
    // while the model borrows them (deleting the file keeps the mapping).
    let map =
        unsafe { memmap2::MmapOptions::new().populate().map(&file) }.map_err(|e| e.to_string())?;
    Llama::from_image(Arc::new(map), digest, threads)
}
