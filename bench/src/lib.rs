//! Shared bits of the bench tools: how group ids are drawn (distinct, uniform over N, or
//! Zipf-skewed over N: real group traffic repeats the same companies), the per-message bench
//! id that lets the receiver count each message and measure end-to-end latency without a
//! clock exchange, and time helpers.

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A message's bench id, `m<seq>-<micros>`: carried as the trait `bench_id`, so it reaches
/// every destination (Mixpanel's `$set`, a mapped Salesforce field, the webhook's message).
pub fn bench_id(seq: u64, sent_micros: u64) -> String {
    format!("m{seq}-{sent_micros}")
}

/// The send time in a [`bench_id`], if it is one.
pub fn sent_micros(id: &str) -> Option<u64> {
    id.rsplit('-').next()?.parse().ok()
}

/// How each message's group is chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Groups {
    /// Every message its own group.
    Distinct,
    /// Uniformly over `n` groups.
    Uniform(u64),
    /// Over `n` groups, group k (from 1) with weight 1/k^s: a few companies send most calls.
    Zipf { n: u64, s: f64, cdf: Vec<f64> },
}

impl FromStr for Groups {
    type Err = String;

    /// `distinct`, `uniform:N`, `zipf:N` or `zipf:N:S` (S defaults to 1.0).
    fn from_str(text: &str) -> Result<Self, String> {
        let mut parts = text.split(':');
        let kind = parts.next().unwrap_or_default();
        let n = parts
            .next()
            .map(|n| n.parse::<u64>().map_err(|e| format!("{text}: {e}")));
        match (kind, n) {
            ("distinct", None) => Ok(Groups::Distinct),
            ("uniform", Some(n)) => Ok(Groups::Uniform(n?.max(1))),
            ("zipf", Some(n)) => {
                let n = n?.max(1);
                let s = match parts.next() {
                    Some(s) => s.parse::<f64>().map_err(|e| format!("{text}: {e}"))?,
                    None => 1.0,
                };
                Ok(Groups::zipf(n, s))
            }
            _ => Err(format!("{text}: want distinct, uniform:N or zipf:N[:S]")),
        }
    }
}

impl Groups {
    fn zipf(n: u64, s: f64) -> Self {
        let weights: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        Groups::Zipf { n, s, cdf }
    }

    /// The group index of message `seq`; the same for the same seq in every run.
    pub fn index(&self, seq: u64) -> u64 {
        match self {
            Groups::Distinct => seq,
            Groups::Uniform(n) => mix(seq) % n,
            Groups::Zipf { cdf, .. } => {
                let u = (mix(seq) >> 11) as f64 / (1u64 << 53) as f64;
                cdf.partition_point(|c| *c < u) as u64
            }
        }
    }
}

/// SplitMix64: a well-spread, reproducible draw from a sequence number.
fn mix(seq: u64) -> u64 {
    let mut z = seq.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_id_round_trip() {
        let id = bench_id(7, 1_700_000_000_000_000);
        assert_eq!(id, "m7-1700000000000000");
        assert_eq!(sent_micros(&id), Some(1_700_000_000_000_000));
        assert_eq!(sent_micros("nope"), None);
    }

    #[test]
    fn distributions() {
        assert_eq!("distinct".parse::<Groups>().unwrap().index(42), 42);
        let uniform: Groups = "uniform:1000".parse().unwrap();
        let mut seen = std::collections::HashSet::new();
        for seq in 0..100_000 {
            let i = uniform.index(seq);
            assert!(i < 1000);
            seen.insert(i);
        }
        assert_eq!(seen.len(), 1000);
        let zipf: Groups = "zipf:1000".parse().unwrap();
        let top = (0..100_000).filter(|s| zipf.index(*s) == 0).count();
        // Group 1 of 1,000 with s = 1 takes about 1/H(1000) ≈ 13% of the calls.
        assert!((10_000..16_000).contains(&top), "{top}");
        assert!((0..100_000).all(|s| zipf.index(s) < 1000));
        assert!("zipf:x".parse::<Groups>().is_err() && "other".parse::<Groups>().is_err());
    }
}
