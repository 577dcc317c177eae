//! Ordinary (non-replication) SQL connections to a server described by a
//! libpq-style [`Config`], and the binary → text value converter `tail
//! --binary` uses.
//!
//! The connection reuses pgrelay-source's parsing and TLS rules (sslmode,
//! sslrootcert, client certificates), so a URL that works for replication
//! works here too; tokio-postgres carries the extended query protocol that
//! the walsender does not offer. Conversion asks the server itself: a value
//! bound in binary as a parameter of its own type and formatted with
//! `format('%s', $1)` goes through the type's receive and output functions,
//! so every type, including enums, domains and composites, prints exactly
//! as pgoutput's text mode would send it (the output function, which is
//! not always what a `::text` cast gives: bool prints `t`).
//! PostgreSQL docs: "Extended Query" (protocol-flow), "Type Conversion".

use std::collections::HashMap;
use std::error::Error as StdError;

use bytes::{Bytes, BytesMut};
use pgrelay_source::{Config, Host, SslMode};
use pgrelay_types::Oid;
use tokio_postgres::types::{IsNull, Kind, ToSql, Type};
use tokio_postgres::{Client, Statement};

/// Connects with the first host of `config` and drives the connection on
/// the current runtime.
pub async fn connect(config: &Config) -> anyhow::Result<Client> {
    let target = config
        .targets
        .first()
        .ok_or_else(|| anyhow::anyhow!("the connection string names no host"))?;
    let mut pg = tokio_postgres::Config::new();
    pg.user(&config.user)
        .dbname(&config.dbname)
        .port(target.port);
    pg.application_name(config.application_name.as_deref().unwrap_or("pgrelay"));
    if let Some(p) = &config.password {
        pg.password(p.expose());
    }
    if let Some(t) = config.connect_timeout {
        pg.connect_timeout(t);
    }
    match (&target.host, target.socket_path()) {
        (_, Some(path)) => {
            let dir = path.parent().map(|p| p.to_path_buf()).unwrap_or(path);
            pg.host_path(dir);
        }
        (Host::Tcp(name), None) => {
            pg.host(name);
        }
        _ => {}
    }
    if let Some(addr) = target.hostaddr {
        pg.hostaddr(addr);
    }
    let use_tls = target.socket_path().is_none() && config.sslmode != SslMode::Disable;
    let client = if use_tls {
        pg.ssl_mode(if config.sslmode.requires_tls() {
            tokio_postgres::config::SslMode::Require
        } else {
            tokio_postgres::config::SslMode::Prefer
        });
        let tls = pgrelay_source::rustls_client_config(config, target)?;
        let (client, conn) = pg
            .connect(tokio_postgres_rustls::MakeRustlsConnect::new(
                (*tls).clone(),
            ))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "SQL connection ended");
            }
        });
        client
    } else {
        let (client, conn) = pg.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "SQL connection ended");
            }
        });
        client
    };
    Ok(client)
}

/// A binary value passed through as is.
#[derive(Debug)]
struct Raw<'a>(&'a [u8]);

impl ToSql for Raw<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.extend_from_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// Turns binary column values into their text form, one prepared
/// statement per type.
pub struct TextConverter {
    client: Client,
    statements: HashMap<Oid, Statement>,
}

impl TextConverter {
    pub fn new(client: Client) -> Self {
        TextConverter {
            client,
            statements: HashMap::new(),
        }
    }

    pub async fn render(&mut self, type_oid: Oid, value: &Bytes) -> anyhow::Result<Bytes> {
        let stmt = match self.statements.get(&type_oid) {
            Some(s) => s.clone(),
            None => {
                let ty = Type::from_oid(type_oid.0).unwrap_or_else(|| {
                    Type::new(
                        format!("oid{}", type_oid.0),
                        type_oid.0,
                        Kind::Simple,
                        String::new(),
                    )
                });
                let s = self
                    .client
                    .prepare_typed("SELECT format('%s', $1)", &[ty])
                    .await?;
                self.statements.insert(type_oid, s.clone());
                s
            }
        };
        let row = self.client.query_one(&stmt, &[&Raw(value)]).await?;
        let text: String = row.get(0);
        Ok(Bytes::from(text))
    }
}
