//! Building adapters: what a constructor is given ([`Setup`]), and the [`Registry`] of
//! constructors by config `type`, to which an embedding program may add its own.
//!
//! The engine enforces what every adapter declares: a `types` list in the config outside
//! [`Destination::accepts`] is refused here, so no adapter repeats that check.

use std::sync::Arc;

use crate::config::{ConfigError, DestinationConfig, Settings};

use super::Destination;

/// What an adapter's constructor gets: its own keys and the few engine facts it may need.
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    /// The destination's configured name.
    pub name: &'a str,
    /// The adapter's own keys of its `[[destination]]` table; `settings.parse()` reads them
    /// into the adapter's config struct, and its errors name the destination already.
    pub settings: &'a Settings,
    /// `batch.max_events` as configured; `None` when the adapter's default applies.
    pub max_events: Option<usize>,
    /// Requests are shown, never sent: put no credential in them.
    pub dry_run: bool,
    /// `coalesce` as configured; `None` when the adapter's default applies. An adapter that
    /// cannot merge calls refuses `Some(true)` (the registry does, if it does not).
    pub coalesce: Option<bool>,
}

impl<'a> Setup<'a> {
    pub fn of(config: &'a DestinationConfig) -> Self {
        Self {
            name: &config.name,
            settings: &config.settings,
            max_events: config.batch.max_events,
            dry_run: config.dry_run,
            coalesce: config.coalesce,
        }
    }
}

/// Builds an adapter; errors name the key and line.
pub type Constructor = fn(Setup<'_>) -> Result<Arc<dyn Destination>, ConfigError>;

/// Constructors by config `type`.
#[derive(Clone)]
pub struct Registry {
    entries: Vec<(&'static str, Constructor)>,
}

impl Registry {
    /// The adapters compiled in.
    pub fn builtin() -> Self {
        Self {
            entries: registry().to_vec(),
        }
    }

    /// Add an adapter (or replace the one of the same `type`).
    pub fn with(mut self, kind: &'static str, construct: Constructor) -> Self {
        self.entries.retain(|(k, _)| *k != kind);
        self.entries.push((kind, construct));
        self
    }

    /// Build the adapter a destination's `type` names, and check its `types` against what
    /// the adapter accepts.
    pub fn build(&self, config: &DestinationConfig) -> Result<Arc<dyn Destination>, ConfigError> {
        let adapter = self.constructor(config)?(Setup::of(config))?;
        check_types(config, adapter.as_ref())?;
        check_coalesce(config, adapter.as_ref())?;
        Ok(adapter)
    }

    /// The same adapter built as for a dry run, whatever the config says: its requests carry
    /// no credential, to be shown (the console's "try a message"), never sent.
    pub fn preview(&self, config: &DestinationConfig) -> Result<Arc<dyn Destination>, ConfigError> {
        self.constructor(config)?(Setup {
            dry_run: true,
            ..Setup::of(config)
        })
    }

    /// The constructor the destination's `type` names.
    fn constructor(&self, config: &DestinationConfig) -> Result<Constructor, ConfigError> {
        let found = self.entries.iter().find(|(k, _)| *k == config.kind);
        found.map(|(_, c)| *c).ok_or_else(|| {
            let known: Vec<&str> = self.entries.iter().map(|(k, _)| *k).collect();
            let (kind, known) = (&config.kind, known.join(", "));
            (config.settings).error("type", format!("unknown type `{kind}` (known: {known})"))
        })
    }
}

/// `coalesce = true` on an adapter that delivers every call as it is, said rather than ignored.
fn check_coalesce(
    config: &DestinationConfig,
    adapter: &dyn Destination,
) -> Result<(), ConfigError> {
    if config.coalesce == Some(true) && !adapter.coalesces() {
        return Err(config.settings.error(
            "coalesce",
            format!(
                "a {} destination does not merge calls; remove coalesce",
                config.kind
            ),
        ));
    }
    Ok(())
}

fn check_types(config: &DestinationConfig, adapter: &dyn Destination) -> Result<(), ConfigError> {
    let accepts = adapter.accepts();
    let Some(types) = &config.types else {
        return Ok(());
    };
    if types.iter().all(|t| accepts.contains(t)) {
        return Ok(());
    }
    let names: Vec<&str> = accepts.iter().map(|t| t.as_str()).collect();
    Err(config.settings.error(
        "types",
        format!(
            "a {} destination takes {} calls only",
            config.kind,
            names.join(", ")
        ),
    ))
}

/// Every adapter compiled in, by config `type`.
pub fn registry() -> &'static [(&'static str, Constructor)] {
    crate::destinations::REGISTRY
}

/// Build the adapter a destination's `type` names, from the adapters compiled in.
pub fn build(config: &DestinationConfig) -> Result<Arc<dyn Destination>, ConfigError> {
    Registry::builtin().build(config)
}
