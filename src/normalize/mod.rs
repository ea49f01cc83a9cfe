//! Spec checks and normalization of one message: pure, no I/O (the clock comes in).
//!
//! What it does is listed under "Normalize" in DESIGN.md; the README's API section says the
//! same to users.

pub mod entries;
pub mod time;
pub mod traits;

use chrono::{DateTime, Datelike, Utc};
use serde_json::{Map, Value};

pub use entries::{Entries, Entry};

use crate::message::MessageType;

/// Batch-level fields that apply to every message lacking its own.
#[derive(Debug, Default, Clone)]
pub struct BatchDefaults {
    pub context: Option<Map<String, Value>>,
    pub integrations: Option<Map<String, Value>>,
    pub sent_at: Option<Value>,
}

/// A message that passed the spec checks, normalized.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    pub ty: MessageType,
    pub message_id: String,
    pub group_id: Option<String>,
    /// The normalized message as JSON text: what the spool stores and adapters translate.
    pub body: String,
    /// Its [`crate::message::HEAD_FIELDS`], parsed: what routing and the built-in adapters
    /// read. The other fields are only in `body`.
    pub head: Map<String, Value>,
    /// Where `traits` is in `body` (an object), for adapters to read it from there.
    pub traits_at: Option<std::ops::Range<usize>>,
    /// `createdAt` was present but unreadable (kept as given).
    pub unparsed_created_at: bool,
}

impl Normalized {
    /// The whole normalized message, parsed from its text (ingest itself never needs it).
    pub fn message(&self) -> Result<Map<String, Value>, serde_json::Error> {
        serde_json::from_str(&self.body)
    }
}

/// Why a message was refused; the text names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(text: impl Into<String>) -> Invalid {
    Invalid(text.into())
}

/// The longest `messageId` the spec allows.
pub const MAX_MESSAGE_ID_CHARS: usize = 100;

/// Check and normalize one message given as JSON text; malformed JSON is refused with the
/// parser's own words (where, and what). See [`normalize_entries`].
pub fn normalize(
    text: &str,
    implied: Option<MessageType>,
    defaults: &BatchDefaults,
    received_at: DateTime<Utc>,
    new_id: impl FnOnce() -> String,
) -> Result<Normalized, Invalid> {
    match Entries::parse(text) {
        Err(e) => Err(invalid(e.to_string())),
        Ok(None) => Err(invalid("message is not a JSON object")),
        Ok(Some(entries)) => normalize_entries(entries, implied, defaults, received_at, new_id),
    }
}

/// Check and normalize one message. `implied` is the type a single-message path implies;
/// in a batch each message must carry its own `type`.
pub fn normalize_entries(
    mut msg: Entries<'_>,
    implied: Option<MessageType>,
    defaults: &BatchDefaults,
    received_at: DateTime<Utc>,
    new_id: impl FnOnce() -> String,
) -> Result<Normalized, Invalid> {
    // A credential is never forwarded to a destination.
    msg.remove("writeKey");
    let ty = message_type(&msg, implied)?;
    msg.set("type", Entry::Value(Value::String(ty.as_str().into())));

    check_objects(&mut msg)?;
    merge_defaults(&mut msg, defaults)?;
    let group_id = required_ids(&mut msg, ty)?;
    let message_id = message_id(&mut msg, new_id)?;

    let mut unparsed_created_at = false;
    if matches!(ty, MessageType::Group | MessageType::Identify)
        && let Some(Entry::Text(t)) = msg.get("traits")
    {
        // An object (`check_objects`), checked to be JSON when the message was split.
        // Keyed by group for group calls only: a user's traits are not the group's.
        let group = group_id.as_deref().filter(|_| ty == MessageType::Group);
        let (rewritten, report) =
            traits::normalize_of(group, t).map_err(|e| invalid(format!("traits: {e}")))?;
        if let Some(text) = rewritten {
            msg.set("traits", Entry::Written(text));
        }
        unparsed_created_at = report.unparsed_created_at;
    }
    timestamps(&mut msg, received_at)?;
    let mut body = Vec::new();
    // `traits` is an object when present (`check_objects`).
    let traits_at = msg
        .write_marking(&mut body, "traits")
        .map_err(|e| invalid(format!("the normalized message cannot be serialized: {e}")))?;
    let body = String::from_utf8(body)
        .map_err(|e| invalid(format!("the normalized message is not UTF-8: {e}")))?;
    Ok(Normalized {
        ty,
        message_id,
        group_id: if ty == MessageType::Group {
            group_id
        } else {
            None
        },
        body,
        head: msg.into_head(),
        traits_at,
        unparsed_created_at,
    })
}

