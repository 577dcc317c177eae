//! `pgrelay users`: application roles on the primary (`--primary URL` or
//! `$PGRELAY_PRIMARY`, a role with CREATEROLE or a superuser).
//!
//! Glue over `pgrelay_replica::users`: the password comes from stdin
//! (`--password-stdin`, first line) or is generated (`--generate`) and is
//! then printed once, alone on stdout, so scripts can capture it; all
//! other messages go to stderr. Only the SCRAM verifier reaches the
//! server. PostgreSQL docs: "Database Roles".

use std::io::BufRead;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use pgrelay_replica::users;
use pgrelay_source::Config;

/// `pgrelay users ...`
#[derive(Debug, Args)]
pub struct UsersArgs {
    #[command(subcommand)]
    command: UsersCommand,
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Create a login role (scram-sha-256), optionally with its own schema.
    Create(CreateArgs),
    /// List roles (without PostgreSQL's pg_* roles).
    List(ListArgs),
    /// Drop a role; explains the choices when it owns objects.
    Drop(DropArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("pw").args(["password_stdin", "generate"])))]
struct CreateArgs {
    /// Role name.
    name: String,
    /// The primary, connected to the database where the schema goes.
    #[arg(long, env = "PGRELAY_PRIMARY", value_name = "URL")]
    primary: String,
    /// Create this schema, owned by the role.
    #[arg(long, value_name = "SCHEMA")]
    schema: Option<String>,
    /// Read the password from the first line of stdin.
    #[arg(long)]
    password_stdin: bool,
    /// Generate a password and print it once.
    #[arg(long)]
    generate: bool,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// The primary.
    #[arg(long, env = "PGRELAY_PRIMARY", value_name = "URL")]
    primary: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("owned").args(["reassign_to", "drop_owned"])))]
struct DropArgs {
    /// Role name.
    name: String,
    /// The primary, connected to the database holding the role's objects.
    #[arg(long, env = "PGRELAY_PRIMARY", value_name = "URL")]
    primary: String,
    /// Drop the schemas the role owns, with everything in them.
    #[arg(long)]
    drop_schema: bool,
    /// Give the role's objects to this role.
    #[arg(long, value_name = "ROLE")]
    reassign_to: Option<String>,
    /// Drop the role's objects.
    #[arg(long)]
    drop_owned: bool,
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let cfg = Config::parse(url).context("bad --primary connection string")?;
    Ok(pgrelay_source::connect_sql(&cfg).await?)
}

/// Runs `pgrelay users ...`.
pub async fn run(args: UsersArgs) -> anyhow::Result<()> {
    run_inner(args).await.map_err(crate::replica::lift)
}

async fn run_inner(args: UsersArgs) -> anyhow::Result<()> {
    match args.command {
        UsersCommand::Create(a) => {
            let password = if a.password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .context("reading the password from stdin")?;
                let p = line.trim_end_matches(['\n', '\r']).to_string();
                if p.is_empty() {
                    bail!("--password-stdin read an empty password");
                }
                Some(p)
            } else if a.generate {
                Some(users::generate_password())
            } else {
                None
            };
            let mut client = connect(&a.primary).await?;
            users::create_role(
                &mut client,
                &users::NewRole {
                    name: a.name.clone(),
                    schema: a.schema.clone(),
                    password: password.clone(),
                },
            )
            .await?;
            eprintln!(
                "pgrelay: created role {} (LOGIN, {}){}",
                a.name,
                if password.is_some() {
                    "scram-sha-256 password"
                } else {
                    "no password: it can log in only where pg_hba.conf needs none"
                },
                a.schema
                    .as_ref()
                    .map(|s| format!(" and schema {s} owned by it"))
                    .unwrap_or_default()
            );
            if a.generate {
                eprintln!("pgrelay: generated password (shown once, store it now):");
                println!("{}", password.unwrap_or_default());
            }
            Ok(())
        }
        UsersCommand::List(a) => {
            let client = connect(&a.primary).await?;
            let roles = users::list_roles(&client).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&roles)?);
                return Ok(());
            }
            let mut rows = vec![[
                "ROLE".to_string(),
                "LOGIN".into(),
                "ATTRIBUTES".into(),
                "PASSWORD".into(),
                "MEMBER_OF".into(),
                "SCHEMAS".into(),
            ]];
            for r in roles {
                let mut attrs = Vec::new();
                for (on, n) in [
                    (r.superuser, "superuser"),
                    (r.replication, "replication"),
                    (r.createdb, "createdb"),
                    (r.createrole, "createrole"),
                ] {
                    if on {
                        attrs.push(n);
                    }
                }
                rows.push([
                    r.name,
                    r.login.to_string(),
                    if attrs.is_empty() {
                        "-".into()
                    } else {
                        attrs.join(",")
                    },
                    r.password,
                    if r.member_of.is_empty() {
                        "-".into()
                    } else {
                        r.member_of.join(",")
                    },
                    if r.schemas.is_empty() {
                        "-".into()
                    } else {
                        r.schemas.join(",")
                    },
                ]);
            }
            let widths: Vec<usize> = (0..6)
                .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
                .collect();
            for r in rows {
                let cells: Vec<String> = r
                    .iter()
                    .zip(&widths)
                    .map(|(v, w)| format!("{v:<w$}"))
                    .collect();
                println!("{}", cells.join("  ").trim_end());
            }
            Ok(())
        }
        UsersCommand::Drop(a) => {
            let mut client = connect(&a.primary).await?;
            let owned = match (a.reassign_to, a.drop_owned) {
                (Some(r), _) => users::OwnedObjects::ReassignTo(r),
                (None, true) => users::OwnedObjects::Drop,
                (None, false) => users::OwnedObjects::Refuse,
            };
            let report = users::drop_role(
                &mut client,
                &users::DropRole {
                    name: a.name.clone(),
                    drop_schemas: a.drop_schema,
                    owned,
                },
            )
            .await?;
            for s in &report.dropped_schemas {
                eprintln!("pgrelay: dropped schema {s} and its contents");
            }
            if !report.handled_objects.is_empty() {
                eprintln!(
                    "pgrelay: handled {} object(s) owned by {}",
                    report.handled_objects.len(),
                    a.name
                );
            }
            eprintln!("pgrelay: dropped role {}", a.name);
            Ok(())
        }
    }
}
