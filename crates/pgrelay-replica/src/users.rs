//! `pgrelay users`: application login roles (and their schemas) on the
//! primary.
//!
//! Passwords are turned into a SCRAM-SHA-256 verifier here, client-side
//! (RFC 5802/7677 with the server's own salt length and 4096 iterations),
//! and only the verifier is sent: the clear text never reaches the
//! server, its log (`log_statement`), `pg_stat_activity` or a replica. A
//! generated password is 24 characters from a CSPRNG, returned once for
//! printing. Roles are created `LOGIN`; `--schema S` creates S owned by the
//! role and, when S is not the role's own name, puts it first in the
//! role's `search_path`.
//!
//! Dropping a role that owns objects never fails with PostgreSQL's bare
//! "some objects depend on it": pgrelay lists what it owns (here and in
//! other databases, from `pg_shdepend`) and explains the three choices
//! (`--reassign-to`, `--drop-owned`, `--drop-schema`); nothing is changed
//! until the operator picks one. Privileges granted *to* the role are
//! revoked (`DROP OWNED BY` with nothing owned) as part of dropping it.
//! PostgreSQL docs: "Database Roles" (user-manag), "Password
//! Authentication" (auth-password), "DROP ROLE", "REASSIGN OWNED",
//! "DROP OWNED", "pg_shdepend".

use rand::Rng;
use serde::Serialize;
use tokio_postgres::Client;

use crate::quote::{ident, literal};
use crate::{ReplicaError, Result};

/// A password from a CSPRNG: 24 characters, letters and digits (no
/// characters that need quoting anywhere).
pub fn generate_password() -> String {
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rngs::OsRng;
    (0..24)
        .map(|_| char::from(CHARS[rng.gen_range(0..CHARS.len())]))
        .collect()
}

/// The SCRAM-SHA-256 verifier PostgreSQL stores for `password`.
pub fn scram_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

/// A role to create.
#[derive(Debug, Clone)]
pub struct NewRole {
    /// Role name.
    pub name: String,
    /// A schema to create, owned by the role.
    pub schema: Option<String>,
    /// Its password (clear text; only the verifier leaves this process).
    pub password: Option<String>,
}

fn sql_err(what: &str) -> impl Fn(tokio_postgres::Error) -> ReplicaError + '_ {
    move |e| ReplicaError::sql(what, &e)
}

/// Creates the role (and schema) in one transaction.
pub async fn create_role(client: &mut Client, role: &NewRole) -> Result<()> {
    if role.name.is_empty() || role.name.starts_with("pg_") {
        return Err(ReplicaError::Precondition(format!(
            "role name {:?} is not allowed (empty or reserved pg_ prefix)",
            role.name
        )));
    }
    if role.password.as_deref() == Some("") {
        return Err(ReplicaError::Precondition("the password is empty".into()));
    }
    let tx = client.transaction().await.map_err(sql_err("BEGIN"))?;
    let exists = tx
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role.name])
        .await
        .map_err(sql_err("looking the role up"))?
        .is_some();
    if exists {
        return Err(ReplicaError::Precondition(format!(
            "role {} already exists; drop it first (pgrelay users drop) or pick another name",
            ident(&role.name)
        )));
    }
    let mut sql = format!("CREATE ROLE {} LOGIN", ident(&role.name));
    if let Some(p) = &role.password {
        sql.push_str(&format!(" PASSWORD {}", literal(&scram_verifier(p))));
    }
    tx.batch_execute(&sql)
        .await
        .map_err(sql_err("CREATE ROLE (needs CREATEROLE or a superuser)"))?;
    if let Some(schema) = &role.schema {
        let taken = tx
            .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[schema])
            .await
            .map_err(sql_err("looking the schema up"))?
            .is_some();
        if taken {
            return Err(ReplicaError::Precondition(format!(
                "schema {} already exists in this database; pick another --schema",
                ident(schema)
            )));
        }
        tx.batch_execute(&format!(
            "CREATE SCHEMA {} AUTHORIZATION {}",
            ident(schema),
            ident(&role.name)
        ))
        .await
        .map_err(sql_err("CREATE SCHEMA"))?;
        if schema != &role.name {
            tx.batch_execute(&format!(
                "ALTER ROLE {} SET search_path = {}, public",
                ident(&role.name),
                ident(schema)
            ))
            .await
            .map_err(sql_err("setting the role's search_path"))?;
        }
    }
    tx.commit().await.map_err(sql_err("COMMIT"))
}

