//! Small helpers the end-to-end benchmark binaries share: numeric settings
//! from the environment and medians (benchmarks quote medians because this
//! kind of machine is shared and noisy).

/// `name` parsed from the environment, or `default` when unset or invalid.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of `v` (the upper one for an even count). Panics on an
/// empty vector: a benchmark without runs has nothing to report.
pub fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_env() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4, 1, 3, 2]), 3);
        assert_eq!(env_num("PGRELAY_TESTKIT_SURELY_UNSET", 7), 7);
    }
}
