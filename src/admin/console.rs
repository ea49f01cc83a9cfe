//! The console's pages, served from the binary (`assets/console/`, embedded at build time;
//! nothing is fetched from elsewhere): the login form, the app page with the session's CSRF
//! token filled in, its script and style, and login and logout.
//!
//! Every page goes out with a strict Content-Security-Policy (scripts and styles from this
//! origin only, no framing) and `Cache-Control: no-store`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::Admin;
use super::auth::{self, COOKIE, SESSION_TTL};
use crate::telemetry::{self, Throttle};

const INDEX: &str = include_str!("../../assets/console/index.html");
const LOGIN: &str = include_str!("../../assets/console/login.html");
const LOGIN_JS: &str = include_str!("../../assets/console/login.js");
const APP_JS: &str = include_str!("../../assets/console/app.js");
const APP_CSS: &str = include_str!("../../assets/console/app.css");

const CSP: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// Failed console logins are logged at most once a minute, with a count.
static FAILED_LOGINS: Throttle = Throttle::new(std::time::Duration::from_secs(60), 0);

pub(super) fn router() -> Router<Arc<Admin>> {
    Router::new()
        .route("/console", get(page))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        .route("/console/login", post(login))
        .route("/console/logout", post(logout))
        .route("/console/app.js", get(|| asset(APP_JS, "text/javascript")))
        .route(
            "/console/login.js",
            get(|| asset(LOGIN_JS, "text/javascript")),
        )
        .route("/console/app.css", get(|| asset(APP_CSS, "text/css")))
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    secure(([(header::CONTENT_TYPE, kind)], body).into_response())
}

fn html(status: StatusCode, body: String) -> Response {
    let response = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    );
    secure(response.into_response())
}

fn secure(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// `GET /console`: the app with a live session, else the login form.
async fn page(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    let tokens = admin.control.current().admin_tokens.clone();
    if tokens.is_empty() {
        let off = "<!doctype html><title>Switchyard</title><p>The admin side is off: set <code>[admin] token</code> in the config.</p>";
        return html(StatusCode::NOT_FOUND, off.into());
    }
    match auth::admit(&tokens, &admin.sessions, &axum::http::Method::GET, &headers) {
        Ok(auth::Caller::Session { csrf }) => {
            html(StatusCode::OK, INDEX.replace("{{csrf_token}}", &csrf))
        }
        _ => html(StatusCode::OK, LOGIN.to_string()),
    }
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

/// `POST /console/login`: a right token opens a session (cookie), a wrong one goes back to
/// the form.
async fn login(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    form: Result<Form<Login>, axum::extract::rejection::FormRejection>,
) -> Response {
    if let Err(e) = auth::same_origin(&headers) {
        return e.into_response();
    }
    let tokens = admin.control.current().admin_tokens.clone();
    let token = form.map(|f| f.0.token).unwrap_or_default();
    if tokens.is_empty() || !auth::token_matches(&tokens, token.trim()) {
        if let Some(failed) = FAILED_LOGINS.due(telemetry::once) {
            tracing::warn!(
                failed_since_last_line = failed,
                "console login refused: wrong token"
            );
        }
        return secure(Redirect::to("/console?failed=1").into_response());
    }
    let (id, _) = admin.sessions.open(token.trim());
    // Behind a TLS proxy that says so, the cookie is never sent over plain HTTP.
    let https = (headers.get("x-forwarded-proto"))
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if https { "; Secure" } else { "" }
    );
    let mut response = Redirect::to("/console").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    tracing::info!("console login");
    secure(response)
}

#[derive(Deserialize)]
struct Logout {
    csrf_token: String,
}

/// `POST /console/logout`: the form carries the session's CSRF token.
async fn logout(
    State(admin): State<Arc<Admin>>,
    mut headers: HeaderMap,
    form: Result<Form<Logout>, axum::extract::rejection::FormRejection>,
) -> Response {
    let tokens = admin.control.current().admin_tokens.clone();
    if let Ok(Form(f)) = form
        && let Ok(v) = HeaderValue::from_str(&f.csrf_token)
    {
        headers.insert("x-csrf-token", v);
    }
    let method = axum::http::Method::POST;
    if let Err(e) = auth::admit(&tokens, &admin.sessions, &method, &headers) {
        return e.into_response();
    }
    if let Some(id) = auth::cookie(&headers, COOKIE) {
        admin.sessions.close(&id);
    }
    let mut response = Redirect::to("/console").into_response();
    let expired = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&expired) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    secure(response)
}
