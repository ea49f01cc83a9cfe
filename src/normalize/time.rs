//! Date parsing for `createdAt` and the message timestamps: ISO-8601 in its common forms and
//! Unix seconds or milliseconds, always written back as RFC 3339 UTC with milliseconds.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use serde_json::Value;

/// Below this many units a Unix number is seconds, above it milliseconds: the milliseconds of
/// 1971-01-01, the cut `new-date` (Segment's facade) uses.
const SECONDS_CUTOFF: f64 = 31_557_600_000.0;

/// Parse an ISO-8601 string: with an offset or `Z`, without one (taken as UTC), with `T` or a
/// space between date and time, or a bare date (midnight UTC).
pub fn parse_iso(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
        return Some(dt.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f%#z",
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%dT%H:%M%#z",
    ] {
        if let Ok(dt) = DateTime::parse_from_str(text, fmt) {
            return Some(dt.with_timezone(&Utc));
        }
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, fmt) {
            return Some(Utc.from_utc_datetime(&naive));
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|naive| Utc.from_utc_datetime(&naive))
}

/// A Unix time in seconds or milliseconds (see [`SECONDS_CUTOFF`]).
pub fn from_unix(n: f64) -> Option<DateTime<Utc>> {
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let millis = if n < SECONDS_CUTOFF { n * 1000.0 } else { n };
    DateTime::from_timestamp_millis(millis.round() as i64)
}

/// `createdAt` in any accepted form: ISO string, Unix number, or Unix number as a string.
pub fn parse_any(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::Number(n) => n.as_f64().and_then(from_unix),
        Value::String(s) => {
            let t = s.trim();
            let numeric = !t.is_empty()
                && t.chars().all(|c| c.is_ascii_digit() || c == '.')
                && t.chars().filter(|c| *c == '.').count() <= 1;
            if numeric {
                t.parse::<f64>().ok().and_then(from_unix)
            } else {
                parse_iso(t)
            }
        }
        _ => None,
    }
}

/// RFC 3339, UTC, milliseconds: `2024-05-01T12:00:00.000Z`.
pub fn format(dt: DateTime<Utc>) -> String {
    dt.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Whether `text` is a date already written as [`format`] writes it, so that parsing and
/// formatting it again would give it back unchanged: `YYYY-MM-DDTHH:MM:SS.mmmZ`, a real day,
/// an hour, minute and second in range. Ingest writes every date so and delivery reads
/// them back, and checking the shape costs far less than parsing and formatting.
pub fn is_canonical(text: &str) -> bool {
    let b = text.as_bytes();
    if b.len() != 24 || b[23] != b'Z' {
        return false;
    }
    let shape_ok = b.iter().enumerate().take(23).all(|(i, &c)| match i {
        4 | 7 => c == b'-',
        10 => c == b'T',
        13 | 16 => c == b':',
        19 => c == b'.',
        _ => c.is_ascii_digit(),
    });
    if !shape_ok {
        return false;
    }
    let num = |from: usize, to: usize| {
        b[from..to]
            .iter()
            .fold(0u32, |n, &c| n * 10 + u32::from(c - b'0'))
    };
    let (year, month, day) = (num(0, 4), num(5, 7), num(8, 10));
    let (hour, minute, second) = (num(11, 13), num(14, 16), num(17, 19));
    hour < 24
        && minute < 60
        && second < 60
        && NaiveDate::from_ymd_opt(year as i32, month, day).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn norm(v: Value) -> Option<String> {
        parse_any(&v).map(format)
    }

    #[test]
    fn iso_forms() {
        let want = Some("2024-05-01T10:00:00.000Z".to_string());
        assert_eq!(norm(json!("2024-05-01T10:00:00Z")), want);
        assert_eq!(norm(json!("2024-05-01T12:00:00+02:00")), want);
        assert_eq!(norm(json!("2024-05-01T12:00:00+0200")), want);
        assert_eq!(norm(json!("2024-05-01T10:00:00")), want);
        assert_eq!(norm(json!("2024-05-01 10:00:00")), want);
        assert_eq!(norm(json!("2024-05-01T05:00:00.000-05:00")), want);
        assert_eq!(
            norm(json!("2024-05-01")),
            Some("2024-05-01T00:00:00.000Z".into())
        );
        assert_eq!(
            norm(json!("2024-05-01T10:00:00.123456Z")),
            Some("2024-05-01T10:00:00.123Z".into())
        );
    }

    #[test]
    fn unix_seconds_and_millis() {
        let want = Some("2023-11-14T22:13:20.000Z".to_string());
        assert_eq!(norm(json!(1_700_000_000)), want);
        assert_eq!(norm(json!(1_700_000_000_000u64)), want);
        assert_eq!(norm(json!("1700000000")), want);
        assert_eq!(norm(json!("1700000000000")), want);
        assert_eq!(
            norm(json!(1_700_000_000.5)),
            Some("2023-11-14T22:13:20.500Z".into())
        );
        // Just under the cut-off is still seconds (year 2969); at it, milliseconds (1971).
        assert_eq!(
            norm(json!(31_557_599_999u64)),
            Some("2970-01-07T23:59:59.000Z".into())
        );
        assert_eq!(
            norm(json!(31_557_600_000u64)),
            Some("1971-01-01T06:00:00.000Z".into())
        );
    }

    #[test]
    fn canonical_forms_are_recognised() {
        assert!(is_canonical("2024-05-01T10:00:00.000Z"));
        assert!(is_canonical("2024-02-29T23:59:59.999Z"));
        assert!(is_canonical("0000-01-01T00:00:00.000Z"));
        for not in [
            "2023-02-29T10:00:00.000Z", // no such day
            "2024-13-01T10:00:00.000Z",
            "2024-05-01T24:00:00.000Z",
            "2024-05-01T10:60:00.000Z",
            "2024-05-01T10:00:60.000Z", // a leap second: chrono writes it otherwise
            "2024-05-01T10:00:00Z",
            "2024-05-01T10:00:00.000+00:00",
            "2024-05-01 10:00:00.000Z",
            "2024-05-01T10:00:00.0000Z",
            " 2024-05-01T10:00:00.000Z",
            "2024-05-01T10:00:00.00aZ",
            "",
        ] {
            assert!(!is_canonical(not), "{not}");
        }
    }

    proptest::proptest! {
        /// A date written by `format` is canonical, and a canonical one comes back unchanged
        /// from parsing and formatting: skipping that for canonical text changes nothing.
        #[test]
        fn canonical_means_unchanged(ms in 0i64..253_402_300_800_000, noise in "[0-9:.TZ-]{0,3}", at in 0usize..24) {
            let written = format(DateTime::from_timestamp_millis(ms).unwrap());
            proptest::prop_assert!(is_canonical(&written), "{}", written);
            let mut mangled = written.clone();
            mangled.replace_range(at..(at + noise.len()).min(24), &noise);
            if is_canonical(&mangled) {
                proptest::prop_assert_eq!(parse_iso(&mangled).map(format), Some(mangled));
            }
        }
    }

    #[test]
    fn unparseable() {
        assert_eq!(norm(json!("last tuesday")), None);
        assert_eq!(norm(json!(true)), None);
        assert_eq!(norm(json!(-5)), None);
        assert_eq!(norm(json!("")), None);
    }
}
