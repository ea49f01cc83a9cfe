//! Mixpanel: group calls become Groups API profile updates (`$set` or `$set_once`) and, when
//! the call has a `userId`, an Engage `$union` that lists the group on the user's profile.
//!
//! Wire facts are cited by the source keys of `reference/destinations.md` §3.

mod properties;
#[cfg(test)]
mod tests;
mod translate;

use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::Value;

use crate::config::{ConfigError, Settings};
use crate::destination::{
    Classification, Destination, Failure, Item, OutRequest, Reads, Response, Setup, Translation,
    Verdict, classify_status, excerpt,
};
use crate::memo::GroupMemo;
use crate::message::MessageType;
use crate::secret::Secret;

/// A Mixpanel destination's own keys in its `[[destination]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MixpanelConfig {
    /// The project token; Groups and Engage take it inside each update (MPD:reference/ingestion-api-authentication.mdx).
    project_token: Secret,
    /// The group key created in Mixpanel's project settings, e.g. `company_id`.
    group_key: String,
    /// Data residency: `us` (default), `eu` or `in`; picks the API host.
    region: Option<Region>,
    /// An explicit API base URL instead of the region's (proxies, tests).
    api_host: Option<String>,
    /// `set` (default) overwrites properties; `set_once` only fills absent ones.
    #[serde(default)]
    operation: Operation,
    /// Also add the group to the user's profile when the call has a `userId`.
    #[serde(default = "default_associate_user")]
    associate_user: bool,
}

fn default_associate_user() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Region {
    Us,
    Eu,
    In,
}

impl Region {
    /// Residency hosts (MPD:openapi/ingestion.openapi.yaml `servers`; MPD:docs/privacy/eu-residency.mdx).
    fn host(self) -> &'static str {
        match self {
            Region::Us => "https://api.mixpanel.com",
            Region::Eu => "https://api-eu.mixpanel.com",
            Region::In => "https://api-in.mixpanel.com",
        }
    }
}

/// The Groups API operation, chosen by the key present in each update (MPD openapi `/groups`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Operation {
    #[default]
    Set,
    SetOnce,
}

/// What a dry run shows as `$token`: its requests are logged, never sent.
const MASKED_TOKEN: &str = "***";

/// A configured Mixpanel destination (Debug is safe: the token is a `Secret`).
#[derive(Debug)]
pub struct Mixpanel {
    /// API base URL without a trailing slash.
    host: String,
    /// Written into each update as it is serialized (MPD:reference/ingestion-api-authentication.mdx);
    /// masked in a dry run, whose requests are logged.
    token: Secret,
    group_key: String,
    operation: Operation,
    associate_user: bool,
    /// Merge a group's calls in a batch into one update (`coalesce`, default on).
    coalesce: bool,
    /// Each group's last traits rendered as update properties (see `crate::memo`).
    kept: GroupMemo<Option<Arc<str>>>,
}

/// What [`Mixpanel::kept`] may hold: the properties of some thousands of groups.
const KEPT_BYTES: usize = 4 << 20;

/// At most 2,000 updates per Groups request (MPD:reference/limits-1.mdx).
const MAX_BATCH: usize = 2000;
const DEFAULT_BATCH: usize = 200;

pub fn build(setup: Setup<'_>) -> Result<Arc<dyn Destination>, ConfigError> {
    Ok(Arc::new(Mixpanel::new(setup)?))
}

impl Mixpanel {
    fn new(setup: Setup<'_>) -> Result<Self, ConfigError> {
        let s = setup.settings;
        let c: MixpanelConfig = s.parse()?;
        if c.project_token.expose().trim().is_empty() {
            return Err(s.error("project_token", "project_token is empty"));
        }
        if c.group_key.trim().is_empty() {
            return Err(s.error("group_key", "group_key is empty"));
        }
        let host = api_host(s, c.api_host, c.region)?;
        let token = match setup.dry_run {
            true => Secret::new(MASKED_TOKEN),
            false => c.project_token,
        };
        Ok(Self {
            host,
            token,
            group_key: c.group_key,
            operation: c.operation,
            associate_user: c.associate_user,
            coalesce: setup.coalesce.unwrap_or(true),
            kept: GroupMemo::new(KEPT_BYTES),
        })
    }
}

/// The API base URL: an explicit `api_host` (http or https) or the region's.
fn api_host(
    s: &Settings,
    api_host: Option<String>,
    region: Option<Region>,
) -> Result<String, ConfigError> {
    Ok(match (api_host, region) {
        (Some(_), Some(_)) => {
            return Err(s.error("api_host", "set region or api_host, not both"));
        }
        (Some(host), None) => s.http_url("api_host", &host)?,
        (None, region) => region.unwrap_or(Region::Us).host().to_string(),
    })
}

impl Destination for Mixpanel {
    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn default_batch(&self) -> usize {
        DEFAULT_BATCH
    }

    fn accepts(&self) -> &'static [MessageType] {
        &[MessageType::Group]
    }

    fn coalesces(&self) -> bool {
        self.coalesce
    }

    fn reads(&self) -> Reads {
        // `traits` comes from the stored text (`Item::traits`), never parsed into a tree.
        Reads::Only(&["userId"])
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
        let failure = || Failure::http_status(response);
        match response.status {
            200 => verbose_answer(request, response),
            // Never retry a 400: resending cannot help and it counts against the limit
            // (MPD:reference/track-event.mdx).
            400 => Classification::all(request, Verdict::permanent(failure())),
            401 | 403 => {
                let mut c = Classification::all(request, Verdict::permanent(failure()));
                c.unhealthy = Some(format!("Mixpanel refused the project token: {}", failure()));
                c
            }
            // "request exceeds max limit of 2097152 bytes" (MPD openapi `StrictTooLarge`).
            413 if request.items.len() > 1 => {
                let mut c = Classification::all(request, Verdict::retry(failure()));
                c.split = true;
                c
            }
            413 => Classification::all(request, Verdict::permanent(failure())),
            // 429 and 5xx retry (and 429 pauses), per MPD:reference/track-event.mdx.
            _ => classify_status(request, response, now),
        }
    }
}

/// A 200 is only a success when its verbose body says `status: 1`: Mixpanel answers 200 with
/// `status: 0` when no update in the request was valid (MPD openapi `components.responses`, MPN).
fn verbose_answer(request: &OutRequest, response: &Response) -> Classification {
    let parsed: Option<Value> = serde_json::from_slice(&response.body).ok();
    let status = parsed
        .as_ref()
        .and_then(|v| v.get("status"))
        .and_then(Value::as_i64);
    // Without `verbose=1` (a proxy that drops the query) the body is the bare digit.
    let plain_one = response.body.trim_ascii() == b"1";
    if status == Some(1) || plain_one {
        return Classification::all(request, Verdict::Delivered);
    }
    let error = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| excerpt(&response.body));
    let reason = format!("HTTP 200: Mixpanel rejected the update: {error}");
    Classification::all(
        request,
        Verdict::permanent(Failure::refused(response, reason)),
    )
}
