//! Shared bits of the bench tools: the message id scheme that lets the receiver measure
//! end-to-end latency without a clock exchange, and time helpers.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A group id that carries its send time: `g<seq>-<micros>`. Every bench message has its own
/// group, so the receiver can count each one, find duplicates and losses, and time delivery.
pub fn group_id(seq: u64, sent_micros: u64) -> String {
    format!("g{seq}-{sent_micros}")
}

/// The send time in a [`group_id`], if it is one.
pub fn sent_micros(group_id: &str) -> Option<u64> {
    group_id.rsplit('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn group_id_round_trip() {
        let id = super::group_id(7, 1_700_000_000_000_000);
        assert_eq!(id, "g7-1700000000000000");
        assert_eq!(super::sent_micros(&id), Some(1_700_000_000_000_000));
        assert_eq!(super::sent_micros("nope"), None);
    }
}
