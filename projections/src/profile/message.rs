//! What the profile projection reads from one normalized Segment message:
//! the identifiers it could be attributed through, and its timestamp.
//!
//! **Does not:** decide which identifiers link; the identity graph does, and
//! an identifier only counts here once the graph has stored it.

use onepd_domain::Timestamp;
use onepd_domain::identity::{Identifier, IdentifierKind, IdentityRules};

use crate::identity::extract;
use serde_json::Value;

/// Every identifier `message` names, highest priority first (ties by kind,
/// then value), whether or not the identity graph stored it.
///
/// A superset of what the graph links: blocked values are kept (they are
/// never stored, so they never resolve) and `group` calls are read too, so a
/// group call is attributed through the ids an earlier call stored. An
/// alias's `previousId` is tried as both a `user_id` and an `anonymous_id`.
pub(super) fn identifiers(message: &Value, rules: &IdentityRules) -> Vec<Identifier> {
    let both = |_: &str| vec![IdentifierKind::UserId, IdentifierKind::AnonymousId];
    let mut found = extract::named(message, rules, both, |_| false);
    extract::by_priority(&mut found, rules);
    found
}

/// The message's `timestamp`, else its `receivedAt`, parsed as RFC 3339.
pub(super) fn timestamp(message: &Value) -> Option<Timestamp> {
    ["timestamp", "receivedAt"].iter().find_map(|field| parse_rfc3339(message.get(*field)?.as_str()?))
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; digits past the
/// microsecond are dropped.
pub(super) fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    let bytes = text.as_bytes();
    let number = |from: usize, to: usize| -> Option<i64> {
        let digits = bytes.get(from..to)?;
        digits.iter().all(u8::is_ascii_digit).then(|| digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if bytes.len() < 20
        || separators.iter().any(|&(at, expected)| bytes[at] != expected)
        || !matches!(bytes[10], b'T' | b't' | b' ')
    {
        return None;
    }
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut at = 19;
    let mut micros = 0;
    if bytes[at] == b'.' {
        let start = at + 1;
        at = start;
        while bytes.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return None;
        }
        let kept = (at - start).min(6);
        micros = number(start, start + kept)? * 10_i64.pow(6 - kept as u32);
    }
    let offset_seconds = match bytes.get(at)? {
        b'Z' | b'z' if at + 1 == bytes.len() => 0,
        sign @ (b'+' | b'-') if at + 6 == bytes.len() && bytes[at + 3] == b':' => {
            let offset = number(at + 1, at + 3)? * 3600 + number(at + 4, at + 6)? * 60;
            if *sign == b'+' { offset } else { -offset }
        }
        _ => return None,
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    Some(Timestamp(seconds * 1_000_000 + micros))
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard
/// Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_timestamps_parse_to_microseconds_since_the_epoch() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(Timestamp(0)));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00.5Z"), Some(Timestamp(11_017 * 86_400 * 1_000_000 + 500_000)));
        assert_eq!(parse_rfc3339("2024-02-29T12:00:00.123Z"), parse_rfc3339("2024-02-29T14:00:00.123+02:00"));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59.999999999Z"), Some(Timestamp(-1)));
        for bad in ["yesterday", "2024-13-01T00:00:00Z", "2024-01-01T00:00:00", "2024-01-01T00:00:00.Z"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
