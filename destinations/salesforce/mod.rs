//! Salesforce: group calls upsert records (an Account by default) by an external-id field,
//! up to 200 per sObject Collections request, with an OAuth 2.0 token fetched and cached.
//!
//! Wire facts are cited by the source keys of `reference/destinations.md` §4.

mod auth;
mod classify;
#[cfg(test)]
mod tests;
mod translate;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Deserialize;

use crate::config::{ConfigError, Settings};
use crate::destination::{
    AuthError, Classification, Destination, Item, OutRequest, Reads, Response, Setup, Translation,
    Transport,
};
use crate::memo::GroupMemo;
use crate::message::MessageType;
use crate::secret::Secret;

/// A Salesforce destination's own keys in its `[[destination]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SalesforceConfig {
    /// The org's base URL, e.g. `https://acme.my.salesforce.com`; the token answer's
    /// `instance_url` replaces it when present (SF-TOK).
    instance_url: String,
    /// REST API version; collections upsert needs v46.0 or later (SF-COLL).
    #[serde(default = "default_api_version")]
    api_version: String,
    /// The sObject written.
    #[serde(default = "default_object")]
    object: String,
    /// The external-id field that holds the `groupId` and keys the upsert.
    external_id_field: String,
    /// Trait path → field, adding to or overriding the default mapping.
    #[serde(default)]
    fields: BTreeMap<String, String>,
    /// How a token is obtained.
    auth: AuthConfig,
    /// How long the destination rests after `REQUEST_LIMIT_EXCEEDED`: the daily allocation
    /// can stay exhausted for hours (SF-LIM), so retrying sooner only burns attempts.
    #[serde(
        default = "default_request_limit_pause",
        with = "crate::config::duration"
    )]
    request_limit_pause: Duration,
}

fn default_api_version() -> String {
    "v62.0".into()
}
fn default_object() -> String {
    "Account".into()
}
fn default_request_limit_pause() -> Duration {
    Duration::from_secs(15 * 60)
}

/// The `auth` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthConfig {
    /// `client_credentials` (SF-CC) or `refresh_token` (AD:salesforce/index).
    flow: auth::Flow,
    /// Defaults to `{instance_url}/services/oauth2/token`: client credentials needs the org's
    /// My Domain host (§7 of the reference), and the same path serves the refresh flow.
    token_url: Option<String>,
    /// The connected app's consumer key.
    client_id: String,
    /// The connected app's consumer secret.
    client_secret: Secret,
    /// Required by, and only used by, the `refresh_token` flow.
    refresh_token: Option<Secret>,
}

/// The default mapping: trait path → field (Account standard fields; AD:salesforce/account,
/// SD-SF). `address.postalCode` is the spec's spelling (SD-GROUP).
const DEFAULT_FIELDS: &[(&str, &str)] = &[
    ("name", "Name"),
    ("description", "Description"),
    ("industry", "Industry"),
    ("employees", "NumberOfEmployees"),
    ("phone", "Phone"),
    ("website", "Website"),
    ("address.street", "BillingStreet"),
    ("address.city", "BillingCity"),
    ("address.state", "BillingState"),
    ("address.postalCode", "BillingPostalCode"),
    ("address.country", "BillingCountry"),
];

/// A configured Salesforce destination.
pub struct Salesforce {
    /// Base URL from the config, without a trailing slash.
    instance_url: String,
    api_version: String,
    object: String,
    external_id_field: String,
    /// Trait path (split at dots) → field, defaults first, in a stable order.
    mapping: Vec<(Vec<String>, String)>,
    /// The mapping's first path components, each once, with the entries that start with it
    /// (`address` → its five fields): what each trait name of a call is compared with.
    firsts: Vec<(String, Vec<usize>)>,
    request_limit_pause: Duration,
    tokens: auth::Tokens,
    /// One record per group per batch, the group's calls merged (`coalesce`, default on);
    /// else one record per call, a group's records in successive requests.
    coalesce: bool,
    /// Each group's last traits as the fields they map to (see `crate::memo`).
    kept: GroupMemo<translate::KeptFields>,
}

/// What [`Salesforce::kept`] may hold: the fields of some thousands of groups.
const KEPT_BYTES: usize = 2 << 20;

/// sObject Collections take at most 200 records (SF-COLL); one item makes at most one record.
const MAX_BATCH: usize = 200;

pub fn build(setup: Setup<'_>) -> Result<Arc<dyn Destination>, ConfigError> {
    Ok(Arc::new(Salesforce::new(setup)?))
}

