//! Quoting for the three languages pgrelay-replica writes: SQL
//! identifiers and literals, libpq connection-string values, and
//! configuration-file string values. Every user-supplied name or value
//! goes through one of these before it reaches a statement or a file.
//! PostgreSQL docs: "Lexical Structure" (sql-syntax-lexical), libpq
//! "Connection Strings" (libpq-connstring), "Setting Parameters"
//! (config-setting).

pub use pgrelay_types::sql::{quote_ident as ident, quote_literal as literal};

/// A libpq connection-string value: bare when it is a plain word,
/// otherwise single-quoted with `\` and `'` backslash-escaped.
pub fn conninfo_value(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._/:,@+".contains(c));
    if plain {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// A string value in postgresql.conf / postgresql.auto.conf syntax.
pub fn conf_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Whether `name` is usable as a replication slot name (PostgreSQL allows
/// only lower-case letters, digits and underscores, up to 63 bytes).
pub fn is_valid_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `name` turned into a valid slot name (lower-cased, other characters
/// replaced by `_`, cut to 63 bytes).
pub fn slot_name_from(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(63);
    if s.is_empty() {
        s.push_str("standby");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\\b'"), "E'a\\\\b'''");
        assert_eq!(conninfo_value("127.0.0.1"), "127.0.0.1");
        assert_eq!(conninfo_value("a b'c"), "'a b\\'c'");
        assert_eq!(conninfo_value(""), "''");
        assert_eq!(conf_value("x='y'"), "'x=''y'''");
        assert!(is_valid_slot_name("standby_1"));
        assert!(!is_valid_slot_name("Standby-1"));
        assert_eq!(slot_name_from("My-Standby"), "my_standby");
    }
}
