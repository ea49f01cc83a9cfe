//! OAuth 2.0 for a daemon: a token from the token endpoint (client credentials or refresh
//! token), cached until Salesforce refuses it, and the REST base URL the answer names.

use http::HeaderValue;
use serde::Deserialize;
use tokio::sync::Mutex;

use super::AuthConfig;
use crate::destination::{AuthError, OutRequest, Transport, excerpt};
use crate::secret::Secret;

/// How the token is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Flow {
    /// `grant_type=client_credentials` with the consumer key and secret; no refresh token (SF-CC).
    ClientCredentials,
    /// `grant_type=refresh_token` from a one-time login, as Segment does (AD:salesforce/index).
    RefreshToken,
}

/// A token and where to use it.
#[derive(Clone, Debug)]
pub(super) struct Token {
    pub access: Secret,
    /// The org's REST base URL; all REST calls go there (SF-TOK).
    pub instance_url: Option<String>,
}

/// The token endpoint's answer; Salesforce sends no `expires_in` (SF-TOK), so a token is
/// kept until a REST call is refused with `INVALID_SESSION_ID` (SF-SESS).
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Secret,
    instance_url: Option<String>,
}

/// An OAuth error body, `{"error": "invalid_grant", "error_description": "…"}`.
#[derive(Deserialize)]
struct TokenError {
    error: String,
    error_description: Option<String>,
}

/// Fetches and caches the token.
pub(super) struct Tokens {
    url: String,
    flow: Flow,
    client_id: String,
    client_secret: Secret,
    refresh_token: Option<Secret>,
    /// A tokio mutex, held across the fetch, so concurrent callers wait for one fetch
    /// rather than each spending a token request.
    cached: Mutex<Option<Token>>,
}

impl Tokens {
    pub fn new(url: String, c: AuthConfig) -> Result<Self, String> {
        match (c.flow, &c.refresh_token) {
            (Flow::RefreshToken, None) => {
                return Err("auth.flow = \"refresh_token\" needs auth.refresh_token".into());
            }
            (Flow::ClientCredentials, Some(_)) => {
                return Err(
                    "auth.refresh_token is only used with auth.flow = \"refresh_token\"".into(),
                );
            }
            _ => {}
        }
        if c.client_id.trim().is_empty() || c.client_secret.expose().trim().is_empty() {
            return Err("auth.client_id and auth.client_secret must not be empty".into());
        }
        Ok(Self {
            url,
            flow: c.flow,
            client_id: c.client_id,
            client_secret: c.client_secret,
            refresh_token: c.refresh_token,
            cached: Mutex::new(None),
        })
    }

    /// The cached token, or a new one when there is none or `refresh` says it was refused.
    pub async fn get(&self, transport: &Transport, refresh: bool) -> Result<Token, AuthError> {
        let mut cached = self.cached.lock().await;
        if refresh {
            // A refused token is never offered again, even if fetching its successor fails.
            *cached = None;
        }
        if let Some(token) = cached.as_ref() {
            return Ok(token.clone());
        }
        let token = self.fetch(transport).await?;
        *cached = Some(token.clone());
        Ok(token)
    }

    /// The form fields of the token request (AD:salesforce/index `refreshAccessToken`; SF-CC).
    pub fn form(&self) -> Vec<(&'static str, &str)> {
        let mut form = vec![
            (
                "grant_type",
                match self.flow {
                    Flow::ClientCredentials => "client_credentials",
                    Flow::RefreshToken => "refresh_token",
                },
            ),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose()),
        ];
        if let (Flow::RefreshToken, Some(token)) = (self.flow, &self.refresh_token) {
            form.push(("refresh_token", token.expose()));
        }
        form
    }

    async fn fetch(&self, transport: &Transport) -> Result<Token, AuthError> {
        let sent = transport
            .client
            .post(&self.url)
            .form(&self.form())
            .timeout(transport.timeout)
            .send()
            .await;
        // `without_url`: the URL is not secret, but the error text should read the same as
        // the engine's transport errors.
        let response = sent
            .map_err(|e| AuthError(format!("token endpoint unreachable: {}", e.without_url())))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| {
            AuthError(format!(
                "token endpoint answer unreadable: {}",
                e.without_url()
            ))
        })?;
        read_answer(status, &body)
    }
}

/// A token from a token-endpoint answer, or why there is none. Pure.
pub(super) fn read_answer(status: u16, body: &[u8]) -> Result<Token, AuthError> {
    if (200..300).contains(&status) {
        let answer: TokenAnswer = serde_json::from_slice(body).map_err(|_| {
            AuthError(format!(
                "token endpoint answered HTTP {status} without an access_token"
            ))
        })?;
        return Ok(Token {
            access: answer.access_token,
            instance_url: answer.instance_url,
        });
    }
    let why = match serde_json::from_slice::<TokenError>(body) {
        Ok(e) => match e.error_description {
            Some(d) => format!("{}: {d}", e.error),
            None => e.error,
        },
        Err(_) => excerpt(body),
    };
    Err(AuthError(format!(
        "token endpoint answered HTTP {status}: {why}"
    )))
}

/// Point the request at the token's instance and add the bearer header (marked sensitive, so
/// logs show `***`).
pub(super) fn apply(request: &mut OutRequest, token: &Token) -> Result<(), AuthError> {
    if let Some(base) = &token.instance_url {
        // Found by the REST path rather than the configured prefix: on a resend after a
        // refused token the URL already points at the previous token's instance.
        if let Some(at) = request.url.find("/services/data/") {
            request.url = format!("{}{}", base.trim_end_matches('/'), &request.url[at..]);
        }
    }
    let mut value =
        HeaderValue::from_str(&format!("Bearer {}", token.access.expose())).map_err(|_| {
            AuthError("the token endpoint gave a token that cannot be sent in a header".into())
        })?;
    value.set_sensitive(true);
    request.headers.insert(http::header::AUTHORIZATION, value);
    Ok(())
}
