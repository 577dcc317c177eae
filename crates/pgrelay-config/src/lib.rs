//! pgrelay-config: reading pgrelay's configuration files, one way for
//! every command (`stream`, `native`, migrations).
//!
//! * YAML (JSON is accepted too, being YAML), deserialized into the
//!   caller's serde types; callers mark them `deny_unknown_fields` so a
//!   misspelt key is an error naming its path (`targets[1].urll`).
//! * `${VAR}` and `${VAR:-default}` expand from the environment before
//!   parsing, so secrets stay out of the file; `$${` is a literal `${`.
//!   Expansion never spans lines, so line numbers in errors stay true.
//! * Every error names the file (or the variable the text came from), the
//!   line and column, and the key path.
//! * [`find`]: the first existing file of a search order.
//! * [`duration`] (`100ms`, `5s`, `2m`, `1h`) and [`ByteSize`] (`4GiB`,
//!   `512MB`, `1048576`) for human-written values.
//!
//! Invariants: no I/O besides reading the named file; the environment is
//! read only through the lookup function given (tests pass their own).

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod duration;
mod expand;
mod size;

use std::path::{Path, PathBuf};

pub use expand::expand_env;
pub use size::ByteSize;

/// A configuration file could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}; check the path and its permissions")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// `${VAR}` names a variable that is not set and has no default.
    #[error(
        "{origin}: line {line}: environment variable {var} is not set; export it or write \
         ${{{var}:-default}}"
    )]
    MissingVar {
        /// File name or variable name the text came from.
        origin: String,
        /// 1-based line.
        line: usize,
        /// The variable.
        var: String,
    },
    /// `${` without a closing `}` or with an invalid name.
    #[error("{origin}: line {line}: {message}")]
    BadExpansion {
        /// File name or variable name the text came from.
        origin: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The YAML is malformed or does not match the expected shape.
    #[error("{origin}{location}: {path}{message}")]
    Invalid {
        /// File name or variable name the text came from.
        origin: String,
        /// `: line L column C`, when known.
        location: String,
        /// `at key.path: `, when known.
        path: String,
        /// serde's message (unknown field, missing field, wrong type).
        message: String,
    },
}

impl ConfigFileError {
    /// Configuration errors never go away by retrying.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// Parses `text` (from `origin`, used in messages) into `T`, expanding
/// `${VAR}` from the process environment first.
pub fn from_yaml_str<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &str,
) -> Result<T, ConfigFileError> {
    from_yaml_str_with(text, origin, |k| std::env::var(k).ok())
}

/// As [`from_yaml_str`], with the environment read through `lookup`.
pub fn from_yaml_str_with<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<T, ConfigFileError> {
    let expanded = expand_env(text, origin, lookup)?;
    let de = serde_yaml::Deserializer::from_str(&expanded);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let location = inner
            .location()
            .map(|l| format!(": line {} column {}", l.line(), l.column()))
            .unwrap_or_default();
        let path = if path.is_empty() || path == "." {
            String::new()
        } else {
            format!("at {path}: ")
        };
        // serde_yaml repeats the location at the end of its message.
        let mut message = inner.to_string();
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
        // ... and sometimes starts with its own (shorter) key path.
        if let Some((head, tail)) = message.split_once(": ") {
            if !head.contains(' ') && !head.is_empty() {
                message = tail.to_owned();
            }
        }
        ConfigFileError::Invalid {
            origin: origin.to_owned(),
            location,
            path,
            message,
        }
    })
}

/// Reads and parses the file at `path`.
pub fn load_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    from_yaml_str(&text, &path.display().to_string())
}

/// The first of `candidates` that exists as a file.
pub fn find<I, P>(candidates: I) -> Option<PathBuf>
where
    I: IntoIterator<Item = P>,
    P: Into<PathBuf>,
{
    candidates
        .into_iter()
        .map(Into::into)
        .find(|p: &PathBuf| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Target {
        name: String,
        url: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        targets: Vec<Target>,
        #[serde(default, with = "duration::option")]
        delay: Option<std::time::Duration>,
        #[serde(default)]
        budget: Option<ByteSize>,
    }

    #[test]
    fn unknown_key_names_its_path_and_line() {
        let text = "targets:\n  - name: a\n    url: x\n  - name: b\n    urll: y\n";
        let e = from_yaml_str_with::<File>(text, "pgrelay.yml", |_| None).unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with("pgrelay.yml: line 5 column 5: at targets[1].urll: unknown field `urll`"),
            "{s}"
        );
        assert!(s.contains("unknown field `urll`"), "{s}");
    }

    #[test]
    fn env_expansion_and_values() {
        let text = "targets:\n  - { name: a, url: \"${URL}\" }\ndelay: 100ms\nbudget: 4GiB\n";
        let f: File =
            from_yaml_str_with(text, "f", |k| (k == "URL").then(|| "pg://x".into())).unwrap();
        assert_eq!(f.targets[0].url, "pg://x");
        assert_eq!(f.targets[0].name, "a");
        assert_eq!(f.delay, Some(std::time::Duration::from_millis(100)));
        assert_eq!(f.budget, Some(ByteSize(4 << 30)));
    }

    #[test]
    fn missing_variable_names_it() {
        let text = "targets: []\n# x\ndelay: ${NOPE}\n";
        let e = from_yaml_str_with::<File>(text, "f.yml", |_| None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "f.yml: line 3: environment variable NOPE is not set; export it or write ${NOPE:-default}"
        );
    }

    #[test]
    fn bad_duration_is_reported_with_path() {
        let text = "targets: []\ndelay: 5 parsecs\n";
        let e = from_yaml_str_with::<File>(text, "f", |_| None).unwrap_err();
        assert!(e.to_string().contains("at delay: "), "{e}");
    }

    #[test]
    fn find_takes_the_first_existing() {
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path().join("b.yml");
        std::fs::write(&b, "x").unwrap();
        assert_eq!(find([dir.path().join("a.yml"), b.clone()]), Some(b));
        assert_eq!(find([dir.path().join("a.yml")]), None);
    }
}
