//! `${VAR}` expansion from the environment, over the parsed document so that an unset
//! variable is reported at its own line and column. Values never appear in errors.

use toml::Spanned;
use toml::de::DeValue;

use super::place::{ConfigError, Source};

/// Expand every `${VAR}` in string values below `value`, collecting an error per unset one.
pub(crate) fn expand_env(
    value: &mut Spanned<DeValue<'_>>,
    source: &Source,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    let span = value.span();
    match value.get_mut() {
        DeValue::String(s) if s.contains("${") => {
            if let Some(expanded) = expand(s, span, source, env, errors) {
                *s = expanded.into();
            }
        }
        DeValue::Array(items) => {
            for item in items.iter_mut() {
                expand_env(item, source, env, errors);
            }
        }
        DeValue::Table(table) => {
            for (_, v) in table.iter_mut() {
                expand_env(v, source, env, errors);
            }
        }
        _ => {}
    }
}

/// One string with its variables replaced; `None` when it cannot be (the errors say why).
fn expand(
    text: &str,
    span: std::ops::Range<usize>,
    source: &Source,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
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
            Some(v) => out.push_str(&v),
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
