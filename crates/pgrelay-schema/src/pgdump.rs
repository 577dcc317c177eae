//! Finding a `pg_dump` that can dump the source and running it for the
//! pre-data and post-data sections.
//!
//! pg_dump refuses servers newer than itself and dumps older ones, so a
//! candidate qualifies when its major is at least the source's; among those
//! the oldest wins, because its output uses the least new syntax and suits
//! the widest range of targets. An explicit path (`--pg-dump`,
//! `$PGRELAY_PG_DUMP`) that does not qualify is an error, not silently
//! replaced. The connection goes through libpq environment variables so the
//! password never appears on a command line; pg_dump's stderr is returned
//! with the password removed.
//! PostgreSQL docs: pg_dump (app-pgdump), libpq "Environment Variables"
//! (libpq-envars).

use std::path::{Path, PathBuf};

use pgrelay_source::{Config, Host};

use crate::split::{self, Piece};
use crate::{ObjectKind, SchemaError, SchemaOptions, Statement};

/// The major version of a pg_dump binary, from `pg_dump --version`
/// ("pg_dump (PostgreSQL) 15.18 (Debian ...)").
pub async fn pg_dump_major(path: &Path) -> Result<u32, SchemaError> {
    let out = tokio::process::Command::new(path)
        .arg("--version")
        .output()
        .await
        .map_err(|e| SchemaError::PgDump {
            message: format!("cannot run {} --version: {e}", path.display()),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|w| {
            let digits: String = w.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse().ok()
        })
        .ok_or_else(|| SchemaError::PgDump {
            message: format!(
                "{} --version printed {:?}, not a PostgreSQL version",
                path.display(),
                text.trim()
            ),
        })
}

fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            out.push(dir.join("pg_dump"));
        }
    }
    // A checkout with `scripts/install-postgres.sh` binaries: `.pg` in the
    // current directory or any parent.
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            let pg = dir.join(".pg");
            if pg.is_dir() {
                if let Ok(entries) = std::fs::read_dir(&pg) {
                    let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
                    dirs.sort();
                    for d in dirs {
                        out.push(d.join("bin").join("pg_dump"));
                        out.push(
                            d.join("pgserver")
                                .join("pginstall")
                                .join("bin")
                                .join("pg_dump"),
                        );
                    }
                }
                break;
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        dirs.sort();
        for d in dirs {
            out.push(d.join("bin").join("pg_dump"));
        }
    }
    out.retain(|p| p.is_file());
    out.dedup();
    out
}

/// The pg_dump to use for a source of `source_major`: the explicit one
/// (which must qualify), else the oldest qualifying one found; `None` when
/// there is none (the catalogs are used then).
pub async fn find_pg_dump(
    explicit: Option<&Path>,
    source_major: u32,
) -> Result<Option<(PathBuf, u32)>, SchemaError> {
    let explicit = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("PGRELAY_PG_DUMP").map(PathBuf::from));
    if let Some(path) = explicit {
        let major = pg_dump_major(&path).await?;
        if major < source_major {
            return Err(SchemaError::PgDump {
                message: format!(
                    "{} is pg_dump {major}, which cannot dump a PostgreSQL {source_major} source; \
                     point --pg-dump (or PGRELAY_PG_DUMP) at pg_dump {source_major} or newer, \
                     or leave it unset to generate the schema from the catalogs",
                    path.display()
                ),
            });
        }
        return Ok(Some((path, major)));
    }
    let mut best: Option<(PathBuf, u32)> = None;
    for path in candidates() {
        let Ok(major) = pg_dump_major(&path).await else {
            continue;
        };
        if major >= source_major && best.as_ref().is_none_or(|(_, m)| major < *m) {
            best = Some((path, major));
        }
    }
    Ok(best)
}

