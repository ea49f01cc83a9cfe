//! Messages refused inside batches, told in the log at most once per [`INTERVAL`]: a client
//! sending little but refused messages must not flood the log (one line per message did).
//! Every refused message is counted in `switchyard_messages_in_total{result="rejected"}`
//! and listed in the client's answer; the log line adds how many, one example and how many
//! were not kept because `spool.max_refused_bytes` was reached.

use std::time::Duration;

use crate::telemetry::Throttle;

/// Shortest time between two log lines about refused messages.
pub const INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct RefusedLog(Throttle<Tally>);

impl Default for RefusedLog {
    fn default() -> Self {
        Self(Throttle::new(INTERVAL, Tally::default()))
    }
}

/// Refused messages since the last line.
#[derive(Debug, Default)]
struct Tally {
    refused: usize,
    not_kept: usize,
    /// The first refusal since the last line: (source, batch index, why).
    example: Option<(String, usize, String)>,
}

impl RefusedLog {
    /// Count a batch's refused messages (`example` is one of them: its index and why),
    /// `not_kept` of them not stored; write the summary line when the last is `INTERVAL` old.
    pub fn add(&self, source: &str, refused: usize, example: (usize, &str), not_kept: usize) {
        let due = self.0.due(|t| {
            t.refused += refused;
            t.not_kept += not_kept;
            t.example
                .get_or_insert_with(|| (source.to_string(), example.0, example.1.to_string()));
        });
        let Some(Tally {
            refused,
            not_kept,
            example,
        }) = due
        else {
            return;
        };
        let (source, index, error) = example.unwrap_or_default();
        tracing::warn!(refused, not_kept, example_source = %source, example_index = index,
            example_error = %error,
            "messages refused inside batches since the last such line (kept as dead letters with reason `invalid` unless not_kept: spool.max_refused_bytes reached)");
    }
}