/// One role as `users list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RoleInfo {
    /// Name.
    pub name: String,
    /// Can log in.
    pub login: bool,
    /// Superuser.
    pub superuser: bool,
    /// May replicate.
    pub replication: bool,
    /// May create databases.
    pub createdb: bool,
    /// May create roles.
    pub createrole: bool,
    /// `scram-sha-256`, `md5`, `none`, or `unknown` without superuser.
    pub password: String,
    /// Roles it is a member of.
    pub member_of: Vec<String>,
    /// Schemas it owns in this database.
    pub schemas: Vec<String>,
}

/// Every role except PostgreSQL's predefined `pg_*` roles.
pub async fn list_roles(client: &Client) -> Result<Vec<RoleInfo>> {
    let rows = client
        .query(
            "SELECT r.rolname::text, r.rolcanlogin, r.rolsuper, r.rolreplication, r.rolcreatedb, \
                    r.rolcreaterole, \
                    ARRAY(SELECT b.rolname::text FROM pg_auth_members m \
                          JOIN pg_roles b ON b.oid = m.roleid WHERE m.member = r.oid ORDER BY 1), \
                    ARRAY(SELECT nspname::text FROM pg_namespace WHERE nspowner = r.oid \
                          ORDER BY 1) \
             FROM pg_roles r WHERE r.rolname !~ '^pg_' ORDER BY 1",
            &[],
        )
        .await
        .map_err(sql_err("listing roles"))?;
    // pg_authid is readable only by superusers; others see "unknown".
    let kinds: Vec<(String, String)> = match client
        .query(
            "SELECT rolname::text, CASE WHEN rolpassword IS NULL THEN 'none' \
                    WHEN rolpassword LIKE 'SCRAM-SHA-256$%' THEN 'scram-sha-256' \
                    WHEN rolpassword LIKE 'md5%' THEN 'md5' ELSE 'other' END FROM pg_authid",
            &[],
        )
        .await
    {
        Ok(rows) => rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
        Err(_) => Vec::new(),
    };
    Ok(rows
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            RoleInfo {
                password: kinds
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, k)| k.clone())
                    .unwrap_or_else(|| "unknown".into()),
                name,
                login: r.get(1),
                superuser: r.get(2),
                replication: r.get(3),
                createdb: r.get(4),
                createrole: r.get(5),
                member_of: r.get(6),
                schemas: r.get(7),
            }
        })
        .collect())
}

/// What to do with objects the role owns in this database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedObjects {
    /// Refuse and explain (the default).
    Refuse,
    /// `REASSIGN OWNED BY role TO other`.
    ReassignTo(String),
    /// `DROP OWNED BY role`.
    Drop,
}

/// How to drop a role.
#[derive(Debug, Clone)]
pub struct DropRole {
    /// Role name.
    pub name: String,
    /// Drop the schemas it owns here, with their contents, first.
    pub drop_schemas: bool,
    /// What to do with the rest of what it owns here.
    pub owned: OwnedObjects,
}

/// What dropping did.
#[derive(Debug, Clone, Default)]
pub struct DropReport {
    /// Schemas dropped with CASCADE.
    pub dropped_schemas: Vec<String>,
    /// Objects reassigned or dropped (descriptions).
    pub handled_objects: Vec<String>,
}

const OWNED_HERE: &str = "\
SELECT pg_describe_object(s.classid, s.objid, s.objsubid) FROM pg_shdepend s \
WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = $1 AND s.deptype = 'o' \
  AND s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
ORDER BY 1";

