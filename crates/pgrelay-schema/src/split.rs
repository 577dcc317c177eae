//! Splitting a plain-format `pg_dump` script into single statements, and
//! small SQL-text helpers (identifier and literal quoting, finding the table
//! a DDL statement is about).
//!
//! Invariants: a `;` ends a statement only outside string literals
//! (standard and `E'...'`), quoted identifiers, comments (nested block
//! comments included) and dollar-quoted bodies; psql meta-commands (lines
//! starting with `\`, such as the `\restrict` lines newer pg_dump releases
//! write) are dropped, because the statements are run with simple queries
//! and not through psql. The `-- Name: ...; Type: ...; Schema: ...` comment
//! pg_dump writes before each archive entry is kept as the statement's
//! header, which is how statements get their kind and name.
//! PostgreSQL docs: "Lexical Structure" (sql-syntax-lexical), pg_dump
//! (app-pgdump).

/// The `-- Name: ...; Type: ...; Schema: ...` line before a pg_dump entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub object_type: String,
    pub schema: Option<String>,
}

/// One statement of a script, with the header of the entry it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub header: Option<Header>,
    pub sql: String,
}

fn parse_header(comment: &str) -> Option<Header> {
    let rest = comment.strip_prefix("-- Name: ")?;
    let mut name = None;
    let mut object_type = None;
    let mut schema = None;
    // "Name: x; Type: TABLE; Schema: public; Owner: postgres"
    let mut parts = rest.split("; ");
    name = parts.next().map(str::to_string).or(name);
    for part in parts {
        if let Some(t) = part.strip_prefix("Type: ") {
            object_type = Some(t.to_string());
        } else if let Some(s) = part.strip_prefix("Schema: ") {
            if s != "-" {
                schema = Some(s.to_string());
            }
        }
    }
    Some(Header {
        name: name?,
        object_type: object_type?,
        schema,
    })
}

