//! Who may use the admin side: a bearer token (the API, scripts) or the console's session
//! cookie (the browser), and the checks that keep another site from using that cookie.
//!
//! - Tokens are compared in constant time, every configured token each time.
//! - A session is a random id in an `HttpOnly`, `SameSite=Strict` cookie, kept in memory
//!   (a restart logs everybody out) for [`SESSION_TTL`], and only while the token it was
//!   opened with is still configured (a reload that removes a token closes its sessions).
//! - With the cookie, a request that changes anything must carry the session's CSRF token in
//!   `X-CSRF-Token` (a form: `csrf_token`), and an `Origin` header, when sent, must be this
//!   host: a page on another site can neither read the token nor set the header.
//! - A write key never opens anything here: admin tokens are checked, never sources.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, header};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::AdminError;
use crate::secret::Secret;

/// How long a console session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The session cookie's name.
pub const COOKIE: &str = "switchyard_session";
/// Most sessions kept at once; the oldest goes first.
const MAX_SESSIONS: usize = 1000;

/// A console login.
struct Session {
    /// SHA-256 of the token that opened it: the session ends when that token is removed.
    token: [u8; 32],
    csrf: String,
    expires: Instant,
}

/// Console sessions by id.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

/// Who a request is, once admitted.
pub enum Caller {
    Bearer,
    /// A console session, with its CSRF token (for the page to send back).
    Session {
        csrf: String,
    },
}

impl Sessions {
    /// A new session for `token` (already checked); returns `(id, csrf)`.
    pub fn open(&self, token: &str) -> (String, String) {
        let (id, csrf) = (random_hex(), random_hex());
        let mut sessions = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = (sessions.iter())
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            id.clone(),
            Session {
                token: digest(token),
                csrf: csrf.clone(),
                expires: now + SESSION_TTL,
            },
        );
        (id, csrf)
    }

    pub fn close(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// The CSRF token of a live session opened with a token still in `tokens`.
    fn csrf_of(&self, id: &str, tokens: &[Secret]) -> Option<String> {
        let mut sessions = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let s = sessions.get(id)?;
        let token_kept = tokens.iter().any(|t| digest(t.expose()) == s.token);
        if s.expires <= Instant::now() || !token_kept {
            sessions.remove(id);
            return None;
        }
        Some(s.csrf.clone())
    }
}

/// Whether `given` is one of `tokens`; every token is compared, each in constant time.
pub fn token_matches(tokens: &[Secret], given: &str) -> bool {
    let mut found = false;
    for t in tokens {
        found |= t.matches(given);
    }
    found
}

/// Admit a request: a configured bearer token, or a live session cookie (with the CSRF
/// checks for anything but a read).
pub fn admit(
    tokens: &[Secret],
    sessions: &Sessions,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Caller, AdminError> {
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let given = (auth.to_str().ok()).and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
        return match given {
            Some(t) if token_matches(tokens, t.trim()) => Ok(Caller::Bearer),
            Some(_) => Err(AdminError::unauthorized("wrong admin token")),
            None => Err(AdminError::unauthorized(
                "the admin side takes `Authorization: Bearer <admin token>` (a write key opens ingest only)",
            )),
        };
    }
    let Some(id) = cookie(headers, COOKIE) else {
        return Err(AdminError::unauthorized(
            "no admin token: send `Authorization: Bearer <admin token>`, or log in at /console",
        ));
    };
    let csrf = sessions
        .csrf_of(&id, tokens)
        .ok_or_else(|| AdminError::unauthorized("the console session has ended; log in again"))?;
    if !matches!(*method, Method::GET | Method::HEAD) {
        same_origin(headers)?;
        let sent = (headers.get("x-csrf-token"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !bool::from(sent.as_bytes().ct_eq(csrf.as_bytes())) {
            return Err(AdminError::forbidden(
                "missing or wrong X-CSRF-Token: a change from the console must come from its own page",
            ));
        }
    }
    Ok(Caller::Session { csrf })
}

/// An `Origin` header, when a browser sends one, must name this host.
pub fn same_origin(headers: &HeaderMap) -> Result<(), AdminError> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = (headers.get(header::HOST))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
    if host.is_empty() || origin_host != host {
        return Err(AdminError::forbidden(format!(
            "a request from {origin} cannot change anything here (cross-site)"
        )));
    }
    Ok(())
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    (headers.get_all(header::COOKIE).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// 32 random bytes from the OS-seeded CSPRNG, as hex.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn tokens() -> Vec<Secret> {
        vec![Secret::new("admin-token-0123456789")]
    }

    fn with(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_session_needs_its_csrf_token_for_changes_and_ends_with_its_admin_token() {
        let sessions = Sessions::default();
        let (id, csrf) = sessions.open("admin-token-0123456789");
        let cookie = format!("other=1; {COOKIE}={id}");
        let read = with(&[("cookie", &cookie)]);
        assert!(admit(&tokens(), &sessions, &Method::GET, &read).is_ok());
        assert!(admit(&tokens(), &sessions, &Method::POST, &read).is_err());
        let change = with(&[("cookie", &cookie), ("x-csrf-token", &csrf)]);
        assert!(admit(&tokens(), &sessions, &Method::POST, &change).is_ok());
        let cross = with(&[
            ("cookie", &cookie),
            ("x-csrf-token", &csrf),
            ("host", "127.0.0.1:8088"),
            ("origin", "https://evil.example"),
        ]);
        assert!(admit(&tokens(), &sessions, &Method::POST, &cross).is_err());
        let rotated = vec![Secret::new("another-token-0123456789")];
        assert!(admit(&rotated, &sessions, &Method::GET, &read).is_err());
        assert!(
            admit(&tokens(), &sessions, &Method::GET, &read).is_err(),
            "closed for good"
        );
    }
}
