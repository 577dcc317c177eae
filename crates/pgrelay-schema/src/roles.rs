//! Roles, memberships and object privileges (`--roles`).
//!
//! Roles are created if missing and then given the source's attributes
//! (`ALTER ROLE ... WITH ...`), so rerunning is harmless and a role that
//! already exists on the target is brought in line, except the role applying
//! the statements: copying, say, NOSUPERUSER from a managed source onto the
//! target's admin would lock the migration out of its own target. Passwords are copied as
//! the stored SCRAM or MD5 verifier from `pg_authid` when the source role may
//! read it (superuser); otherwise the role is created without a password and
//! a warning says so. The bootstrap superuser and `pg_*` roles are left
//! alone. Statements of kind [`ObjectKind::Role`] carry the verifier and are
//! never displayed. Apply order: Role and Membership statements before the
//! pre-data (owners must exist), Grant statements after it.
//! PostgreSQL docs: CREATE ROLE (sql-createrole), pg_authid
//! (catalog-pg-authid), "Privileges" (ddl-priv), aclexplode
//! (functions-info).

use tokio_postgres::Client;

use crate::split::{quote_ident, quote_literal};
use crate::{selected_schemas, ObjectKind, SchemaError, SchemaOptions, Statement};

/// Roles, memberships and grants on the objects of every user schema.
pub async fn dump_roles(source: &Client) -> Result<Vec<Statement>, SchemaError> {
    dump_roles_selected(source, &SchemaOptions::default()).await
}

/// Like [`dump_roles`], with grants limited to the objects `options`
/// selects.
pub async fn dump_roles_selected(
    source: &Client,
    options: &SchemaOptions,
) -> Result<Vec<Statement>, SchemaError> {
    let can_read_authid = source
        .query_one(
            "SELECT pg_catalog.has_table_privilege('pg_catalog.pg_authid', 'SELECT')",
            &[],
        )
        .await
        .map_err(SchemaError::query("check access to pg_authid"))?
        .get::<_, bool>(0);
    let password_col = if can_read_authid {
        "a.rolpassword"
    } else {
        "NULL::text"
    };
    let table = if can_read_authid {
        "pg_catalog.pg_authid"
    } else {
        "pg_catalog.pg_roles"
    };
    let rows = source
        .query(
            &format!(
                "SELECT a.oid, a.rolname::text, a.rolsuper, a.rolinherit, a.rolcreaterole, a.rolcreatedb, \
                        a.rolcanlogin, a.rolreplication, a.rolbypassrls, a.rolconnlimit, {password_col}, \
                        a.rolvaliduntil::text \
                 FROM {table} a WHERE a.rolname !~ '^pg_' AND a.oid <> 10 ORDER BY a.oid"
            ),
            &[],
        )
        .await
        .map_err(SchemaError::query("list roles"))?;
    let mut out = Vec::new();
    let mut without_password = Vec::new();
    for r in &rows {
        let name: String = r.get(1);
        let flag = |i: usize, yes: &str, no: &str| -> String {
            if r.get::<_, bool>(i) {
                yes.into()
            } else {
                no.into()
            }
        };
        let mut attrs = vec![
            flag(2, "SUPERUSER", "NOSUPERUSER"),
            flag(3, "INHERIT", "NOINHERIT"),
            flag(4, "CREATEROLE", "NOCREATEROLE"),
            flag(5, "CREATEDB", "NOCREATEDB"),
            flag(6, "LOGIN", "NOLOGIN"),
            flag(7, "REPLICATION", "NOREPLICATION"),
            flag(8, "BYPASSRLS", "NOBYPASSRLS"),
            format!("CONNECTION LIMIT {}", r.get::<_, i32>(9)),
        ];
        let password: Option<String> = r.get(10);
        match password {
            Some(p) => attrs.push(format!("PASSWORD {}", quote_literal(&p))),
            None if r.get::<_, bool>(6) => without_password.push(name.clone()),
            None => {}
        }
        if let Some(v) = r.get::<_, Option<String>>(11) {
            attrs.push(format!("VALID UNTIL {}", quote_literal(&v)));
        }
        let q = quote_ident(&name);
        let alter = format!("ALTER ROLE {q} WITH {}", attrs.join(" "));
        let body = format!(
            "BEGIN IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {name_lit}) \
             THEN CREATE ROLE {q}; END IF; \
             IF {name_lit} <> current_user THEN EXECUTE {alter_lit}; END IF; END",
            name_lit = quote_literal(&name),
            alter_lit = quote_literal(&alter),
        );
        // A dollar-quote tag the body cannot end early.
        let mut tag = String::from("pgrelay");
        while body.contains(&format!("${tag}$")) {
            tag.push('x');
        }
        out.push(Statement::new(
            ObjectKind::Role,
            name.clone(),
            format!("DO ${tag}$ {body} ${tag}$"),
        ));
    }
    if !without_password.is_empty() {
        tracing::warn!(roles = ?without_password, "the source role cannot read pg_authid: these login roles are created without a password; set their passwords on the target");
    }
    // Role-wide settings.
    let rows = source
        .query(
            "SELECT r.rolname::text, unnest(s.setconfig) FROM pg_catalog.pg_db_role_setting s \
             JOIN pg_catalog.pg_roles r ON r.oid = s.setrole \
             WHERE s.setdatabase = 0 AND r.rolname !~ '^pg_' AND r.oid <> 10",
            &[],
        )
        .await
        .map_err(SchemaError::query("read role settings"))?;
    for r in &rows {
        let (role, setting): (String, String) = (r.get(0), r.get(1));
        if let Some((k, v)) = setting.split_once('=') {
            out.push(Statement::new(
                ObjectKind::Role,
                role.clone(),
                format!(
                    "ALTER ROLE {} SET {} TO {}",
                    quote_ident(&role),
                    quote_ident(k),
                    quote_literal(v)
                ),
            ));
        }
    }
    // Memberships.
    let rows = source
        .query(
            "SELECT g.rolname::text, m.rolname::text, am.admin_option \
             FROM pg_catalog.pg_auth_members am \
             JOIN pg_catalog.pg_roles g ON g.oid = am.roleid JOIN pg_catalog.pg_roles m ON m.oid = am.member \
             WHERE g.rolname !~ '^pg_' OR m.rolname !~ '^pg_' ORDER BY g.oid, m.oid",
            &[],
        )
        .await
        .map_err(SchemaError::query("read role memberships"))?;
    for r in &rows {
        let (group, member, admin): (String, String, bool) = (r.get(0), r.get(1), r.get(2));
        out.push(Statement::new(
            ObjectKind::Membership,
            format!("{member} in {group}"),
            format!(
                "GRANT {} TO {}{}",
                quote_ident(&group),
                quote_ident(&member),
                if admin { " WITH ADMIN OPTION" } else { "" }
            ),
        ));
    }
    out.extend(grants(source, options).await?);
    Ok(out)
}

