//! Conversions between `SystemTime`, certificate times and text, without the panicking
//! `From` impls (they panic on out-of-range years; a certificate can say 9999-12-31).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `t` as a `time` value for rcgen, or `None` if outside the representable range.
pub(crate) fn to_offset(t: SystemTime) -> Option<OffsetDateTime> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).ok()?,
        Err(e) => i64::try_from(e.duration().as_secs()).ok()?.checked_neg()?,
    };
    OffsetDateTime::from_unix_timestamp(secs).ok()
}

/// Seconds since the Unix epoch as a `SystemTime`, saturating at the epoch's range limits.
pub(crate) fn from_unix(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    };
    t.unwrap_or(UNIX_EPOCH)
}

/// RFC 3339 in UTC (`2025-01-02T03:04:05Z`), for messages and CLI output.
pub fn rfc3339(t: SystemTime) -> String {
    to_offset(t)
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{t:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(from_unix(86_400), UNIX_EPOCH + Duration::from_secs(86_400));
        assert_eq!(from_unix(-10), UNIX_EPOCH - Duration::from_secs(10));
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(to_offset(far), None);
        assert!(rfc3339(far).contains("SystemTime"));
    }
}
