//! `PgTimestamp`: a `timestamptz` as PostgreSQL's replication protocols send
//! it: signed microseconds since 2000-01-01 00:00:00 UTC.
//!
//! Invariants: the raw value is kept untouched (including the `-infinity` and
//! `infinity` sentinels, `i64::MIN` and `i64::MAX`), so a timestamp read from
//! the wire and written back is bit-identical. Conversions to the Unix epoch
//! and to `SystemTime` are checked and return `None` instead of overflowing.
//! Rendering is RFC 3339 in UTC with microsecond precision, which is lossless.
//!
//! PostgreSQL reference: "Date/Time Types" (datatype-datetime) for the epoch
//! and the infinities; "Streaming Replication Protocol"
//! (protocol-replication) and "Logical Replication Message Formats"
//! (protocol-logicalrep-message-formats) for where these values appear.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds between 1970-01-01 and 2000-01-01 (30 years, 7 leap days).
const POSTGRES_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
const MICROS_PER_SECOND: i64 = 1_000_000;
const SECONDS_PER_DAY: i64 = 86_400;
const POSTGRES_EPOCH_UNIX_DAYS: i64 = 10_957;

/// Microseconds since 2000-01-01 00:00:00 UTC.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// 2000-01-01 00:00:00 UTC.
    pub const POSTGRES_EPOCH: PgTimestamp = PgTimestamp(0);
    /// PostgreSQL's `infinity` (`DT_NOEND`).
    pub const INFINITY: PgTimestamp = PgTimestamp(i64::MAX);
    /// PostgreSQL's `-infinity` (`DT_NOBEGIN`).
    pub const NEG_INFINITY: PgTimestamp = PgTimestamp(i64::MIN);

    /// The raw wire value.
    pub const fn as_pg_micros(self) -> i64 {
        self.0
    }

    /// Whether this is `infinity` or `-infinity`.
    pub const fn is_infinite(self) -> bool {
        self.0 == i64::MAX || self.0 == i64::MIN
    }

    /// Microseconds since 1970-01-01 UTC; `None` for the infinities or if the
    /// value does not fit.
    pub fn to_unix_micros(self) -> Option<i64> {
        if self.is_infinite() {
            return None;
        }
        self.0.checked_add(POSTGRES_EPOCH_UNIX_MICROS)
    }

    /// The inverse of [`to_unix_micros`](Self::to_unix_micros); `None` if the
    /// result would not fit or would collide with an infinity sentinel.
    pub fn from_unix_micros(unix_micros: i64) -> Option<Self> {
        let ts = PgTimestamp(unix_micros.checked_sub(POSTGRES_EPOCH_UNIX_MICROS)?);
        (!ts.is_infinite()).then_some(ts)
    }

    /// As a `SystemTime`; `None` for the infinities or out-of-range values.
    pub fn to_system_time(self) -> Option<SystemTime> {
        let unix = self.to_unix_micros()?;
        let magnitude = Duration::from_micros(unix.unsigned_abs());
        if unix >= 0 {
            UNIX_EPOCH.checked_add(magnitude)
        } else {
            UNIX_EPOCH.checked_sub(magnitude)
        }
    }

    /// From a `SystemTime`, truncated to microseconds (the protocol's
    /// precision); `None` if out of range. Standby status updates use this
    /// with `SystemTime::now()`.
    pub fn from_system_time(t: SystemTime) -> Option<Self> {
        let unix = match t.duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_micros()).ok()?,
            Err(before) => {
                // Round towards -infinity so truncation is consistent on both
                // sides of the epoch.
                let d = before.duration();
                let micros = i64::try_from(d.as_micros()).ok()?;
                let extra = i64::from(d.subsec_nanos() % 1_000 != 0);
                micros.checked_add(extra)?.checked_neg()?
            }
        };
        Self::from_unix_micros(unix)
    }

    /// RFC 3339 rendering in UTC with microseconds, e.g.
    /// `2024-05-01T12:34:56.123456Z`; `None` for the infinities and for years
    /// outside 0000..=9999, which RFC 3339 cannot express.
    pub fn to_rfc3339(self) -> Option<String> {
        let parts = self.civil()?;
        (0..=9999).contains(&parts.year).then(|| parts.to_string())
    }

    fn civil(self) -> Option<Civil> {
        if self.is_infinite() {
            return None;
        }
        // Work from the PostgreSQL epoch so no finite value can overflow.
        let secs = self.0.div_euclid(MICROS_PER_SECOND);
        let micros = self.0.rem_euclid(MICROS_PER_SECOND);
        let days = secs.div_euclid(SECONDS_PER_DAY) + POSTGRES_EPOCH_UNIX_DAYS;
        let sod = secs.rem_euclid(SECONDS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        Some(Civil {
            year,
            month,
            day,
            hour: sod / 3600,
            minute: sod % 3600 / 60,
            second: sod % 60,
            micros,
        })
    }
}