/// What a top-level value is, as far as the object checks care.
#[derive(PartialEq)]
enum Shape {
    Null,
    Object,
    Other,
}

fn shape(entry: &Entry<'_>) -> Shape {
    match entry {
        Entry::Value(Value::Null) => Shape::Null,
        Entry::Value(Value::Object(_)) => Shape::Object,
        Entry::Value(_) => Shape::Other,
        // Checked JSON: `{` opens an object, and `null` is the only value starting with `n`.
        Entry::Text(_) | Entry::Written(_) => match entry
            .text()
            .unwrap_or_default()
            .trim_start()
            .as_bytes()
            .first()
        {
            Some(b'{') => Shape::Object,
            Some(b'n') => Shape::Null,
            _ => Shape::Other,
        },
    }
}

/// `traits`, `context`, `integrations` and `properties` are objects when present (`null`
/// counts as absent).
fn check_objects(msg: &mut Entries<'_>) -> Result<(), Invalid> {
    for field in ["traits", "context", "integrations", "properties"] {
        match msg.get(field).map(shape) {
            None | Some(Shape::Object) => {}
            Some(Shape::Null) => {
                msg.remove(field);
            }
            Some(Shape::Other) => return Err(invalid(format!("{field} must be an object"))),
        }
    }
    Ok(())
}

/// The batch's `context`, `integrations` and `sentAt`, under the message's own keys.
fn merge_defaults(msg: &mut Entries<'_>, defaults: &BatchDefaults) -> Result<(), Invalid> {
    merge_object(msg, "context", defaults.context.as_ref())?;
    merge_object(msg, "integrations", defaults.integrations.as_ref())?;
    if !msg.contains("sentAt")
        && let Some(sent_at) = &defaults.sent_at
    {
        msg.set("sentAt", Entry::Value(sent_at.clone()));
    }
    Ok(())
}

/// The ids a call of type `ty` must carry; its `groupId`, when it has one.
fn required_ids(msg: &mut Entries<'_>, ty: MessageType) -> Result<Option<String>, Invalid> {
    let user = id_field(msg, "userId")?;
    let anon = id_field(msg, "anonymousId")?;
    if user.is_none() && anon.is_none() {
        return Err(invalid("userId or anonymousId is required"));
    }
    let group_id = id_field(msg, "groupId")?;
    match ty {
        MessageType::Group if group_id.is_none() => return Err(invalid("groupId is required")),
        MessageType::Track if !non_empty_string(msg.value("event")) => {
            return Err(invalid("event is required on a track call"));
        }
        MessageType::Alias if id_field(msg, "previousId")?.is_none() => {
            return Err(invalid("previousId is required on an alias call"));
        }
        _ => {}
    }
    Ok(group_id)
}

/// The message's id, checked, or a new one written into it.
fn message_id(msg: &mut Entries<'_>, new_id: impl FnOnce() -> String) -> Result<String, Invalid> {
    Ok(match id_field(msg, "messageId")? {
        Some(id) if id.chars().count() > MAX_MESSAGE_ID_CHARS => {
            return Err(invalid(format!(
                "messageId is longer than {MAX_MESSAGE_ID_CHARS} characters"
            )));
        }
        Some(id) => id,
        None => {
            let id = new_id();
            msg.set("messageId", Entry::Value(Value::String(id.clone())));
            id
        }
    })
}

