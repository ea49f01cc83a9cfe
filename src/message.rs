//! The message vocabulary shared by ingest, routing, the spool and the adapters.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A Segment call type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageType {
    Identify,
    Group,
    Track,
    Page,
    Screen,
    Alias,
}

impl MessageType {
    pub const ALL: &'static [MessageType] = &[
        MessageType::Identify,
        MessageType::Group,
        MessageType::Track,
        MessageType::Page,
        MessageType::Screen,
        MessageType::Alias,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Identify => "identify",
            MessageType::Group => "group",
            MessageType::Track => "track",
            MessageType::Page => "page",
            MessageType::Screen => "screen",
            MessageType::Alias => "alias",
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MessageType {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        MessageType::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == s)
            .ok_or(())
    }
}

/// A message as ingest hands it to the spool: normalized, routed, ready to store.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The source (by name) that sent it; with `message_id`, the dedupe key.
    pub source: String,
    pub message_id: String,
    /// Deliveries of one group to one destination keep their order.
    pub group_id: Option<String>,
    /// The normalized message as JSON text: what adapters translate.
    pub body: String,
    /// The same message, parsed: the spool keeps it in memory for a while so delivery need
    /// not parse `body` again. `None`: delivery parses `body`.
    pub parsed: Option<Parsed>,
    /// Names of the destinations it was routed to.
    pub destinations: Vec<String>,
}

/// A normalized message parsed at most once and shared by everything that reads it: ingest
/// hands over the one it built, and the destinations that lease a stored message share one
/// parse of its body, whoever asks first.
#[derive(Debug, Clone, Default)]
pub struct Parsed(Arc<OnceLock<Result<Map<String, Value>, String>>>);

impl Parsed {
    pub fn new(message: Map<String, Value>) -> Self {
        Self(Arc::new(OnceLock::from(Ok(message))))
    }

    /// Whether the message is parsed already (its body is not needed).
    pub fn is_ready(&self) -> bool {
        self.0.get().is_some()
    }

    /// The message, parsing `body` if nobody has yet; why not, if it is not a JSON object.
    pub fn get(&self, body: &str) -> Result<&Map<String, Value>, &str> {
        self.0
            .get_or_init(|| serde_json::from_str(body).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(String::as_str)
    }
}
