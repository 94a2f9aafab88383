//! The web page: `GET /` and `GET /assets/{file}`, the files of `host/web/`
//! embedded in the binary at build time and served as they are, with a
//! Content-Security-Policy that lets the page run only its own scripts and
//! talk only to this server.
//!
//! The page holds no data of its own: it calls the API like any client,
//! with the key the user types (kept in the tab's session storage; the
//! admin key only in memory), so serving its files needs no key.

use super::{ApiError, Body_};
use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

/// The page's files: `(name, bytes)`, sorted by name.
const ASSETS: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// What the page may load and where it may connect: its own files and
/// this server, nothing inline, no frames, no forms posting elsewhere.
pub(super) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A name the page's files may have: letters, digits, `-`, `_`, one dot
/// before a known extension; nothing that could leave the folder.
fn content_type(name: &str) -> Option<&'static str> {
    let (stem, ext) = name.rsplit_once('.')?;
    if stem.is_empty()
        || !stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    {
        return None;
    }
    Some(match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        _ => return None,
    })
}

/// The bytes of `name`: from the folder `HEARTH_WEB_DIR` names when it is
/// set (working on the page without rebuilding hearth), else embedded.
fn bytes_of(name: &str) -> Option<Bytes> {
    if let Some(dir) = std::env::var_os("HEARTH_WEB_DIR").filter(|d| !d.is_empty()) {
        let path = std::path::Path::new(&dir).join(name);
        return match std::fs::read(&path) {
            Ok(bytes) => Some(Bytes::from(bytes)),
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), "HEARTH_WEB_DIR: {e}");
                }
                None
            }
        };
    }
    ASSETS
        .binary_search_by(|(n, _)| n.cmp(&name))
        .ok()
        .map(|i| Bytes::from_static(ASSETS[i].1))
}

/// `GET /` (`file` `None`: the page) or `GET /assets/{file}`; a 404
/// naming the file when there is none.
pub(super) fn answer(
    file: Option<&str>,
    method: &http::Method,
) -> Result<Response<Body_>, ApiError> {
    let head = method == http::Method::HEAD;
    asset(file.unwrap_or("index.html"), head).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            match file {
                None => "this build of hearth has no web page".to_string(),
                Some(file) => format!("no asset {file}"),
            },
        )
    })
}

/// The file `name` with its type and the page's security headers; `None`
/// when there is no such file.
fn asset(name: &str, head_only: bool) -> Option<Response<Body_>> {
    let content_type = content_type(name)?;
    let bytes = bytes_of(name)?;
    let length = bytes.len();
    let body = if head_only { Bytes::new() } else { bytes };
    Some(
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, length)
            .header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY)
            .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
            .header(header::REFERRER_POLICY, "no-referrer")
            .header("cross-origin-opener-policy", "same-origin")
            .header("cross-origin-resource-policy", "same-origin")
            .header(header::X_FRAME_OPTIONS, "DENY")
            // Small files, and a new hearth may bring new ones: always
            // revalidated, never stale after an upgrade.
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Full::new(body).boxed())
            .expect("valid response"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_of_known_types_are_served() {
        assert_eq!(
            content_type("app.js"),
            Some("text/javascript; charset=utf-8")
        );
        for bad in [
            "../Cargo.toml",
            "a/b.js",
            ".js",
            "app",
            "x.exe",
            "a..js",
            "%2e%2e.js",
        ] {
            assert_eq!(content_type(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_page_is_embedded_with_its_policy() {
        assert!(ASSETS.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
        let page = asset("index.html", false).expect("index.html is embedded");
        assert_eq!(
            page.headers()[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
        assert!(asset("nope.js", false).is_none());
    }
}
