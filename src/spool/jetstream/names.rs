//! Every name the JetStream spool uses on the server, made from `[spool] prefix`, and the
//! headers it stores with each message.

/// The stored message's headers, besides `Nats-Msg-Id`.
pub(super) const TO: &str = "Sy-To";
pub(super) const GROUP: &str = "Sy-Group";
pub(super) const SOURCE: &str = "Sy-Source";
pub(super) const MESSAGE_ID: &str = "Sy-Message-Id";

/// The priority group each consumer is pulled through: the server pins one daemon to it.
pub(super) const OWNER_GROUP: &str = "owner";

#[derive(Debug, Clone)]
pub struct Names {
    /// Subjects start with it (`switchyard.log.3`).
    prefix: String,
    /// Streams, consumers and buckets start with it (`SWITCHYARD_LOG`).
    upper: String,
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            upper: prefix.to_ascii_uppercase().replace('-', "_"),
        }
    }

    /// Every accepted message, once, on its partition's subject.
    pub fn log_stream(&self) -> String {
        format!("{}_LOG", self.upper)
    }

    /// Dead letters of every destination, one subject each.
    pub fn dead_stream(&self) -> String {
        format!("{}_DEAD", self.upper)
    }

    /// Messages refused at ingest (dead letters with reason `invalid`), bounded on its own.
    pub fn refused_stream(&self) -> String {
        format!("{}_REFUSED", self.upper)
    }

    /// Which daemons are alive, what each runs and owns.
    pub fn members_bucket(&self) -> String {
        format!("{}_MEMBERS", self.upper)
    }

    /// Pauses (a 429's `Retry-After`) every daemon honours.
    pub fn pauses_bucket(&self) -> String {
        format!("{}_PAUSES", self.upper)
    }

    pub fn log_subject(&self, partition: u32) -> String {
        format!("{}.log.{partition}", self.prefix)
    }

    pub fn log_subjects(&self) -> Vec<String> {
        vec![
            format!("{}.log.*", self.prefix),
            format!("{}.replay.*.*", self.prefix),
        ]
    }

    /// A replayed dead letter: for its destination only.
    pub fn replay_subject(&self, partition: u32, destination: &str) -> String {
        format!("{}.replay.{partition}.{}", self.prefix, token(destination))
    }

    pub fn dead_subject(&self, destination: &str) -> String {
        format!("{}.dead.{}", self.prefix, token(destination))
    }

    pub fn dead_subjects(&self) -> String {
        format!("{}.dead.*", self.prefix)
    }

    pub fn refused_subject(&self) -> String {
        format!("{}.refused", self.prefix)
    }

    /// The durable consumer of one destination's partition.
    pub fn consumer(&self, destination: &str, partition: u32) -> String {
        format!("{}_{}_{partition}", self.upper, token(destination))
    }

    /// The destination token and partition of a consumer this prefix named, if it is one.
    pub fn parse_consumer<'a>(&self, name: &'a str) -> Option<(&'a str, u32)> {
        let rest = name.strip_prefix(&self.upper)?.strip_prefix('_')?;
        let (token, partition) = rest.rsplit_once('_')?;
        Some((token, partition.parse().ok()?))
    }
}

/// A destination's name as it appears in subjects and consumer names: itself when it is
/// letters, digits, `-` and `_` only, else `x-` and its bytes in hex.
pub fn token(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        name.to_string()
    } else {
        format!("x-{}", hex::encode(name))
    }
}

/// A server URL as messages show it: a user and password written into it
/// (`nats://user:pass@host`) as `***`.
pub fn shown_url(url: &str) -> String {
    let u = url.trim();
    match (u.find("://"), u.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}***{}", &u[..scheme + 3], &u[at..]),
        _ => u.to_string(),
    }
}

/// The partition a key (the group id, else the message id) lives in; stable across
/// daemons and releases.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    crc32fast::hash(key.as_bytes()) % partitions.max(1)
}

/// The `Nats-Msg-Id` of a message: the server drops a second publish of it within the
/// stream's duplicate window, whichever daemon makes it.
pub fn dedupe_id(source: &str, message_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    h.update([0]);
    h.update(message_id.as_bytes());
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_parse_back() {
        let n = Names::new("sy-test");
        let name = n.consumer("Mixpanel EU", 12);
        let (t, p) = n.parse_consumer(&name).unwrap();
        assert_eq!((t, p), (token("Mixpanel EU").as_str(), 12));
        assert_eq!(
            n.parse_consumer(&n.consumer("web_hook", 3)),
            Some(("web_hook", 3))
        );
        assert_eq!(n.parse_consumer("OTHER_web_3"), None);
        assert_eq!(token("web-1_a"), "web-1_a");
        assert_eq!(token("a.b"), "x-612e62");
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        for key in ["acme", "globex", ""] {
            let p = partition_of(key, 16);
            assert!(p < 16);
            assert_eq!(p, partition_of(key, 16));
        }
        assert_ne!(dedupe_id("a", "bc"), dedupe_id("ab", "c"));
    }
}
