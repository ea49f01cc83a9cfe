//! The adapters compiled in. Adding one: a folder here, a line in [`REGISTRY`].

use crate::destination::Constructor;

#[cfg(test)]
mod coalesce;
#[cfg(test)]
pub(crate) mod golden;
pub mod mixpanel;
pub mod salesforce;
pub mod webhook;

/// Config `type` → constructor.
pub const REGISTRY: &[(&str, Constructor)] = &[
    ("webhook", webhook::build),
    ("mixpanel", mixpanel::build),
    ("salesforce", salesforce::build),
];
