//! Durations written by humans: `250ms`, `5s`, `2m`, `1h`, or a bare
//! number of seconds. Use with `#[serde(with = "pgrelay_config::duration")]`
//! (or `duration::option` for an `Option<Duration>`).

use std::time::Duration;

/// Parses `250ms`, `1.5s`, `2m`, `1h`, `3d` or a bare number of seconds.
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; write e.g. 100ms, 5s, 2m or 1h"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" | "sec" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{s}`; use ms, s, m, h or d"
            ))
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{s}` is out of range"))
}

/// Deserializes a [`Duration`].
pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(f64),
        S(String),
    }
    match <Raw as serde::Deserialize>::deserialize(d)? {
        Raw::N(n) => Duration::try_from_secs_f64(n).map_err(serde::de::Error::custom),
        Raw::S(s) => parse(&s).map_err(serde::de::Error::custom),
    }
}

/// For `Option<Duration>` fields (with `#[serde(default)]`).
pub mod option {
    use std::time::Duration;

    /// Deserializes a present value as `Some`.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        super::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(parse("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("7").unwrap(), Duration::from_secs(7));
        assert!(parse("5 parsecs").is_err());
        assert!(parse("-1s").is_err());
    }
}
