//! Synchronous replication: the primary's `synchronous_standby_names`.
//!
//! `--on NAME...` adds standbys to the list (keeping the method and count
//! already configured, `FIRST 1` for a new list of several), `--off NAME...`
//! removes them, `--off` alone empties the list (commits stop waiting).
//! Changes go through `ALTER SYSTEM` and `pg_reload_conf()`, and pgrelay
//! waits until the server reports the new value. A single name is written
//! as `"name"`, several as `FIRST n ("a", "b")` (or the existing `ANY n`).
//! Names are matched case-insensitively by the server, and so here.
//! PostgreSQL docs: "Synchronous Replication" (synchronous-replication),
//! `synchronous_standby_names` (runtime-config-replication).

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::quote::literal;
use crate::{ReplicaError, Result};

/// A parsed `synchronous_standby_names`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncNames {
    /// `FIRST` or `ANY`; `None` for the plain list / `n (list)` forms
    /// (which mean FIRST).
    pub method: Option<String>,
    /// How many standbys must confirm.
    pub num: u32,
    /// Standby names, unquoted.
    pub names: Vec<String>,
}

impl SyncNames {
    /// Parses the setting's syntax (`a, b`, `2 (a, b)`, `FIRST 1 (a)`,
    /// `ANY 2 ("A b", c)`, `*`).
    pub fn parse(text: &str) -> SyncNames {
        let t = text.trim();
        if t.is_empty() {
            return SyncNames::default();
        }
        let mut method = None;
        let mut num = 1;
        let mut list = t;
        if let Some(open) = t.find('(') {
            let head = t[..open].trim();
            let mut words = head.split_whitespace();
            let first = words.next().unwrap_or("");
            let n = if first.eq_ignore_ascii_case("first") || first.eq_ignore_ascii_case("any") {
                method = Some(first.to_ascii_uppercase());
                words.next().unwrap_or("1")
            } else {
                first
            };
            if let Ok(n) = n.parse() {
                num = n;
                let close = t.rfind(')').unwrap_or(t.len());
                list = &t[open + 1..close.max(open + 1)];
            } else {
                method = None;
            }
        }
        let mut names = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        let mut chars = list.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    chars.next();
                    cur.push('"');
                }
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    if !cur.trim().is_empty() {
                        names.push(cur.trim().to_string());
                    }
                    cur.clear();
                }
                c => cur.push(c),
            }
        }
        if !cur.trim().is_empty() {
            names.push(cur.trim().to_string());
        }
        SyncNames { method, num, names }
    }

    /// The setting's text for this list.
    pub fn render(&self) -> String {
        let quote = |n: &String| {
            if n == "*" {
                n.clone()
            } else {
                format!("\"{}\"", n.replace('"', "\"\""))
            }
        };
        match self.names.len() {
            0 => String::new(),
            1 if self.method.is_none() => quote(&self.names[0]),
            _ => format!(
                "{} {} ({})",
                self.method.as_deref().unwrap_or("FIRST"),
                self.num.max(1),
                self.names.iter().map(quote).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// What to do to the synchronous standby list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncChange {
    /// Make these standbys synchronous.
    On(Vec<String>),
    /// Stop waiting for these standbys; all of them when empty.
    Off(Vec<String>),
}

/// Applies `change` on the primary; returns (old, new) setting values.
pub async fn set_sync_mode(client: &Client, change: &SyncChange) -> Result<(String, String)> {
    let old: String = client
        .query_one("SELECT current_setting('synchronous_standby_names')", &[])
        .await
        .map_err(|e| ReplicaError::sql("reading synchronous_standby_names", &e))?
        .get(0);
    let mut names = SyncNames::parse(&old);
    match change {
        SyncChange::On(add) => {
            if add.is_empty() {
                return Err(ReplicaError::Precondition(
                    "name the standby to make synchronous (--standby NAME)".into(),
                ));
            }
            for n in add {
                if !names.contains(n) {
                    names.names.push(n.clone());
                }
            }
            if names.num == 0 {
                names.num = 1;
            }
        }
        SyncChange::Off(remove) if remove.is_empty() => names = SyncNames::default(),
        SyncChange::Off(remove) => {
            names
                .names
                .retain(|n| !remove.iter().any(|r| r.eq_ignore_ascii_case(n)));
            if names.names.len() == 1 && names.num <= 1 {
                names.method = None;
            }
            names.num = names.num.min(names.names.len() as u32).max(1);
        }
    }
    let new = names.render();
    set_and_reload(client, "synchronous_standby_names", &new).await?;
    tracing::info!(old = %old, new = %new, "synchronous_standby_names changed");
    Ok((old, new))
}

/// `ALTER SYSTEM SET name = value` + reload, then waits (10 s) until the
/// session sees the new value.
pub async fn set_and_reload(client: &Client, name: &str, value: &str) -> Result<()> {
    let sql = format!(
        "ALTER SYSTEM SET {} = {}",
        crate::quote::ident(name),
        literal(value)
    );
    client.batch_execute(&sql).await.map_err(|e| {
        ReplicaError::sql(format!("ALTER SYSTEM SET {name} (needs a superuser)"), &e)
    })?;
    client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .map_err(|e| ReplicaError::sql("reloading the configuration", &e))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now: String = client
            .query_one("SELECT current_setting($1)", &[&name])
            .await
            .map_err(|e| ReplicaError::sql("reading the setting back", &e))?
            .get(0);
        if now == value {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(ReplicaError::Timeout(format!(
                "{name} was set with ALTER SYSTEM but the server still reports {now:?} after a \
                 reload; is it overridden on the command line or per database/role?"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders() {
        assert_eq!(SyncNames::parse("").names, Vec::<String>::new());
        let p = SyncNames::parse("a, \"B c\"");
        assert_eq!(p.names, vec!["a", "B c"]);
        assert_eq!(p.method, None);
        let p = SyncNames::parse("ANY 2 (x, y, \"z\"\"q\")");
        assert_eq!(p.method.as_deref(), Some("ANY"));
        assert_eq!(p.num, 2);
        assert_eq!(p.names, vec!["x", "y", "z\"q"]);
        assert_eq!(p.render(), "ANY 2 (\"x\", \"y\", \"z\"\"q\")");
        let p = SyncNames::parse("2 (s1, s2)");
        assert_eq!((p.num, p.names.len()), (2, 2));
        assert_eq!(SyncNames::parse("\"one\"").render(), "\"one\"");
        assert_eq!(SyncNames::parse("*").render(), "*");
        let mut p = SyncNames::parse("a");
        p.names.push("b".into());
        assert_eq!(p.render(), "FIRST 1 (\"a\", \"b\")");
    }
}
