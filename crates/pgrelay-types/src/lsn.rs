//! `Lsn`: a WAL position, the 64-bit byte offset into PostgreSQL's write-ahead
//! log that every replication message and every feedback message is keyed by.
//!
//! Invariants: the textual form is exactly PostgreSQL's: two hexadecimal
//! numbers of one to eight digits separated by `/` (high and low 32 bits),
//! printed upper-case without leading zeros, so `Display` output can be pasted
//! into `pg_replication_slot_advance()` or compared with `pg_stat_replication`.
//! Parsing accepts the same language as the server's `pg_lsn` input function
//! and nothing more (no signs, no whitespace, no `0x`).
//!
//! PostgreSQL reference: "pg_lsn Type" (datatype-pg-lsn).

use std::fmt;
use std::str::FromStr;

/// A position in the write-ahead log.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `0/0`, which PostgreSQL uses as "no position" (`InvalidXLogRecPtr`).
    pub const INVALID: Lsn = Lsn(0);

    /// Whether this is a real position rather than `0/0`.
    pub const fn is_valid(self) -> bool {
        self.0 != 0
    }

    /// The raw 64-bit value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// `self + bytes`, or `None` past the end of the 64-bit WAL space.
    pub const fn checked_add(self, bytes: u64) -> Option<Lsn> {
        match self.0.checked_add(bytes) {
            Some(v) => Some(Lsn(v)),
            None => None,
        }
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

impl From<Lsn> for u64 {
    fn from(v: Lsn) -> Self {
        v.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid LSN {input:?} at character {position}: {reason}; \
     write it the way PostgreSQL prints it, e.g. 16/B374D848 \
     (two hexadecimal numbers of 1 to 8 digits separated by '/')"
)]
pub struct ParseLsnError {
    /// The rejected text, kept so the message can quote it back to the operator.
    pub input: String,
    /// Character index at which parsing failed.
    pub position: usize,
    /// What was wrong there.
    pub reason: &'static str,
}

impl ParseLsnError {
    /// A malformed LSN in configuration never fixes itself by retrying.
    pub fn is_transient(&self) -> bool {
        false
    }
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |position: usize, reason: &'static str| ParseLsnError {
            input: s.to_owned(),
            position,
            reason,
        };
        let bytes = s.as_bytes();
        let (hi, after_hi) = hex_component(bytes, 0).map_err(|(p, r)| fail(p, r))?;
        if bytes.get(after_hi) != Some(&b'/') {
            return Err(fail(after_hi, "expected '/' after the high half"));
        }
        let (lo, end) = hex_component(bytes, after_hi + 1).map_err(|(p, r)| fail(p, r))?;
        if end != bytes.len() {
            return Err(fail(end, "unexpected characters after the low half"));
        }
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// Parses 1..=8 hex digits starting at `start`; returns the value and the
/// index just past them. Hand-rolled because `u32::from_str_radix` accepts a
/// leading `+`, which the server rejects.
fn hex_component(bytes: &[u8], start: usize) -> Result<(u32, usize), (usize, &'static str)> {
    let mut value: u32 = 0;
    let mut idx = start;
    while let Some(digit) = bytes.get(idx).and_then(|b| (*b as char).to_digit(16)) {
        if idx - start == 8 {
            return Err((idx, "more than 8 hexadecimal digits"));
        }
        value = (value << 4) | digit;
        idx += 1;
    }
    if idx == start {
        return Err((start, "expected a hexadecimal digit"));
    }
    Ok((value, idx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_postgres() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        assert_eq!(Lsn(0x1_0000_0000).to_string(), "1/0");
        assert_eq!(format!("{:?}", Lsn(0x10)), "Lsn(0/10)");
    }

    #[test]
    fn parse_round_trips() {
        for v in [0, 1, 0x16_B374_D848, u64::MAX, 0xFFFF_FFFF, 0x1_0000_0000] {
            assert_eq!(Lsn(v).to_string().parse::<Lsn>(), Ok(Lsn(v)));
        }
        assert_eq!("16/b374d848".parse::<Lsn>(), Ok(Lsn(0x16_B374_D848)));
        assert_eq!("00000016/0000000A".parse::<Lsn>(), Ok(Lsn(0x16_0000_000A)));
    }

    #[test]
    fn parse_rejects_what_postgres_rejects() {
        for (bad, pos) in [
            ("", 0),
            ("/", 0),
            ("16", 2),
            ("16/", 3),
            ("/B3", 0),
            ("+16/B3", 0),
            ("16/+B3", 3),
            ("16/B3 ", 5),
            (" 16/B3", 0),
            ("0x16/B3", 1),
            ("123456789/0", 8),
            ("0/123456789", 10),
            ("16/B3/4", 5),
            ("g/0", 0),
            ("é/0", 0),
        ] {
            let err = bad.parse::<Lsn>().expect_err(bad);
            assert_eq!(err.position, pos, "{bad:?}: {err}");
            assert!(!err.is_transient());
            assert!(err.to_string().contains("16/B374D848"));
        }
    }

    #[test]
    fn ordering_follows_wal_order() {
        assert!(Lsn(0x1_0000_0000) > Lsn(0xFFFF_FFFF));
        assert!(!Lsn::INVALID.is_valid());
        assert_eq!(Lsn(u64::MAX).checked_add(1), None);
        assert_eq!(Lsn(1).checked_add(1), Some(Lsn(2)));
    }
}