/// GRANT statements from the ACLs of the selected schemas, tables, views,
/// sequences and functions (owners' own rights are implied and left out).
async fn grants(source: &Client, options: &SchemaOptions) -> Result<Vec<Statement>, SchemaError> {
    let schemas = selected_schemas(source, options).await?;
    let sql = "
        WITH objs AS (
          SELECT 'SCHEMA' AS kind, quote_ident(n.nspname) AS name, n.nspname AS schema, NULL::text AS rel,
                 n.nspowner AS owner, n.nspacl AS acl
            FROM pg_catalog.pg_namespace n WHERE n.nspname = ANY($1)
          UNION ALL
          SELECT CASE WHEN c.relkind = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
                 quote_ident(n.nspname) || '.' || quote_ident(c.relname), n.nspname, c.relname::text,
                 c.relowner, c.relacl
            FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND n.nspname = ANY($1)
          UNION ALL
          SELECT CASE WHEN p.prokind = 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
                 quote_ident(n.nspname) || '.' || quote_ident(p.proname) || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')',
                 n.nspname, NULL, p.proowner, p.proacl
            FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
           WHERE p.prokind IN ('f', 'p') AND n.nspname = ANY($1)
        )
        SELECT o.kind, o.name, o.schema, o.rel, a.privilege_type,
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END, a.is_grantable
          FROM objs o CROSS JOIN LATERAL pg_catalog.aclexplode(o.acl) a
          LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
         WHERE o.acl IS NOT NULL AND a.grantee <> o.owner
           AND (a.grantee = 0 OR r.rolname !~ '^pg_' OR r.rolname IS NULL)
         ORDER BY 1, 2, 6, 5";
    let rows = source
        .query(sql, &[&schemas])
        .await
        .map_err(SchemaError::query("read object privileges"))?;
    let mut out = Vec::new();
    for r in &rows {
        let (kind, name, schema): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        let rel: Option<String> = r.get(3);
        if let Some(rel) = &rel {
            if options
                .exclude_tables
                .iter()
                .any(|(s, t)| *s == schema && t == rel)
            {
                continue;
            }
        }
        let (privilege, grantee, grantable): (String, String, bool) =
            (r.get(4), r.get(5), r.get(6));
        out.push(Statement::new(
            ObjectKind::Grant,
            format!("{privilege} on {name} to {grantee}"),
            format!(
                "GRANT {privilege} ON {kind} {name} TO {grantee}{}",
                if grantable { " WITH GRANT OPTION" } else { "" }
            ),
        ));
    }
    Ok(out)
}