/// Splits `script` into statements (without the trailing `;`).
pub fn split_script(script: &str) -> Vec<Piece> {
    let chars: Vec<char> = script.chars().collect();
    let mut out = Vec::new();
    let mut header: Option<Header> = None;
    let mut current = String::new();
    let mut i = 0;
    let n = chars.len();
    let at_start = |cur: &String| cur.trim().is_empty();
    while i < n {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        // Line comment.
        if c == '-' && next == Some('-') {
            let end = chars[i..]
                .iter()
                .position(|&x| x == '\n')
                .map_or(n, |p| i + p);
            let comment: String = chars[i..end].iter().collect();
            if at_start(&current) {
                if let Some(h) = parse_header(comment.trim_end()) {
                    header = Some(h);
                }
                current.clear();
            } else {
                current.push_str(&comment);
            }
            i = end;
            continue;
        }
        // psql meta-command at the start of a statement.
        if c == '\\' && at_start(&current) {
            let end = chars[i..]
                .iter()
                .position(|&x| x == '\n')
                .map_or(n, |p| i + p);
            current.clear();
            i = end;
            continue;
        }
        if c == '/' && next == Some('*') {
            let mut depth = 0usize;
            let start = i;
            while i < n {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            current.extend(&chars[start..i.min(n)]);
            continue;
        }
        if c == '\'' {
            let escapes = i > 0
                && matches!(chars[i - 1], 'E' | 'e')
                && (i < 2 || !(chars[i - 2].is_alphanumeric() || chars[i - 2] == '_'));
            let start = i;
            i += 1;
            while i < n {
                if escapes && chars[i] == '\\' {
                    i += 2;
                    continue;
                }
                if chars[i] == '\'' {
                    if chars.get(i + 1) == Some(&'\'') {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            current.extend(&chars[start..i.min(n)]);
            continue;
        }
        if c == '"' {
            let start = i;
            i += 1;
            while i < n {
                if chars[i] == '"' {
                    if chars.get(i + 1) == Some(&'"') {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            current.extend(&chars[start..i.min(n)]);
            continue;
        }
        if c == '$' {
            // A dollar quote: $tag$ where tag is an identifier without '$',
            // not preceded by an identifier character (that would be $1 or
            // part of a name).
            let prev_ident = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
            if !prev_ident {
                let mut j = i + 1;
                while j < n && (chars[j].is_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let tag_ok = j < n
                    && chars[j] == '$'
                    && !chars.get(i + 1).is_some_and(|d| d.is_ascii_digit());
                if tag_ok {
                    let tag: Vec<char> = chars[i..=j].to_vec();
                    let mut k = j + 1;
                    let mut end = n;
                    while k + tag.len() <= n {
                        if chars[k..k + tag.len()] == tag[..] {
                            end = k + tag.len();
                            break;
                        }
                        k += 1;
                    }
                    current.extend(&chars[i..end]);
                    i = end;
                    continue;
                }
            }
        }
        if c == ';' {
            let sql = current.trim().to_string();
            if !sql.is_empty() {
                out.push(Piece {
                    header: header.clone(),
                    sql,
                });
            }
            current.clear();
            i += 1;
            continue;
        }
        current.push(c);
        i += 1;
    }
    let sql = current.trim().to_string();
    if !sql.is_empty() {
        out.push(Piece { header, sql });
    }
    out
}

pub use pgrelay_types::sql::{quote_ident, quote_literal, quote_qualified as qualified};

/// Words of a statement's head: quoted identifiers stay one token (quotes
/// kept), `.` separates, whitespace and `(` end a token.
fn tokens(sql: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if out.len() >= limit {
            break;
        }
        match c {
            '"' => {
                cur.push(c);
                while let Some(d) = chars.next() {
                    cur.push(d);
                    if d == '"' {
                        if chars.peek() == Some(&'"') {
                            cur.push(chars.next().unwrap_or('"'));
                            continue;
                        }
                        break;
                    }
                }
            }
            c if c.is_whitespace() || c == '(' || c == ';' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                if c == '(' {
                    break;
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() && out.len() < limit {
        out.push(cur);
    }
    out
}

/// The table an `ALTER TABLE`, `CREATE [UNIQUE] INDEX ... ON` or
/// `CREATE TRIGGER ... ON` statement works on, as written (qualified, quoted
/// as in the statement). Used to group post-data work per table.
pub fn statement_table(sql: &str) -> Option<String> {
    let toks = tokens(sql, 40);
    let upper: Vec<String> = toks.iter().map(|t| t.to_ascii_uppercase()).collect();
    let after = |idx: usize| -> Option<String> {
        let mut k = idx;
        while upper
            .get(k)
            .is_some_and(|t| t == "ONLY" || t == "IF" || t == "EXISTS")
        {
            k += 1;
        }
        toks.get(k).cloned()
    };
    match (upper.first()?.as_str(), upper.get(1).map(String::as_str)) {
        ("ALTER", Some("TABLE")) => after(2),
        ("CREATE", _) => {
            let on = upper.iter().position(|t| t == "ON")?;
            after(on + 1)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_around_quotes_comments_and_dollar_bodies() {
        let script = "\\restrict abc\nSET a = 1;\n--\n-- Name: f(); Type: FUNCTION; Schema: public; Owner: me\n--\n\nCREATE FUNCTION f() RETURNS int AS $_$ select 1; $_$ LANGUAGE sql;\nSELECT 'x;''y', E'\\';', \"a;b\" /* c; /* d; */ */ FROM t; -- trailing; comment\n\\unrestrict abc\n";
        let pieces = split_script(script);
        let sqls: Vec<&str> = pieces.iter().map(|p| p.sql.as_str()).collect();
        assert_eq!(
            sqls,
            vec![
                "SET a = 1",
                "CREATE FUNCTION f() RETURNS int AS $_$ select 1; $_$ LANGUAGE sql",
                "SELECT 'x;''y', E'\\';', \"a;b\" /* c; /* d; */ */ FROM t",
            ]
        );
        assert_eq!(pieces[0].header, None);
        let h = pieces[1].header.as_ref().expect("header");
        assert_eq!(h.object_type, "FUNCTION");
        assert_eq!(h.name, "f()");
        assert_eq!(h.schema.as_deref(), Some("public"));
    }

    #[test]
    fn finds_the_table_of_post_data_statements() {
        assert_eq!(
            statement_table("ALTER TABLE ONLY public.t\n ADD CONSTRAINT t_pkey PRIMARY KEY (id)")
                .as_deref(),
            Some("public.t")
        );
        assert_eq!(
            statement_table("CREATE UNIQUE INDEX \"on x\" ON ONLY \"S\".\"T y\" USING btree (a)")
                .as_deref(),
            Some("\"S\".\"T y\"")
        );
        assert_eq!(
            statement_table(
                "CREATE TRIGGER trg BEFORE INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION f()"
            )
            .as_deref(),
            Some("public.t")
        );
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