/// Renders RFC 3339 when possible, `infinity`/`-infinity` like PostgreSQL,
/// and an ISO 8601 expanded year (`+294276-...`) beyond year 9999.
impl fmt::Display for PgTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.civil() {
            Some(c) => c.fmt(f),
            None if self.0 == i64::MIN => f.write_str("-infinity"),
            None => f.write_str("infinity"),
        }
    }
}

impl fmt::Debug for PgTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgTimestamp({self})")
    }
}

struct Civil {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
    micros: i64,
}

impl fmt::Display for Civil {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if (0..=9999).contains(&self.year) {
            write!(f, "{:04}", self.year)?;
        } else {
            write!(f, "{:+05}", self.year)?;
        }
        write!(
            f,
            "-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            self.month, self.day, self.hour, self.minute, self.second, self.micros
        )
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`), valid for the whole i64
/// microsecond range because every intermediate fits in i64.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_conversions() {
        assert_eq!(PgTimestamp(0).to_unix_micros(), Some(946_684_800_000_000));
        assert_eq!(
            PgTimestamp::from_unix_micros(946_684_800_000_000),
            Some(PgTimestamp(0))
        );
        assert_eq!(
            PgTimestamp(0).to_system_time(),
            Some(UNIX_EPOCH + Duration::from_secs(946_684_800))
        );
        assert_eq!(
            PgTimestamp::from_system_time(
                UNIX_EPOCH + Duration::from_nanos(946_684_800_000_001_999)
            ),
            Some(PgTimestamp(1))
        );
        let before = UNIX_EPOCH - Duration::from_nanos(1_500);
        assert_eq!(
            PgTimestamp::from_system_time(before).and_then(|t| t.to_unix_micros()),
            Some(-2)
        );
    }

    #[test]
    fn infinities_do_not_convert() {
        for t in [PgTimestamp::INFINITY, PgTimestamp::NEG_INFINITY] {
            assert!(t.is_infinite());
            assert_eq!(t.to_unix_micros(), None);
            assert_eq!(t.to_system_time(), None);
            assert_eq!(t.to_rfc3339(), None);
        }
        assert_eq!(PgTimestamp::INFINITY.to_string(), "infinity");
        assert_eq!(PgTimestamp::NEG_INFINITY.to_string(), "-infinity");
        assert_eq!(PgTimestamp::from_unix_micros(i64::MIN), None);
    }

    #[test]
    fn rfc3339_rendering() {
        assert_eq!(
            PgTimestamp(0).to_rfc3339().as_deref(),
            Some("2000-01-01T00:00:00.000000Z")
        );
        assert_eq!(PgTimestamp(-1).to_string(), "1999-12-31T23:59:59.999999Z");
        // 2024-02-29T12:34:56.789012Z, a leap day, from `SELECT extract(epoch ...)`.
        let unix = 1_709_210_096_789_012;
        let t = PgTimestamp::from_unix_micros(unix).expect("in range");
        assert_eq!(
            t.to_rfc3339().as_deref(),
            Some("2024-02-29T12:34:56.789012Z")
        );
        // Far future: the largest finite value PostgreSQL can hold renders
        // as an expanded year rather than a broken RFC 3339 string.
        let far = PgTimestamp(i64::MAX - 1);
        assert_eq!(far.to_rfc3339(), None);
        assert!(far.to_string().starts_with("+294"), "{far}");
        let ancient = PgTimestamp(i64::MIN + 1);
        assert!(ancient.to_string().starts_with('-'), "{ancient}");
        assert_eq!(
            format!("{:?}", PgTimestamp(0)),
            "PgTimestamp(2000-01-01T00:00:00.000000Z)"
        );
    }

    #[test]
    fn civil_matches_known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(10_957), (2000, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-719_468), (0, 3, 1));
    }
}
