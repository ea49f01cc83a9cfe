//! A destination's adapter-specific keys, still spanned, for its adapter to read: every
//! error an adapter raises through [`Settings`] has the line and column of the key and names
//! the destination, so adapters never write either themselves.

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::DeTable;

use super::place::{ConfigError, Place};

/// A destination's adapter-specific keys, with their places in the file.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The keys that are not common to every destination.
    pub(crate) table: DeTable<'static>,
    /// The destination's name, prefixed to every error.
    pub(crate) name: String,
    pub(crate) place: Place,
}

impl Settings {
    /// Deserialize the adapter's config struct (which should `deny_unknown_fields`); its
    /// errors are the TOML reader's own, at the offending key.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let table = Spanned::new(self.place.span.clone(), self.table.clone());
        T::deserialize(toml::de::Deserializer::from(table))
            .map_err(|e| self.place.source.toml_error(&e))
    }

    /// An http(s) URL from key `key`, without a trailing `/`.
    pub fn http_url(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        let url = reqwest::Url::parse(value)
            .map_err(|e| self.error(key, format!("{key} `{value}` is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(self.error(key, format!("{key} must be http or https")));
        }
        Ok(value.trim_end_matches('/').to_string())
    }

    /// An error placed at `key`'s line when present (else at the destination's table),
    /// naming the destination.
    pub fn error(&self, key: &str, message: impl AsRef<str>) -> ConfigError {
        self.place.error(key, self.named(message.as_ref()))
    }

    fn named(&self, message: &str) -> String {
        format!("destination `{}`: {message}", self.name)
    }
}
