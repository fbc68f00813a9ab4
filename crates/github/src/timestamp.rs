//! GitHub timestamps (RFC 3339, e.g. `2019-08-08T22:05:10Z` or
//! `2021-10-18T21:46:06.000-07:00`) to and from [`Millis`] since the epoch.

use runfleet_core::model::Millis;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp. `None` for
/// anything unparsable or before 1970.
pub fn parse_millis(s: &str) -> Option<Millis> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms).ok()
}

/// RFC 3339 in UTC with second precision, as GitHub writes it.
pub fn format_millis(ms: Millis) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    let t = OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    t.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

/// Wall-clock now in milliseconds since the epoch.
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_github_forms() {
        assert_eq!(parse_millis("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(
            parse_millis("2019-08-08T22:05:10Z"),
            Some(1_565_301_910_000)
        );
        assert_eq!(
            parse_millis("2021-10-18T21:46:06.000-07:00"),
            Some(1_634_618_766_000)
        );
        assert_eq!(
            parse_millis("2021-10-18T21:46:06.250Z"),
            Some(1_634_593_566_250)
        );
        assert_eq!(parse_millis("yesterday"), None);
        assert_eq!(parse_millis("1969-12-31T23:59:59Z"), None);
    }

    #[test]
    fn round_trips_seconds() {
        let s = format_millis(1_565_301_910_000);
        assert_eq!(s, "2019-08-08T22:05:10Z");
        assert_eq!(parse_millis(&s), Some(1_565_301_910_000));
    }
}
