//! `${VAR}` / `${VAR:-default}` expansion, line by line.

use crate::ConfigFileError;

/// Expands `${VAR}` and `${VAR:-default}` in `text` with `lookup`;
/// `$${` stays a literal `${`. A reference must close on its own line.
pub fn expand_env(
    text: &str,
    origin: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigFileError> {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let line_no = index + 1;
        let mut rest = line;
        while let Some(pos) = rest.find("${") {
            if rest[..pos].ends_with('$') {
                out.push_str(&rest[..pos - 1]);
                out.push_str("${");
                rest = &rest[pos + 2..];
                continue;
            }
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 2..];
            let Some(end) = after.find('}') else {
                return Err(ConfigFileError::BadExpansion {
                    origin: origin.to_owned(),
                    line: line_no,
                    message: "`${` without a closing `}` (write $${ for a literal ${)".into(),
                });
            };
            let inner = &after[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(ConfigFileError::BadExpansion {
                    origin: origin.to_owned(),
                    line: line_no,
                    message: format!("`${{{inner}}}` is not a valid variable reference"),
                });
            }
            match (lookup(name), default) {
                (Some(v), _) if !v.is_empty() || default.is_none() => out.push_str(&v),
                (_, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(ConfigFileError::MissingVar {
                        origin: origin.to_owned(),
                        line: line_no,
                        var: name.to_owned(),
                    })
                }
                (Some(v), None) => out.push_str(&v),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "A" => Some("1".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn forms() {
        assert_eq!(expand_env("x${A}y", "o", env).unwrap(), "x1y");
        assert_eq!(expand_env("${B:-d}", "o", env).unwrap(), "d");
        assert_eq!(expand_env("${EMPTY:-d}", "o", env).unwrap(), "d");
        assert_eq!(expand_env("${EMPTY}", "o", env).unwrap(), "");
        assert_eq!(expand_env("$${A}", "o", env).unwrap(), "${A}");
        assert_eq!(expand_env("a\n${A}\n", "o", env).unwrap(), "a\n1\n");
        assert!(expand_env("${A", "o", env).is_err());
        assert!(expand_env("${1A}", "o", env).is_err());
        assert!(expand_env("${}", "o", env).is_err());
    }
}
