//! `${VAR}` expansion from the environment, over the parsed document so that an unset
//! variable is reported at its own line and column. Values never appear in errors: each
//! value put in is remembered, and errors found later (a wrong type, an unknown variant)
//! show it as `***` ([`Expanded::mask`]).

use toml::Spanned;
use toml::de::DeValue;

use super::place::{ConfigError, Source};

/// Expand every `${VAR}` in string values below `value`, collecting an error per unset one.
pub(crate) fn expand_env(
    value: &mut Spanned<DeValue<'_>>,
    source: &Source,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
    values: &mut Expanded,
) {
    let span = value.span();
    match value.get_mut() {
        DeValue::String(s) if s.contains("${") => {
            if let Some(expanded) = expand(s, span, source, env, errors, values) {
                *s = expanded.into();
            }
        }
        DeValue::Array(items) => {
            for item in items.iter_mut() {
                expand_env(item, source, env, errors, values);
            }
        }
        DeValue::Table(table) => {
            for (_, v) in table.iter_mut() {
                expand_env(v, source, env, errors, values);
            }
        }
        _ => {}
    }
}

/// The values `${VAR}`s were replaced by; never printed.
#[derive(Default, Clone)]
pub struct Expanded(Vec<String>);

impl std::fmt::Debug for Expanded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expanded({} values)", self.0.len())
    }
}

impl Expanded {
    /// `errors` with every expanded value in their text shown as `***`, longest first (a
    /// value inside another is not left half shown).
    pub fn mask(&self, mut errors: Vec<ConfigError>) -> Vec<ConfigError> {
        let mut values: Vec<&String> = self.0.iter().filter(|v| !v.is_empty()).collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        for e in &mut errors {
            for v in &values {
                if e.message.contains(v.as_str()) {
                    e.message = e.message.replace(v.as_str(), "***");
                }
            }
        }
        errors
    }
}

/// One string with its variables replaced; `None` when it cannot be (the errors say why).
fn expand(
    text: &str,
    span: std::ops::Range<usize>,
    source: &Source,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
    values: &mut Expanded,
) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else {
            errors.push(source.error(Some(span), "unterminated `${` in string"));
            return None;
        };
        let name = &rest[start + 2..start + len];
        match env(name) {
            Some(v) => {
                out.push_str(&v);
                values.0.push(v);
            }
            None => {
                let at = source.text()[span.clone()]
                    .find(&format!("${{{name}}}"))
                    .map(|o| span.start + o..span.end)
                    .unwrap_or(span.clone());
                errors.push(source.error(
                    Some(at),
                    format!("environment variable `{name}` is not set"),
                ));
            }
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    Some(out)
}
