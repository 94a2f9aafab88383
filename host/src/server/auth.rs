//! API keys: `Authorization: Bearer <key>`, compared by digest.

use super::{ApiError, AppState};
use http::{Request, StatusCode, header};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};

/// Checks the caller's key when the server has API keys.
pub(super) fn authorize(state: &AppState, req: &Request<Incoming>) -> Result<(), ApiError> {
    if state.key_digests.is_empty() {
        return Ok(());
    }
    check_key(&state.key_digests, req)
}

/// The SHA-256 digests of `keys`, as the server keeps them.
pub(super) fn digests(keys: &[String]) -> Vec<[u8; 32]> {
    keys.iter()
        .map(|k| Sha256::digest(k.as_bytes()).into())
        .collect()
}

/// Accepts a request whose bearer key has one of `digests`.
pub(super) fn check_key(digests: &[[u8; 32]], req: &Request<Incoming>) -> Result<(), ApiError> {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(given) = given else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "missing API key: send `Authorization: Bearer <key>`",
        ));
    };
    // Comparing digests makes the comparison independent of the key's
    // length; folding every byte makes it independent of where they differ.
    let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    let mut ok = 0u8;
    for key in digests {
        let diff = key
            .iter()
            .zip(&digest)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        ok |= u8::from(diff == 0);
    }
    if ok == 0 {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid API key",
        ));
    }
    Ok(())
}
