//! `pgrelay init --interactive`: choose the source databases and the
//! tables to leave out on the terminal, before the summary and the
//! confirmation.
//!
//! The choices start from the configuration (its `databases:` selection,
//! or the source URL's database; every selected table kept), so pressing
//! Enter twice is the non-interactive run. Choosing exactly the source
//! URL's database of a configuration without `databases:` keeps it a
//! single pipeline with the slot named as written; anything else is one
//! pipeline per database, as `databases:` would make. The choices are not
//! written anywhere: after `init` the equivalent flags are printed, since
//! `stream`, `verify` and `switchover` must run on the same selection.
//! Without a terminal this refuses (exit 2) rather than guess.

use std::io::IsTerminal;

use anyhow::{Context, Result};
use dialoguer::theme::ColorfulTheme;
use dialoguer::{Confirm, MultiSelect};
use pgrelay_stream::config::ConfigError;
use pgrelay_stream::databases::{self, DatabaseSelection};
use pgrelay_stream::select::quote_ident;
use pgrelay_stream::StreamConfig;

use crate::stream::human_bytes;

/// What the operator chose.
pub struct Choice {
    /// One configuration per chosen database (exclusions applied).
    pub configs: Vec<StreamConfig>,
    /// Flags that make `stream`/`verify`/`switchover` see the same selection.
    pub flags: Vec<String>,
    /// Left-out tables, as `database.schema.table`.
    pub excluded: Vec<String>,
}

/// Refuses (as a usage error, exit 2) unless stdin and stderr, where the
/// prompts are drawn, are terminals.
pub fn require_terminal() -> Result<()> {
    if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        return Ok(());
    }
    Err(ConfigError::Invalid(
        "--interactive needs a terminal; without one, select with databases: / --database / --exclude-database and tables: / --exclude, and confirm with --yes".into(),
    )
    .into())
}

fn prompt_error(e: dialoguer::Error) -> anyhow::Error {
    anyhow::anyhow!("reading the answer from the terminal: {e}")
}

/// Runs a blocking prompt without starving the runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Yes/no on the terminal, default no.
pub fn confirm(question: &str) -> Result<bool> {
    blocking(|| {
        Confirm::with_theme(&ColorfulTheme::default())
            .with_prompt(question)
            .default(false)
            .interact()
            .map_err(prompt_error)
    })
}

/// The two multi-selects. `None`: the operator chose nothing or pressed
/// Esc; nothing is changed.
pub async fn choose(config: &StreamConfig) -> Result<Option<Choice>> {
    let all = databases::list(&config.source)
        .await
        .context("listing the source's databases")?;
    let names: Vec<String> = all.iter().map(|d| d.name.clone()).collect();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
    let labels: Vec<String> = all
        .iter()
        .map(|d| {
            format!(
                "{:<width$}  {:>10}",
                d.name,
                d.bytes.map_or("?".into(), human_bytes)
            )
        })
        .collect();
    let preset: Vec<bool> = all
        .iter()
        .map(|d| match &config.databases {
            Some(sel) => sel.matches(&d.name),
            None => d.name == config.source.dbname,
        })
        .collect();
    let picked = blocking(|| {
        MultiSelect::with_theme(&ColorfulTheme::default())
            .with_prompt(
                "Databases to migrate (↑/↓ move, space toggles, enter accepts, esc cancels)",
            )
            .items(&labels)
            .defaults(&preset)
            .max_length(20)
            .interact_opt()
            .map_err(prompt_error)
    })?;
    let Some(picked) = picked.filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let chosen: Vec<String> = picked.iter().map(|&i| names[i].clone()).collect();
    let single = config.databases.is_none() && chosen == [config.source.dbname.clone()];
    let mut configs = if single {
        vec![config.clone()]
    } else {
        // The choice is exact: a database excluded by the file but ticked
        // here is wanted.
        let mut c = config.clone();
        c.databases =
            Some(DatabaseSelection::new(chosen.clone(), Vec::new()).map_err(ConfigError::Invalid)?);
        databases::expand_with(&c, &names)?
    };

    // Every selected table of every chosen database, with its size.
    let mut tables: Vec<(usize, String, String, i64)> = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let client = pgrelay_source::connect_sql(&c.source)
            .await
            .with_context(|| format!("connecting to database {}", c.source.dbname))?;
        let found = c
            .tables
            .resolve(&client)
            .await
            .with_context(|| format!("listing the tables of database {}", c.source.dbname))?;
        for t in found {
            let q = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name));
            let bytes: i64 = client
                .query_one(
                    "SELECT pg_table_size(c.oid) + coalesce((SELECT sum(pg_table_size(i.inhrelid))
                              FROM pg_inherits i WHERE i.inhparent = c.oid), 0)::bigint
                       FROM pg_class c WHERE c.oid = $1::text::regclass",
                    &[&q],
                )
                .await
                .map(|r| r.get(0))
                .unwrap_or(0);
            tables.push((i, t.schema, t.name, bytes));
        }
    }
    let display = |(i, s, n, _): &(usize, String, String, i64)| {
        let t = pgrelay_types::sql::display_qualified(s, n);
        if single {
            t
        } else {
            format!("{}.{t}", configs[*i].source.dbname)
        }
    };
    let width = tables.iter().map(|t| display(t).len()).max().unwrap_or(0);
    let labels: Vec<String> = tables
        .iter()
        .map(|t| format!("{:<width$}  {:>10}", display(t), human_bytes(t.3)))
        .collect();
    let mut excluded = Vec::new();
    if !tables.is_empty() {
        let left_out = blocking(|| {
            MultiSelect::with_theme(&ColorfulTheme::default())
                .with_prompt("Tables to leave out (space toggles, enter accepts, esc cancels)")
                .items(&labels)
                .max_length(20)
                .interact_opt()
                .map_err(prompt_error)
        })?;
        let Some(left_out) = left_out else {
            return Ok(None);
        };
        for &k in &left_out {
            let (i, s, n, _) = &tables[k];
            configs[*i].tables.exclude_table(s, n);
            excluded.push(format!("{}.{s}.{n}", configs[*i].source.dbname));
        }
    }

    let mut flags = Vec::new();
    if !single {
        for d in &chosen {
            flags.push(format!("--database {}", shell_word(d)));
        }
    }
    for e in &excluded {
        flags.push(format!("--exclude {}", shell_word(e)));
    }
    Ok(Some(Choice {
        configs,
        flags,
        excluded,
    }))
}

/// `s` quoted for a POSIX shell when it needs it.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=@".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words() {
        assert_eq!(shell_word("app.public.t"), "app.public.t");
        assert_eq!(shell_word("my db"), "'my db'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
    }
}
