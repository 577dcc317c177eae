//! SQL text for identifiers and literals: the one place pgrelay quotes a
//! name or a string into SQL (every crate uses these; none has its own).
//!
//! Invariants: [`quote_ident`] always double-quotes (case, keywords and odd
//! characters survive exactly) and is what executed statements use;
//! [`quote_literal`] is correct whatever `standard_conforming_strings` says
//! (an `E'...'` literal when the value holds a backslash); the `display_*`
//! forms are for messages and suggested fixes only, unquoted where a human
//! would not quote. Values never travel as literals where a bind parameter
//! can carry them.
//!
//! PostgreSQL docs: "Lexical Structure" (sql-syntax-lexical: identifiers,
//! string constants, escape string constants), "SQL Key Words"
//! (sql-keywords-appendix).

/// `"name"` with embedded double quotes doubled: always safe in SQL.
pub fn quote_ident(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('"');
    for ch in name.chars() {
        if ch == '"' {
            s.push('"');
        }
        s.push(ch);
    }
    s.push('"');
    s
}

/// `"schema"."name"`.
pub fn quote_qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// `'value'` with embedded single quotes doubled, or `E'...'` with
/// backslashes doubled too when the value holds one, so the literal means
/// the same with `standard_conforming_strings` on or off.
pub fn quote_literal(value: &str) -> String {
    let body = value.replace('\'', "''");
    if body.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

/// Reserved keywords that cannot be used as unquoted identifiers
/// (PostgreSQL's "reserved" and "reserved (can be function or type)").
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// An identifier as a human would type it: unquoted when that is
/// unambiguous, quoted otherwise. For messages and suggested fixes.
pub fn display_ident(name: &str) -> String {
    let simple = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
        && !RESERVED.contains(&name);
    if simple {
        name.to_string()
    } else {
        quote_ident(name)
    }
}

/// `schema.name` for messages, quoted only where needed.
pub fn display_qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", display_ident(schema), display_ident(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_always_quoted_with_quotes_doubled() {
        assert_eq!(quote_ident("orders"), "\"orders\"");
        assert_eq!(quote_ident("Mixed \"Case\""), "\"Mixed \"\"Case\"\"\"");
        assert_eq!(quote_qualified("public", "user"), "\"public\".\"user\"");
        assert_eq!(quote_ident(""), "\"\"");
    }

    #[test]
    fn literals_survive_either_standard_conforming_strings() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b'c"), r"E'a\\b''c'");
        assert_eq!(quote_literal(""), "''");
    }

    #[test]
    fn display_quotes_only_where_a_human_would() {
        assert_eq!(display_qualified("public", "orders"), "public.orders");
        assert_eq!(display_ident("order"), "\"order\"");
        assert_eq!(display_ident("Orders"), "\"Orders\"");
        assert_eq!(display_ident("1abc"), "\"1abc\"");
        assert_eq!(display_ident(""), "\"\"");
        assert_eq!(display_ident("a$b_1"), "a$b_1");
    }
}
