//! Where things are in the config file: byte offsets become lines and columns, and a table's
//! keys keep their spans so that an error found after parsing still points at its line.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// One problem in the config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line and column, when the problem has a place in the file.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => write!(f, "line {line}, column {col}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Every problem found, in file order.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// The original text, to turn byte offsets into lines and columns.
#[derive(Debug, Clone, Default)]
pub(crate) struct Source(Arc<str>);

impl Source {
    pub(crate) fn new(text: &str) -> Self {
        Self(Arc::from(text))
    }

    pub(crate) fn text(&self) -> &str {
        &self.0
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.0[..offset.min(self.0.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.chars().rev().take_while(|c| *c != '\n').count() + 1;
        (line, col)
    }

    pub(crate) fn error(
        &self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            at: span.map(|s| self.line_col(s.start)),
            message: message.into(),
        }
    }

    pub(crate) fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        self.error(e.span(), e.message().trim_end().to_string())
    }
}

/// A table of the file (a `[[source]]`, a `[[destination]]`) with its keys' places.
#[derive(Debug, Clone, Default)]
pub struct Place {
    /// Every key of the table, for placing errors.
    pub(crate) keys: Vec<(String, Range<usize>)>,
    /// The whole table.
    pub(crate) span: Range<usize>,
    pub(crate) source: Source,
}

impl Place {
    /// An error placed at `key`'s line when present, else at the table's.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let span = self
            .keys
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, span)| span.clone())
            .unwrap_or_else(|| self.span.clone());
        self.source.error(Some(span), message)
    }
}