/// Drops the role (see the module docs for what happens to its objects).
pub async fn drop_role(client: &mut Client, d: &DropRole) -> Result<DropReport> {
    let tx = client.transaction().await.map_err(sql_err("BEGIN"))?;
    let row = tx
        .query_opt(
            "SELECT oid, current_database()::text FROM pg_roles WHERE rolname = $1",
            &[&d.name],
        )
        .await
        .map_err(sql_err("looking the role up"))?;
    let Some(row) = row else {
        return Err(ReplicaError::Precondition(format!(
            "role {} does not exist",
            ident(&d.name)
        )));
    };
    let oid: tokio_postgres::types::Oid = row.get(0);
    let db: String = row.get(1);
    let elsewhere = tx
        .query(
            "SELECT coalesce(d.datname::text, '(shared: databases, tablespaces)'), \
                    count(*) FILTER (WHERE s.deptype = 'o')::int, count(*)::int \
             FROM pg_shdepend s LEFT JOIN pg_database d ON d.oid = s.dbid \
             WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = $1 \
               AND s.dbid <> (SELECT oid FROM pg_database WHERE datname = current_database()) \
             GROUP BY 1 ORDER BY 1",
            &[&oid],
        )
        .await
        .map_err(sql_err("reading pg_shdepend"))?;
    if !elsewhere.is_empty() {
        let list: Vec<String> = elsewhere
            .iter()
            .map(|r| {
                let (name, owned, all): (String, i32, i32) = (r.get(0), r.get(1), r.get(2));
                format!(
                    "{name}: {owned} owned object(s), {} privilege(s)",
                    all - owned
                )
            })
            .collect();
        return Err(ReplicaError::RoleOwnsObjects(format!(
            "role {} cannot be dropped yet: it owns objects or holds privileges in other \
             databases ({}); run this command against each of them first (the same --primary \
             URL with that database name), then here. Nothing was changed.",
            ident(&d.name),
            list.join("; ")
        )));
    }
    let mut report = DropReport::default();
    if d.drop_schemas {
        let schemas: Vec<String> = tx
            .query(
                "SELECT nspname::text FROM pg_namespace WHERE nspowner = $1 ORDER BY 1",
                &[&oid],
            )
            .await
            .map_err(sql_err("listing the role's schemas"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for s in schemas {
            tx.batch_execute(&format!("DROP SCHEMA {} CASCADE", ident(&s)))
                .await
                .map_err(sql_err("DROP SCHEMA"))?;
            report.dropped_schemas.push(s);
        }
    }
    let owned: Vec<String> = tx
        .query(OWNED_HERE, &[&oid])
        .await
        .map_err(sql_err("listing the role's objects"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let role = ident(&d.name);
    if !owned.is_empty() {
        match &d.owned {
            OwnedObjects::Refuse => {
                let mut shown: Vec<String> = owned.iter().take(10).cloned().collect();
                if owned.len() > 10 {
                    shown.push(format!("and {} more", owned.len() - 10));
                }
                return Err(ReplicaError::RoleOwnsObjects(format!(
                    "role {role} owns {} object(s) in database {} ({}), and PostgreSQL refuses \
                     to drop a role that owns objects. Nothing was changed. Choose what happens \
                     to them and run again with one of:\n  \
                     --reassign-to ROLE  keep them, owned by ROLE from now on (REASSIGN OWNED BY \
                     {role} TO ROLE)\n  \
                     --drop-owned        delete them (DROP OWNED BY {role}; fails if other \
                     roles' objects depend on them)\n  \
                     --drop-schema       drop the schemas {role} owns with everything in them \
                     (DROP SCHEMA ... CASCADE), when that is where its objects live",
                    owned.len(),
                    ident(&db),
                    shown.join(", ")
                )));
            }
            OwnedObjects::ReassignTo(other) => {
                tx.batch_execute(&format!("REASSIGN OWNED BY {role} TO {}", ident(other)))
                    .await
                    .map_err(sql_err("REASSIGN OWNED"))?;
            }
            OwnedObjects::Drop => {
                tx.batch_execute(&format!("DROP OWNED BY {role}"))
                    .await
                    .map_err(sql_err("DROP OWNED"))?;
            }
        }
        report.handled_objects = owned;
    }
    // With nothing owned left here, this only revokes privileges granted to
    // the role (and its default privileges), which DROP ROLE requires.
    tx.batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await
        .map_err(sql_err("DROP ROLE"))?;
    tx.commit().await.map_err(sql_err("COMMIT"))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_verifiers() {
        let p = generate_password();
        assert_eq!(p.len(), 24);
        assert_ne!(p, generate_password());
        let v = scram_verifier("secret");
        assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
        assert!(!v.contains("secret"));
    }
}