fn message_type(msg: &Entries<'_>, implied: Option<MessageType>) -> Result<MessageType, Invalid> {
    if let Some(ty) = implied {
        return Ok(ty);
    }
    match msg.value("type") {
        None | Some(Value::Null) => Err(invalid("type is required on each message in a batch")),
        Some(Value::String(s)) => s.parse().map_err(|()| {
            invalid(format!(
                "type `{s}` is not one of identify, group, track, page, screen, alias"
            ))
        }),
        Some(_) => Err(invalid("type must be a string")),
    }
}

/// Batch-level keys fill in what the message's own object lacks; the message's keys win.
/// The object is parsed only when there is something to merge into it.
fn merge_object(
    msg: &mut Entries<'_>,
    field: &'static str,
    defaults: Option<&Map<String, Value>>,
) -> Result<(), Invalid> {
    let Some(defaults) = defaults.filter(|d| !d.is_empty()) else {
        return Ok(());
    };
    // Taken out in place: the merged object stays where the message had it.
    let mut own = match msg.take(field) {
        None => Map::new(),
        Some(Entry::Value(Value::Object(own))) => own,
        Some(Entry::Value(_)) => return Err(invalid(format!("{field} must be an object"))),
        Some(e @ (Entry::Text(_) | Entry::Written(_))) => {
            match crate::message::parse(e.text().unwrap_or_default()) {
                Ok(Value::Object(own)) => own,
                Ok(_) => return Err(invalid(format!("{field} must be an object"))),
                Err(e) => return Err(invalid(format!("{field}: {e}"))),
            }
        }
    };
    for (k, v) in defaults {
        if !own.contains_key(k) {
            own.insert(k.clone(), v.clone());
        }
    }
    msg.set(field, Entry::Value(Value::Object(own)));
    Ok(())
}

/// A string or number id; numbers become their decimal text, empty strings count as absent.
/// Ids are among the parsed fields ([`crate::message::checked`]).
fn id_field(msg: &mut Entries<'_>, field: &'static str) -> Result<Option<String>, Invalid> {
    let text = match msg.value(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::String(s)) => return Ok(Some(s.clone())),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err(invalid(format!("{field} must be a string or a number"))),
    };
    msg.set(field, Entry::Value(Value::String(text.clone())));
    Ok(Some(text))
}

fn non_empty_string(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::String(s)) if !s.trim().is_empty())
}

/// Set `receivedAt`; correct `timestamp` for client clock skew, keeping `originalTimestamp`.
fn timestamps(msg: &mut Entries<'_>, received_at: DateTime<Utc>) -> Result<(), Invalid> {
    let date = |msg: &Entries<'_>, field: &str| -> Result<Option<DateTime<Utc>>, Invalid> {
        match msg.value(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => time::parse_iso(s)
                .map(Some)
                .ok_or_else(|| invalid(format!("{field} is not an ISO-8601 date"))),
            Some(_) => Err(invalid(format!("{field} must be an ISO-8601 string"))),
        }
    };
    let timestamp = date(msg, "timestamp")?;
    let sent_at = date(msg, "sentAt")?;
    msg.set(
        "receivedAt",
        Entry::Value(Value::String(time::format(received_at))),
    );
    let corrected = match (timestamp, sent_at) {
        (None, _) => received_at,
        (Some(ts), None) => ts,
        // Checked: dates far apart (signed years beyond 9999) must not overflow the clock,
        // nor give a date before year 0 or after 9999 (RFC 3339 has four-digit years).
        (Some(ts), Some(sent)) => received_at
            .checked_sub_signed(sent - ts)
            .filter(|t| (0..=9999).contains(&t.year()))
            .ok_or_else(|| invalid("timestamp and sentAt are too far apart to correct for skew"))?,
    };
    let corrected = Value::String(time::format(corrected));
    match msg.value_mut("timestamp") {
        Some(given) => {
            let original = std::mem::replace(given, corrected);
            msg.set("originalTimestamp", Entry::Value(original));
        }
        None => msg.set("timestamp", Entry::Value(corrected)),
    }
    Ok(())
}

#[cfg(test)]
mod tests;