fn libpq_env(config: &Config) -> Vec<(&'static str, String)> {
    let mut hosts = Vec::new();
    let mut addrs = Vec::new();
    let mut ports = Vec::new();
    for t in &config.targets {
        hosts.push(match &t.host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(dir) => dir.display().to_string(),
        });
        addrs.push(t.hostaddr.map(|a| a.to_string()).unwrap_or_default());
        ports.push(t.port.to_string());
    }
    let mut env = vec![
        ("PGHOST", hosts.join(",")),
        ("PGPORT", ports.join(",")),
        ("PGUSER", config.user.clone()),
        ("PGDATABASE", config.dbname.clone()),
        ("PGSSLMODE", config.sslmode.as_str().to_string()),
        (
            "PGCHANNELBINDING",
            config.channel_binding.as_str().to_string(),
        ),
        ("PGAPPNAME", "pgrelay-schema".to_string()),
    ];
    if addrs.iter().any(|a| !a.is_empty()) {
        env.push(("PGHOSTADDR", addrs.join(",")));
    }
    if let Some(p) = &config.password {
        env.push(("PGPASSWORD", p.expose().to_string()));
    }
    if let Some(t) = config.connect_timeout {
        env.push(("PGCONNECT_TIMEOUT", t.as_secs().max(2).to_string()));
    }
    for (var, path) in [
        ("PGSSLROOTCERT", &config.sslrootcert),
        ("PGSSLCERT", &config.sslcert),
        ("PGSSLKEY", &config.sslkey),
        ("PGPASSFILE", &config.passfile),
    ] {
        if let Some(p) = path {
            env.push((var, p.display().to_string()));
        }
    }
    env
}

