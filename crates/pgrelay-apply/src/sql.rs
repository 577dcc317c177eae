//! SQL text helpers: identifier quoting, the parameter type that sends a
//! replicated value to the server untouched, and COPY text-format encoding.
//!
//! Invariants: every identifier that reaches an executed statement goes
//! through [`quote_ident`] (always double-quoted, embedded quotes doubled),
//! and no value is ever interpolated into SQL text: values travel as bind
//! parameters in the format they were decoded in (text output or binary
//! send format), so the target's input/receive function parses them exactly
//! as native logical replication does. In COPY text format a value is
//! escaped so that backslash, tab, newline and carriage return survive, and
//! NULL is `\N`.
//!
//! PostgreSQL reference: "Lexical Structure" (sql-syntax-lexical,
//! identifiers), "COPY" (sql-copy, text format), "Message Flow" (Bind
//! parameter format codes, protocol-flow).

use bytes::{BufMut, Bytes, BytesMut};
use tokio_postgres::types::{to_sql_checked, Format, IsNull, ToSql, Type};

pub use pgrelay_types::sql::{display_ident, display_qualified, quote_ident, quote_qualified};

/// A bind parameter carrying a replicated value as-is.
///
/// Text values are sent with format code 0 so the server runs the column
/// type's input function (this works for every type, including enums,
/// domains, arrays and composites); binary values with format code 1 for
/// its receive function. `accepts` every type because the statement's
/// parameter types come from the target's catalog, not from Rust.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Param {
    /// SQL NULL.
    Null,
    /// Text output of the type.
    Text(Bytes),
    /// Binary send format of the type.
    Binary(Bytes),
}

impl ToSql for Param {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Null => Ok(IsNull::Yes),
            Param::Text(b) | Param::Binary(b) => {
                out.put_slice(b);
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        match self {
            Param::Binary(_) => Format::Binary,
            Param::Null | Param::Text(_) => Format::Text,
        }
    }

    to_sql_checked!();
}

/// Whether `value` holds a byte COPY text format escapes (`\\`, tab,
/// newline, carriage return). Eight bytes at a time (a word has a byte
/// equal to `c` iff `w ^ c*0x01..01` has a zero byte): most values have
/// none, and this check is on the path of every inserted column.
fn needs_copy_escape(value: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let has_byte = |w: u64, c: u8| {
        let x = w ^ (LO * u64::from(c));
        x.wrapping_sub(LO) & !x & HI != 0
    };
    let mut chunks = value.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        if has_byte(w, b'\\') || has_byte(w, b'\t') || has_byte(w, b'\n') || has_byte(w, b'\r') {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r'))
}

/// Appends `value` to a COPY text-format row, escaped.
pub fn copy_escape_into(out: &mut BytesMut, value: &[u8]) {
    if !needs_copy_escape(value) {
        out.put_slice(value);
        return;
    }
    let mut start = 0;
    for (i, &b) in value.iter().enumerate() {
        let esc: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.put_slice(&value[start..i]);
        out.put_slice(esc);
        start = i + 1;
    }
    out.put_slice(&value[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_escaping_at_every_position() {
        for len in 0..40 {
            for at in 0..len {
                for special in [b'\\', b'\t', b'\n', b'\r', b'a', 0u8, 0x80, 0xff] {
                    let mut v = vec![b'x'; len];
                    v[at] = special;
                    let mut out = BytesMut::new();
                    copy_escape_into(&mut out, &v);
                    let mut want = Vec::new();
                    for &b in &v {
                        match b {
                            b'\\' => want.extend_from_slice(b"\\\\"),
                            b'\t' => want.extend_from_slice(b"\\t"),
                            b'\n' => want.extend_from_slice(b"\\n"),
                            b'\r' => want.extend_from_slice(b"\\r"),
                            b => want.push(b),
                        }
                    }
                    assert_eq!(&out[..], &want[..], "len {len}, {special:#x} at {at}");
                }
            }
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_qualified("public", "T"), "\"public\".\"T\"");
        assert_eq!(display_ident("t_1"), "t_1");
        assert_eq!(display_ident("user"), "\"user\"");
        assert_eq!(display_ident("Mixed"), "\"Mixed\"");
        assert_eq!(display_ident("1a"), "\"1a\"");
        assert_eq!(
            display_qualified("public", "my table"),
            "public.\"my table\""
        );
    }

    #[test]
    fn copy_escaping() {
        let mut out = BytesMut::new();
        copy_escape_into(&mut out, b"a\\b\tc\nd\re");
        assert_eq!(&out[..], b"a\\\\b\\tc\\nd\\re");
        out.clear();
        copy_escape_into(&mut out, b"plain");
        assert_eq!(&out[..], b"plain");
    }
}

/// Appends `value` as one element of an array literal (text input of an
/// array): always double-quoted, with `"` and `\` backslash-escaped, so
/// any text (commas, braces, whitespace, the word NULL) stays one element.
/// PostgreSQL reference: "Arrays", Array Value Input (arrays-input).
pub fn array_element_escape_into(value: &[u8], out: &mut BytesMut) {
    out.reserve(value.len() + 2);
    out.put_u8(b'"');
    let mut start = 0;
    for (i, &b) in value.iter().enumerate() {
        if b == b'"' || b == b'\\' {
            out.put_slice(&value[start..i]);
            out.put_u8(b'\\');
            out.put_u8(b);
            start = i + 1;
        }
    }
    out.put_slice(&value[start..]);
    out.put_u8(b'"');
}

#[cfg(test)]
mod array_tests {
    use super::*;

    #[test]
    fn array_elements_are_quoted_and_escaped() {
        let mut out = BytesMut::new();
        for v in [&b"a"[..], b"", b"x\"y", b"b\\s", b"{1,2}", b"NULL"] {
            array_element_escape_into(v, &mut out);
            out.put_u8(b',');
        }
        assert_eq!(&out[..], &br#""a","","x\"y","b\\s","{1,2}","NULL","#[..]);
    }
}
