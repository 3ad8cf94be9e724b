//! Files embedded in the binary at build time: the console page (`GET /`)
//! and the browser client (`GET /client/roomcast.js`). Each is served with
//! its content type, a strong `ETag` (a hash of its bytes, fixed at compile
//! time) and `Cache-Control: no-cache`, so browsers keep a copy and
//! revalidate it with `If-None-Match` (answered `304 Not Modified`).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS,
};
use hyper::{Request, Response, StatusCode};

/// One embedded file.
pub struct Asset {
    /// The file's bytes.
    pub body: &'static [u8],
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its FNV-1a 64 hash, the `ETag`'s value.
    pub hash: u64,
}

/// The console page, `net/client/console.html`.
pub const CONSOLE: Asset = Asset::new(
    include_bytes!("../client/console.html"),
    "text/html; charset=utf-8",
);

/// The browser client, `net/client/roomcast.js`.
pub const CLIENT: Asset = Asset::new(
    include_bytes!("../client/roomcast.js"),
    "text/javascript; charset=utf-8",
);

impl Asset {
    const fn new(body: &'static [u8], content_type: &'static str) -> Asset {
        Asset {
            body,
            content_type,
            hash: fnv1a(body),
        }
    }

    /// The `ETag` header value, e.g. `"3f2a…"`.
    pub fn etag(&self) -> String {
        format!("\"{:016x}\"", self.hash)
    }

    /// The answer to a `GET`: the file, or 304 when `If-None-Match` names
    /// its current tag (or is `*`).
    pub fn response<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let etag = self.etag();
        let matches = request
            .headers()
            .get_all(IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|tag| tag.trim().trim_start_matches("W/"))
            .any(|tag| tag == etag || tag == "*");
        let mut response = if matches {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r
        } else {
            let mut r = Response::new(Full::new(Bytes::from_static(self.body)));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
            r
        };
        let headers = response.headers_mut();
        headers.insert(
            ETAG,
            HeaderValue::from_str(&etag).expect("hex is a valid header"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        response
    }
}

/// FNV-1a, 64 bits: enough to tell versions of a file apart (not a security hash).
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(if_none_match: Option<&str>) -> Request<()> {
        let mut builder = Request::get("/client/roomcast.js");
        if let Some(tag) = if_none_match {
            builder = builder.header(IF_NONE_MATCH, tag);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn etags_differ_between_files_and_match_revalidation() {
        assert_ne!(CONSOLE.etag(), CLIENT.etag());
        assert_eq!(CLIENT.response(&get(None)).status(), StatusCode::OK);
        let tag = CLIENT.etag();
        assert_eq!(
            CLIENT.response(&get(Some(&tag))).status(),
            StatusCode::NOT_MODIFIED
        );
        let list = format!("\"x\", W/{tag}");
        assert_eq!(
            CLIENT.response(&get(Some(&list))).status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            CLIENT.response(&get(Some("\"other\""))).status(),
            StatusCode::OK
        );
    }

    #[test]
    fn fnv1a_known_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
