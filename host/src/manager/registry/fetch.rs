//! Fetching an entry's component into a staging file: from this build, a
//! file, or HTTP(S), never more than its declared size, hashed as it comes.

use super::*;

/// A downloaded component, hashed while written.
#[derive(Debug)]
pub struct Staged {
    /// The staging file (removed on drop unless kept).
    pub file: tempfile::NamedTempFile,
    /// Hex SHA-256 of what arrived.
    pub sha256: String,
    /// Bytes that arrived.
    pub size: u64,
}

struct HashingWriter<'a> {
    file: &'a mut std::fs::File,
    hasher: Sha256,
    size: u64,
    cap: u64,
}

impl HashingWriter<'_> {
    fn write(&mut self, chunk: &[u8]) -> Result<(), String> {
        self.size += chunk.len() as u64;
        if self.size > self.cap {
            return Err(format!(
                "larger than its declared size of {} bytes",
                self.cap
            ));
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .map_err(|e| format!("writing the staging file: {e}"))
    }
}

/// Fetches an entry's component into `staging`, never reading more than
/// its declared size plus one byte, hashing as it goes.
pub async fn fetch(entry: &Entry, staging: &Path) -> Result<Staged, String> {
    std::fs::create_dir_all(staging).map_err(|e| format!("creating {}: {e}", staging.display()))?;
    let mut file = tempfile::NamedTempFile::new_in(staging)
        .map_err(|e| format!("creating a staging file: {e}"))?;
    let mut sink = HashingWriter {
        file: file.as_file_mut(),
        hasher: Sha256::new(),
        size: 0,
        cap: entry.size,
    };
    match &entry.source {
        Source::Repo(dir) => {
            let bundled = BUNDLED
                .iter()
                .find(|b| b.source == *dir)
                .expect("validated source");
            sink.write(bundled.component)?;
        }
        Source::File(path) => {
            use std::io::Read;
            let f = std::fs::File::open(path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            // One byte more than declared is enough to know it is too big.
            let mut limited = f.take(entry.size + 1);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = limited
                    .read(&mut buf)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                if n == 0 {
                    break;
                }
                sink.write(&buf[..n])?;
            }
        }
        Source::Url(url) => {
            // Streamed into the staging file as it arrives, never more
            // than the declared size.
            let client = registry_client().map_err(|e| e.to_string())?;
            let response = client.get_ok(url).await.map_err(|e| e.to_string())?;
            let mut body = client.body("GET", response, entry.size);
            loop {
                match body.chunk().await {
                    Ok(Some(chunk)) => sink.write(&chunk)?,
                    Ok(None) => break,
                    Err(HttpError::TooLarge { limit, .. }) => {
                        return Err(format!(
                            "GET {url}: larger than its declared size of {limit} bytes"
                        ));
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
    }
    let sha256 = hex::encode(sink.hasher.finalize());
    let size = sink.size;
    file.as_file()
        .sync_all()
        .map_err(|e| format!("syncing the staging file: {e}"))?;
    Ok(Staged { file, sha256, size })
}

/// The client for registry downloads (indexes and components).
///
/// Redirects are not followed: a component's digest and size are pinned by
/// its signed entry, and the index is named by the URL the user gave, so
/// both are fetched from exactly that URL, and a 3xx is reported with
/// where it points rather than silently followed to a host nobody named
/// (possibly over plain HTTP). Sixty seconds for the whole download, as
/// before; fifteen of them at most for connecting.
fn registry_client() -> Result<Client, HttpError> {
    Client::new(Options {
        connect_timeout: std::time::Duration::from_secs(15),
        total_timeout: Some(std::time::Duration::from_secs(60)),
        idle_timeout: None,
        follow_redirects: false,
    })
}

/// GETs `url` (200 OK only), failing with [`HttpError::TooLarge`] past
/// `cap` bytes.
pub(super) async fn get_capped(url: &str, cap: u64) -> Result<Vec<u8>, HttpError> {
    let client = registry_client()?;
    let response = client.get_ok(url).await?;
    client.body("GET", response, cap).bytes().await
}

/// GETs a URL into `out`, failing past `cap` bytes (the error names the
/// limit and the URL), on answers other than 200 (redirects included),
/// and after 60 seconds. HTTPS uses the Mozilla root certificates.
pub async fn http_get(url: &str, cap: u64, out: &mut Vec<u8>) -> Result<(), String> {
    out.extend_from_slice(&get_capped(url, cap).await.map_err(|e| e.to_string())?);
    Ok(())
}
