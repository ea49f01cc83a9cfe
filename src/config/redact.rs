//! The config in force as the admin API shows it: the file as written (`${VAR}`s not
//! expanded, so the environment's secrets never enter it), as JSON, with every value that
//! may be a credential written in the file itself replaced by `***`: values of keys that name
//! one (`write_key`, `project_token`, `client_secret`, `password`, …), every header value,
//! passwords and credential-like query parameters in URLs, and any admin token wherever it
//! appears. A `${VAR}` reference is shown as written: it names a variable, not its value.

use serde_json::{Map, Value};

use crate::destination::{looks_secret, origin_only, redacted_url};
use crate::secret::Secret;

const HIDDEN: &str = "***";
/// Keys whose names look like a credential's but are not one (shown as written).
const NOT_SECRET: &[&str] = &["group_key"];

/// The file's text as redacted JSON; `tokens` are hidden wherever they appear.
pub fn redacted(text: &str, tokens: &[Secret]) -> Result<Value, toml::de::Error> {
    let table: toml::Table = toml::from_str(text)?;
    Ok(table_json(&table, false, tokens))
}

fn table_json(table: &toml::Table, all_hidden: bool, tokens: &[Secret]) -> Value {
    let map: Map<String, Value> = table
        .iter()
        .map(|(k, v)| {
            let hidden = all_hidden || (looks_secret(k) && !NOT_SECRET.contains(&k.as_str()));
            let value = value_json(v, hidden, k == "headers", tokens);
            (k.clone(), value)
        })
        .collect();
    Value::Object(map)
}

/// `hidden`: this value sits at a credential's key; `headers`: a table whose every value is
/// hidden.
fn value_json(v: &toml::Value, hidden: bool, headers: bool, tokens: &[Secret]) -> Value {
    match v {
        toml::Value::String(s) => Value::from(string(s, hidden, tokens)),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => Value::from(*f),
        toml::Value::Boolean(b) => Value::from(*b),
        toml::Value::Datetime(d) => Value::from(d.to_string()),
        toml::Value::Array(a) => Value::Array(
            a.iter()
                .map(|v| value_json(v, hidden, false, tokens))
                .collect(),
        ),
        // Inside a credential's table (`auth = {…}`) only credential keys are hidden; a
        // `headers` table hides every value.
        toml::Value::Table(t) => table_json(t, headers, tokens),
    }
}

fn string(s: &str, hidden: bool, tokens: &[Secret]) -> String {
    if is_reference(s) {
        return s.to_string();
    }
    if hidden || tokens.iter().any(|t| s.contains(t.expose())) {
        return HIDDEN.into();
    }
    if s.contains("://") {
        return url(s);
    }
    s.to_string()
}

/// Exactly one `${NAME}` and nothing else.
fn is_reference(s: &str) -> bool {
    s.strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
        .is_some_and(|name| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// A URL written in the file: its password and credential-like query values masked, and its
/// path too (a webhook URL often carries its token in the path); a bare host is kept.
fn url(s: &str) -> String {
    match reqwest::Url::parse(s) {
        Ok(u) if u.path() != "/" && !u.path().is_empty() => origin_only(s),
        _ => redacted_url(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lone_reference_is_shown_as_written() {
        assert!(is_reference("${WEB_KEY}"));
        for not in ["${A}literal}", "x${A}", "${}", "${A B}", "literal"] {
            assert!(!is_reference(not), "{not}");
        }
    }

    #[test]
    fn credentials_written_in_the_file_are_hidden_and_references_shown() {
        let text = r#"
[[source]]
name = "web"
write_key = "wk-literal-1"

[admin]
token = ["${ADMIN}", "admin-literal-0123456789"]

[[destination]]
name = "Hook"
type = "webhook"
url = "https://user:pw-literal@hooks.example.com/path-literal?token=q-literal&team=growth"
api_host = "https://api-eu.example.com"
headers = { "X-Team" = "growth-literal", "X-Api" = "${HOOK_KEY}" }
auth = { flow = "client_credentials", client_secret = "cs-literal" }
note = "mentions admin-literal-0123456789 in passing"
"#;
        let tokens = [Secret::new("admin-literal-0123456789")];
        let shown = redacted(text, &tokens).unwrap().to_string();
        for secret in [
            "wk-literal",
            "admin-literal",
            "pw-literal",
            "q-literal",
            "growth-literal",
            "cs-literal",
            "path-literal",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        for kept in [
            "${ADMIN}",
            "${HOOK_KEY}",
            "https://hooks.example.com/***",
            "https://api-eu.example.com",
            "client_credentials",
        ] {
            assert!(shown.contains(kept), "{kept} missing from {shown}");
        }
    }
}