/// API names are letters, digits and underscores; they go into URL paths and JSON keys.
fn api_name(s: &Settings, key: &str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(s.error(key, format!("`{value}` is not a Salesforce API name")))
    }
}

impl Salesforce {
    fn new(setup: Setup<'_>) -> Result<Self, ConfigError> {
        let s = setup.settings;
        let c: SalesforceConfig = s.parse()?;
        let instance_url = s.http_url("instance_url", &c.instance_url)?;
        // `vNN.N`, from v46.0 on (collections upsert by external id, SF-COLL).
        let version_ok = c
            .api_version
            .strip_prefix('v')
            .and_then(|v| v.split_once('.'))
            .is_some_and(|(major, minor)| {
                major.parse::<u32>().is_ok_and(|n| n >= 46) && minor.parse::<u32>().is_ok()
            });
        if !version_ok {
            return Err(s.error(
                "api_version",
                "api_version must look like `v62.0` and be v46.0 or later",
            ));
        }
        api_name(s, "object", &c.object)?;
        api_name(s, "external_id_field", &c.external_id_field)?;
        let mapping = mapping(s, &c.fields)?;
        let mut firsts: Vec<(String, Vec<usize>)> = Vec::new();
        for (k, (path, _)) in mapping.iter().enumerate() {
            match firsts.iter_mut().find(|(first, _)| *first == path[0]) {
                Some((_, entries)) => entries.push(k),
                None => firsts.push((path[0].clone(), vec![k])),
            }
        }
        let token_url = match &c.auth.token_url {
            Some(url) => s.http_url("auth", url)?,
            None => format!("{instance_url}/services/oauth2/token"),
        };
        let tokens = auth::Tokens::new(token_url, c.auth).map_err(|why| s.error("auth", why))?;
        Ok(Self {
            instance_url,
            api_version: c.api_version,
            object: c.object,
            external_id_field: c.external_id_field,
            mapping,
            firsts,
            request_limit_pause: c.request_limit_pause,
            tokens,
            coalesce: setup.coalesce.unwrap_or(true),
            kept: GroupMemo::new(KEPT_BYTES),
        })
    }
}

/// The defaults with `fields` laid over them: a configured path replaces its default field.
fn mapping(
    s: &Settings,
    fields: &BTreeMap<String, String>,
) -> Result<Vec<(Vec<String>, String)>, ConfigError> {
    let mut out: Vec<(String, String)> = DEFAULT_FIELDS
        .iter()
        .map(|(p, f)| (p.to_string(), f.to_string()))
        .collect();
    for (path, field) in fields {
        api_name(s, "fields", field)?;
        // sObject Collections refuse `Id` in a record (SF-COLL).
        if field.eq_ignore_ascii_case("id") {
            return Err(s.error(
                "fields",
                "records are matched by external id; `Id` cannot be mapped",
            ));
        }
        if path.split('.').any(str::is_empty) {
            return Err(s.error(
                "fields",
                format!("`{path}` is not a trait path like `plan` or `address.street`"),
            ));
        }
        match out.iter_mut().find(|(p, _)| p == path) {
            Some(slot) => slot.1 = field.clone(),
            None => out.push((path.clone(), field.clone())),
        }
    }
    Ok(out
        .into_iter()
        .map(|(p, f)| (p.split('.').map(str::to_string).collect(), f))
        .collect())
}

#[async_trait]
impl Destination for Salesforce {
    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn default_batch(&self) -> usize {
        MAX_BATCH
    }

    fn accepts(&self) -> &'static [MessageType] {
        &[MessageType::Group]
    }

    fn coalesces(&self) -> bool {
        self.coalesce
    }

    fn reads(&self) -> Reads {
        // `traits` comes from the stored text (`Item::traits`), never parsed into a tree.
        Reads::Only(&[])
    }

    fn translate(&self, batch: &[Item<'_>], _now: SystemTime) -> Translation {
        translate::translate(self, batch)
    }

    fn classify(
        &self,
        request: &OutRequest,
        response: &Response,
        now: SystemTime,
    ) -> Classification {
        classify::classify(self, request, response, now)
    }

    async fn authorize(
        &self,
        request: &mut OutRequest,
        transport: &Transport,
        refresh: bool,
    ) -> Result<(), AuthError> {
        let token = self.tokens.get(transport, refresh).await?;
        auth::apply(request, &token)
    }
}
