//! The HTTP vocabulary between an adapter and the engine: the request an adapter wants sent
//! and the response `classify` reads. Plain data; nothing here does I/O.

use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// An HTTP request an adapter wants sent, and which items of the batch it carries.
#[derive(Clone)]
pub struct OutRequest {
    pub method: Method,
    pub url: String,
    /// Mark credential values `set_sensitive(true)`: logs then show `***`.
    pub headers: HeaderMap,
    /// The exact bytes sent (signatures are computed over them).
    pub body: Bytes,
    /// Indexes into the batch given to `translate`; `classify` answers one verdict for each.
    pub items: Vec<usize>,
    /// For each entry of `items`, the part of the body that carries it (e.g. the record an
    /// item was merged into), so `classify` can map per-part answers back to items without
    /// state. Empty when each item is its own part or the answer is all-or-nothing.
    pub parts: Vec<usize>,
}

impl OutRequest {
    pub fn json(method: Method, url: impl Into<String>, body: Vec<u8>, items: Vec<usize>) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(concat!("switchyard/", env!("CARGO_PKG_VERSION"))),
        );
        Self {
            method,
            url: url.into(),
            headers,
            body: Bytes::from(body),
            items,
            parts: Vec::new(),
        }
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }
}

impl fmt::Debug for OutRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutRequest")
            .field("method", &self.method)
            .field("url", &redacted_url(&self.url))
            .field("headers", &redacted_headers(&self.headers))
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("items", &self.items)
            .field("parts", &self.parts)
            .finish()
    }
}

/// Headers as `name: value` lines, sensitive values shown as `***`.
pub fn redacted_headers(headers: &HeaderMap) -> Vec<String> {
    headers
        .iter()
        .map(|(k, v)| {
            let shown = if v.is_sensitive() {
                "***"
            } else {
                v.to_str().unwrap_or("<binary>")
            };
            format!("{k}: {shown}")
        })
        .collect()
}

/// Only where a URL goes: `scheme://host[:port]`, then `/***` when it has a path or a query
/// (a webhook URL often carries its token there); no credentials.
pub fn origin_only(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) if u.path() != "/" || u.query().is_some() => {
            format!("{}/***", u.origin().ascii_serialization())
        }
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => "<a URL that cannot be parsed>".into(),
    }
}

/// A URL fit for a log line: a password in it, and the values of query parameters whose
/// names look like credentials (`token`, `key`, `secret`, `sig`, …), shown as `***`.
pub fn redacted_url(url: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return "<a URL that cannot be parsed>".to_string();
    };
    if parsed.password().is_some() {
        // Only fails for URLs that cannot have credentials, and this one has some.
        let _ = parsed.set_password(Some("***"));
    } else if !parsed.username().is_empty() {
        // A user name alone is often the secret itself (`nats://TOKEN@host`, `https://KEY@…`).
        let _ = parsed.set_username("***");
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let shown = if looks_secret(&k) {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), shown)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// A header or parameter name that likely carries a credential.
pub fn looks_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "auth",
        "token",
        "key",
        "secret",
        "cookie",
        "pass",
        "sig",
        "session",
        "credential",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// A response as `classify` sees it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The first 500 bytes of a body, for reasons and dead letters.
pub fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 500;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]).into_owned();
    if body.len() > MAX {
        format!("{text}…")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_url_hides_its_credentials() {
        assert_eq!(
            redacted_url("http://user:PASS@host/dry?token=SECRET&team=growth&api_key=K"),
            "http://user:***@host/dry?token=***&team=growth&api_key=***"
        );
        assert_eq!(
            redacted_url("https://api.mixpanel.com/groups?verbose=1"),
            "https://api.mixpanel.com/groups?verbose=1"
        );
        assert_eq!(redacted_url("not a url"), "<a URL that cannot be parsed>");
    }
}