/// A pg_dump pattern matching exactly `name` (quoted: no case folding, no
/// wildcards).
fn exact_pattern(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

async fn run_section(
    path: &Path,
    config: &Config,
    options: &SchemaOptions,
    schemas: Option<&[String]>,
    section: &str,
) -> Result<String, SchemaError> {
    let mut cmd = tokio::process::Command::new(path);
    cmd.arg("--schema-only")
        .arg(format!("--section={section}"))
        .arg("--no-publications")
        .arg("--no-subscriptions")
        .arg("--no-security-labels")
        .arg("--no-tablespaces");
    if !options.roles {
        cmd.arg("--no-owner").arg("--no-privileges");
    }
    match schemas {
        Some(list) => {
            for s in list {
                cmd.arg(format!("--schema={}", exact_pattern(s)));
            }
        }
        None => {
            cmd.arg("--exclude-schema=pgrelay");
        }
    }
    for (s, t) in &options.exclude_tables {
        cmd.arg(format!(
            "--exclude-table={}.{}",
            exact_pattern(s),
            exact_pattern(t)
        ));
    }
    for var in [
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGOPTIONS",
        "PGTARGETSESSIONATTRS",
        "PGREQUIREAUTH",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(libpq_env(config));
    cmd.stdin(std::process::Stdio::null());
    let out = cmd.output().await.map_err(|e| SchemaError::PgDump {
        message: format!("cannot run {}: {e}", path.display()),
    })?;
    if !out.status.success() {
        let mut err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if let Some(p) = &config.password {
            if !p.expose().is_empty() {
                err = err.replace(p.expose(), "********");
            }
        }
        return Err(SchemaError::PgDump {
            message: format!(
                "{} --section={section} failed ({}): {err}; fix the connection or privileges \
                 it names, or set force_catalog to generate the schema from the catalogs",
                path.display(),
                out.status
            ),
        });
    }
    String::from_utf8(out.stdout).map_err(|_| SchemaError::PgDump {
        message: format!("{} wrote output that is not UTF-8", path.display()),
    })
}

fn kind_of(piece: &Piece) -> ObjectKind {
    let upper = piece.sql.trim_start().to_ascii_uppercase();
    if upper.starts_with("SET ") || upper.starts_with("SELECT PG_CATALOG.SET_CONFIG(") {
        return ObjectKind::Setting;
    }
    let Some(h) = &piece.header else {
        return ObjectKind::Other;
    };
    match h.object_type.as_str() {
        "SCHEMA" => ObjectKind::Schema,
        "EXTENSION" => ObjectKind::Extension,
        "TYPE" | "DOMAIN" | "COLLATION" => ObjectKind::Type,
        "FUNCTION" | "PROCEDURE" | "AGGREGATE" => ObjectKind::Function,
        "SEQUENCE" if upper.starts_with("ALTER TABLE") => ObjectKind::SequenceOwnedBy,
        "SEQUENCE" => ObjectKind::Sequence,
        "SEQUENCE OWNED BY" => ObjectKind::SequenceOwnedBy,
        "TABLE" => ObjectKind::Table,
        "TABLE ATTACH" => ObjectKind::Partition,
        "DEFAULT" => ObjectKind::Default,
        "VIEW" => ObjectKind::View,
        "MATERIALIZED VIEW" => ObjectKind::MaterializedView,
        "MATERIALIZED VIEW DATA" => ObjectKind::Refresh,
        "CONSTRAINT" if upper.contains(" PRIMARY KEY ") => ObjectKind::PrimaryKey,
        "CONSTRAINT" if upper.contains(" UNIQUE ") => ObjectKind::Unique,
        "CONSTRAINT" | "CHECK CONSTRAINT" => ObjectKind::Constraint,
        "FK CONSTRAINT" => ObjectKind::ForeignKey,
        "INDEX" => ObjectKind::Index,
        "INDEX ATTACH" => ObjectKind::IndexAttach,
        "TRIGGER" => ObjectKind::Trigger,
        "COMMENT" => ObjectKind::Comment,
        "ACL" => ObjectKind::Grant,
        _ => ObjectKind::Other,
    }
}

fn statements(script: &str) -> Vec<Statement> {
    split::split_script(script)
        .into_iter()
        .map(|p| {
            let kind = kind_of(&p);
            let name = match &p.header {
                Some(h) => match &h.schema {
                    Some(s) => format!("{s}.{}", h.name),
                    None => h.name.clone(),
                },
                None => String::new(),
            };
            let mut sql = p.sql;
            // `--schema=public` makes pg_dump create `public`, which every
            // target database already has.
            if kind == ObjectKind::Schema
                && sql.starts_with("CREATE SCHEMA ")
                && !sql.starts_with("CREATE SCHEMA IF NOT EXISTS ")
            {
                sql = sql.replacen("CREATE SCHEMA ", "CREATE SCHEMA IF NOT EXISTS ", 1);
            }
            let mut s = Statement::new(kind, name, sql);
            if kind == ObjectKind::Setting {
                s.name = "session setting".into();
            }
            s
        })
        .collect()
}

/// Runs pg_dump for the pre-data and post-data sections.
pub(crate) async fn dump(
    path: &Path,
    config: &Config,
    options: &SchemaOptions,
    schemas: Option<&[String]>,
) -> Result<(Vec<Statement>, Vec<Statement>), SchemaError> {
    let pre = run_section(path, config, options, schemas, "pre-data").await?;
    let post = run_section(path, config, options, schemas, "post-data").await?;
    Ok((statements(&pre), statements(&post)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_pg_dump_entries() {
        let script = "SET statement_timeout = 0;\nSELECT pg_catalog.set_config('search_path', '', false);\n\
            --\n-- Name: t t_pkey; Type: CONSTRAINT; Schema: public; Owner: -\n--\n\n\
            ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id);\n\
            --\n-- Name: t_a; Type: INDEX; Schema: public; Owner: -\n--\n\n\
            CREATE INDEX t_a ON public.t USING btree (a) WHERE (a > 0);\n\
            --\n-- Name: u u_t_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -\n--\n\n\
            ALTER TABLE ONLY public.u\n    ADD CONSTRAINT u_t_fkey FOREIGN KEY (t) REFERENCES public.t(id);\n";
        let st = statements(script);
        let kinds: Vec<ObjectKind> = st.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            vec![
                ObjectKind::Setting,
                ObjectKind::Setting,
                ObjectKind::PrimaryKey,
                ObjectKind::Index,
                ObjectKind::ForeignKey
            ]
        );
        assert_eq!(st[2].name, "public.t t_pkey");
        assert_eq!(st[2].table.as_deref(), Some("public.t"));
        assert_eq!(st[3].table.as_deref(), Some("public.t"));
        assert_eq!(st[4].table.as_deref(), Some("public.u"));
    }
}
