//! The message vocabulary shared by ingest, routing, the spool and the adapters.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

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
    /// not parse `body` again for each destination. `None`: delivery parses `body`.
    pub parsed: Option<Arc<Map<String, Value>>>,
    /// Names of the destinations it was routed to.
    pub destinations: Vec<String>,
}
