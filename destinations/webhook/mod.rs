//! Webhook: POSTs each normalized message as JSON (an array when batching), optionally signed
//! Segment-style (`X-Signature`) and/or per Standard Webhooks (`webhook-*` headers).

mod sign;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Deserialize;

use crate::config::{ConfigError, DestinationConfig};
use crate::destination::{
    Classification, Destination, Item, OutRequest, Response, Translation, classify_status,
};
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

pub fn build(config: &DestinationConfig) -> Result<Arc<dyn Destination>, ConfigError> {
    Ok(Arc::new(Webhook::new(config)?))
}

impl Webhook {
    fn new(config: &DestinationConfig) -> Result<Self, ConfigError> {
        let s = &config.settings;
        let c: WebhookConfig = s.parse()?;
        let name = &config.name;
        let url = s.http_url("url", name, &c.url)?;
        let method = match c.method.to_ascii_uppercase().as_str() {
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            "PATCH" => Method::PATCH,
            other => {
                return Err(s.error(
                    "method",
                    format!("destination `{name}`: method `{other}` is not POST, PUT or PATCH"),
                ));
            }
        };
        let mut headers = HeaderMap::new();
        for (k, v) in &c.headers {
            let key = HeaderName::try_from(k.as_str()).map_err(|_| {
                s.error(
                    "headers",
                    format!("destination `{name}`: `{k}` is not a valid header name"),
                )
            })?;
            let mut value = HeaderValue::try_from(v.as_str()).map_err(|_| {
                s.error(
                    "headers",
                    format!(
                        "destination `{name}`: header `{k}` has a value that is not valid in HTTP"
                    ),
                )
            })?;
            value.set_sensitive(looks_secret(k));
            headers.insert(key, value);
        }
        let scheme = match (&c.signing_secret, c.signature) {
            (None, Some(_)) => {
                return Err(s.error(
                    "signature",
                    format!("destination `{name}`: signature is set but signing_secret is not"),
                ));
            }
            (None, None) => None,
            (Some(_), scheme) => Some(scheme.unwrap_or(Scheme::Segment)),
        };
        let standard_key = match (scheme, &c.signing_secret) {
            (Some(Scheme::Standard | Scheme::Both), Some(secret)) => {
                Some(sign::standard_key(secret.expose()).map_err(|e| {
                    s.error(
                        "signing_secret",
                        format!("destination `{name}`: signing_secret: {e}"),
                    )
                })?)
            }
            _ => None,
        };
        let segment_key = match scheme {
            Some(Scheme::Segment | Scheme::Both) => c.signing_secret.clone(),
            _ => None,
        };
        Ok(Self {
            url,
            method,
            headers,
            as_array: config.batch.max_events.unwrap_or(1) > 1,
            segment_key,
            standard_key,
        })
    }

    /// One request for `items` (batch indexes), its body already serialized.
    fn request(&self, body: Vec<u8>, items: Vec<usize>, id: String, now: SystemTime) -> OutRequest {
        let mut request = OutRequest::json(self.method.clone(), self.url.clone(), body, items);
        for (k, v) in &self.headers {
            request.headers.insert(k.clone(), v.clone());
        }
        if let Some(secret) = &self.segment_key {
            let sig = sign::segment(secret.expose().as_bytes(), &request.body);
            request.headers.insert("x-signature", header(&sig));
        }
        if let Some(key) = &self.standard_key {
            let ts = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let sig = sign::standard(key, &id, ts, &request.body);
            request.headers.insert("webhook-id", header(&id));
            request
                .headers
                .insert("webhook-timestamp", header(&ts.to_string()));
            request.headers.insert("webhook-signature", header(&sig));
        }
        request
    }
}

/// Header values built here are ASCII (hex, base64, digits, or ids checked to be visible ASCII).
fn header(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Custom headers whose values are likely credentials print as `***` in logs.
fn looks_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["auth", "token", "key", "secret", "cookie", "password"]
        .iter()
        .any(|w| n.contains(w))
}

impl Destination for Webhook {
    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn translate(&self, batch: &[Item<'_>], now: SystemTime) -> Translation {
        let mut t = Translation::default();
        if self.as_array {
            let body = serde_json::to_vec(&batch.iter().map(|i| i.message).collect::<Vec<_>>())
                .unwrap_or_default();
            let id = sign::webhook_id(batch.iter().map(|i| i.message_id()), true);
            t.requests
                .push(self.request(body, (0..batch.len()).collect(), id, now));
        } else {
            for (i, item) in batch.iter().enumerate() {
                let body = serde_json::to_vec(item.message).unwrap_or_default();
                let id = sign::webhook_id(std::iter::once(item.message_id()), false);
                t.requests.push(self.request(body, vec![i], id, now));
            }
        }
        t
    }

    fn classify(
        &self,
        request: &OutRequest,
        response: &Response,
        now: SystemTime,
    ) -> Classification {
        classify_status(request, response, now)
    }
}
