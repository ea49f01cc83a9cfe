//! Webhook: POSTs each normalized message as JSON (an array when batching), optionally signed
//! Segment-style (`X-Signature`) and/or per Standard Webhooks (`webhook-*` headers).
//!
//! The smallest complete adapter, and the one to copy. This file reads the adapter's own
//! keys into a ready-to-use [`Webhook`] (every check done here, once); `translate.rs` turns
//! messages into requests (pure); `sign.rs` computes signatures (pure). Answers are read by
//! the engine's default `classify`: 2xx delivered, 408/429/5xx retried, other 4xx
//! dead-lettered.

mod sign;
#[cfg(test)]
mod tests;
mod translate;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Deserialize;

use crate::config::{ConfigError, Settings};
use crate::destination::{Destination, Item, Reads, Setup, Translation};
use crate::secret::Secret;

/// A webhook's own keys in its `[[destination]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookConfig {
    /// Where to send; http or https.
    url: String,
    /// `POST` (default), `PUT` or `PATCH`.
    #[serde(default = "default_method")]
    method: String,
    /// Extra headers on every request.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Signs each request when set.
    signing_secret: Option<Secret>,
    /// `segment` (default when a secret is set), `standard`, or `both`.
    signature: Option<Scheme>,
}

fn default_method() -> String {
    "POST".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Scheme {
    Segment,
    Standard,
    Both,
}

/// A configured webhook.
pub struct Webhook {
    url: String,
    method: Method,
    headers: HeaderMap,
    /// Send a JSON array (batch) rather than one object per request.
    as_array: bool,
    segment_key: Option<Secret>,
    /// The decoded HMAC key of a `whsec_` secret, when Standard Webhooks signing is on.
    standard_key: Option<Vec<u8>>,
}

/// The most messages one webhook request carries.
const MAX_BATCH: usize = 1000;

pub fn build(setup: Setup<'_>) -> Result<Arc<dyn Destination>, ConfigError> {
    Ok(Arc::new(Webhook::new(setup)?))
}

impl Webhook {
    fn new(setup: Setup<'_>) -> Result<Self, ConfigError> {
        let s = setup.settings;
        if setup.coalesce == Some(true) {
            return Err(s.error(
                "coalesce",
                "a webhook receiver gets every call as it was sent (each event matters to it), \
                 so calls are never merged; remove coalesce",
            ));
        }
        let c: WebhookConfig = s.parse()?;
        let url = s.http_url("url", &c.url)?;
        let method = match c.method.to_ascii_uppercase().as_str() {
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            "PATCH" => Method::PATCH,
            other => {
                return Err(s.error(
                    "method",
                    format!("method `{other}` is not POST, PUT or PATCH"),
                ));
            }
        };
        let scheme = match (&c.signing_secret, c.signature) {
            (None, Some(_)) => {
                return Err(s.error("signature", "signature is set but signing_secret is not"));
            }
            (None, None) => None,
            (Some(_), scheme) => Some(scheme.unwrap_or(Scheme::Segment)),
        };
        let standard_key = match (scheme, &c.signing_secret) {
            (Some(Scheme::Standard | Scheme::Both), Some(secret)) => Some(
                sign::standard_key(secret.expose())
                    .map_err(|e| s.error("signing_secret", format!("signing_secret: {e}")))?,
            ),
            _ => None,
        };
        let segment_key = match scheme {
            Some(Scheme::Segment | Scheme::Both) => c.signing_secret.clone(),
            _ => None,
        };
        Ok(Self {
            url,
            method,
            headers: headers(s, &c.headers)?,
            as_array: setup.max_events.unwrap_or(1) > 1,
            segment_key,
            standard_key,
        })
    }
}

/// The configured extra headers, checked once; likely credentials print as `***` in logs.
fn headers(s: &Settings, configured: &BTreeMap<String, String>) -> Result<HeaderMap, ConfigError> {
    let mut headers = HeaderMap::new();
    for (k, v) in configured {
        let key = HeaderName::try_from(k.as_str())
            .map_err(|_| s.error("headers", format!("`{k}` is not a valid header name")))?;
        let mut value = HeaderValue::try_from(v.as_str()).map_err(|_| {
            s.error(
                "headers",
                format!("header `{k}` has a value that is not valid in HTTP"),
            )
        })?;
        value.set_sensitive(crate::destination::looks_secret(k));
        headers.insert(key, value);
    }
    Ok(headers)
}

impl Destination for Webhook {
    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    /// The message goes out as it is stored: from the engine's text of it, no field parsed
    /// but those the engine reads itself.
    fn reads(&self) -> Reads {
        Reads::Only(&[])
    }

    fn translate(&self, batch: &[Item<'_>], now: SystemTime) -> Translation {
        translate::translate(self, batch, now)
    }
}
