//! `GET /js/onepd.js`: the browser JavaScript API, served by onepd itself so a
//! site loads it from the same host it sends its events to.
//!
//! The script's source is `http/js/onepd.js`, compiled into the binary; there
//! is no build step, and what is served is what is in the repository. The
//! README's loader snippet loads it and documents the calls.
//!
//! Caching: an hour fresh, a day more served stale while revalidating, and a
//! strong `ETag` (the SHA-256 of the source) so a revalidation answers `304`.
//! Any site may load it: `Access-Control-Allow-Origin: *` and
//! `Cross-Origin-Resource-Policy: cross-origin` (pages with COEP need the
//! latter).

use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

/// The script, as served.
pub const SOURCE: &str = include_str!("js/onepd.js");

/// The route serving the browser API, to merge into the server's router. `GET`
/// also answers `HEAD`.
pub fn js_router() -> axum::Router {
    axum::Router::new().route("/js/onepd.js", get(script))
}

/// The script's strong entity tag: its SHA-256, quoted.
static ETAG: LazyLock<String> = LazyLock::new(|| format!("\"{}\"", hex::encode(Sha256::digest(SOURCE))));

async fn script(headers: HeaderMap) -> Response {
    let etag = ETAG.as_str();
    let mut response = if if_none_match(&headers, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, "application/javascript; charset=utf-8")], SOURCE).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, HeaderValue::from_str(etag).expect("a hex digest is a valid header value"));
    headers
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600, stale-while-revalidate=86400"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("cross-origin"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// Whether `If-None-Match` names `etag`: a list of tags, compared weakly as
/// RFC 9110 requires for this header (`W/"x"` matches `"x"`), or `*`.
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers.get_all(header::IF_NONE_MATCH).iter().filter_map(|value| value.to_str().ok()).any(|value| {
        value.split(',').map(str::trim).any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_if_none_match(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn if_none_match_finds_the_tag_in_a_list_weak_or_strong_or_as_a_star() {
        let etag = "\"abc\"";
        assert!(if_none_match(&with_if_none_match("\"abc\""), etag));
        assert!(if_none_match(&with_if_none_match("\"x\", W/\"abc\""), etag));
        assert!(if_none_match(&with_if_none_match("*"), etag));
        assert!(!if_none_match(&with_if_none_match("\"abd\""), etag));
        assert!(!if_none_match(&with_if_none_match("abc"), etag));
        assert!(!if_none_match(&HeaderMap::new(), etag));
    }

    #[test]
    fn the_script_names_the_crate_version_and_stays_small() {
        let version = format!("const VERSION = '{}';", env!("CARGO_PKG_VERSION"));
        assert!(SOURCE.contains(&version), "onepd.js should declare {version}");
        // Every page loads it: growth should be a decision, not a drift.
        assert!(SOURCE.len() < 20 * 1024, "onepd.js is {} bytes", SOURCE.len());
    }
}
