//! SQL text building: identifier and literal quoting, qualified table
//! names, and the connection string a target server uses to reach the
//! source (with its password, and a redacted twin for display).
//!
//! Invariant: every name or value that reaches SQL text from the
//! configuration or a catalog passes through [`ident`] or [`literal`].
//! PostgreSQL docs: "Lexical Structure" (sql-syntax-lexical), libpq
//! "Connection Strings" (libpq-connstring).

use std::fmt;

use pgrelay_source::{Config, Host};

pub use pgrelay_types::sql::{quote_ident as ident, quote_literal as literal};

/// A table, schema-qualified.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct TableName {
    /// Schema.
    pub schema: String,
    /// Table.
    pub name: String,
}

impl TableName {
    /// `"schema"."name"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.name))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// A libpq connection-string value, quoted only when it must be (so the
/// usual `host=db port=5432` stays readable inside the SQL literal).
fn conn_value(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | ':' | ','))
    {
        return v.to_owned();
    }
    let mut s = String::from("'");
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

/// The subscription's `CONNECTION` string: how the target server reaches
/// the source. `(with password, redacted)`; the redacted form shows
/// `password=***` where the real one has the password.
pub fn subscription_conninfo(source: &Config) -> (String, String) {
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    let mut addrs = Vec::new();
    for t in &source.targets {
        hosts.push(match &t.host {
            Host::Tcp(h) => h.clone(),
            Host::Unix(d) => d.display().to_string(),
        });
        ports.push(t.port.to_string());
        addrs.push(t.hostaddr.map(|a| a.to_string()).unwrap_or_default());
    }
    let mut s = format!(
        "host={} port={}",
        conn_value(&hosts.join(",")),
        conn_value(&ports.join(","))
    );
    if addrs.iter().any(|a| !a.is_empty()) {
        s.push_str(&format!(" hostaddr={}", conn_value(&addrs.join(","))));
    }
    s.push_str(&format!(
        " dbname={} user={} sslmode={}",
        conn_value(&source.dbname),
        conn_value(&source.user),
        source.sslmode.as_str()
    ));
    for (k, v) in [
        ("sslrootcert", &source.sslrootcert),
        ("sslcert", &source.sslcert),
        ("sslkey", &source.sslkey),
    ] {
        // Defaults (~/.postgresql/...) are filled in by the parser; only
        // files that exist here are passed on, and the target server
        // reads them from its own file system.
        if let Some(p) = v.as_ref().filter(|p| p.exists()) {
            s.push_str(&format!(" {k}={}", conn_value(&p.display().to_string())));
        }
    }
    if let Some(t) = source.connect_timeout {
        s.push_str(&format!(" connect_timeout={}", t.as_secs().max(1)));
    }
    let mut redacted = s.clone();
    if let Some(p) = &source.password {
        s.push_str(&format!(" password={}", conn_value(p.expose())));
        redacted.push_str(" password=***");
    }
    (s, redacted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\\b'"), "E'a\\\\b'''");
    }

    #[test]
    fn conninfo_carries_and_hides_the_password() {
        let mut c = Config::parse("host=db port=6543 user=u dbname=d sslmode=disable").unwrap();
        c.password = Some(pgrelay_source::Password::new("s'e\\cret"));
        let (real, shown) = subscription_conninfo(&c);
        assert_eq!(
            real,
            "host=db port=6543 dbname=d user=u sslmode=disable password='s\\'e\\\\cret'"
        );
        assert!(!shown.contains("cret"));
        let back = Config::parse(&real).unwrap();
        assert_eq!(back.password.unwrap().expose(), "s'e\\cret");
    }
}
