//! `ByteStr`: UTF-8 text that lives inside a shared `Bytes` buffer, so names
//! decoded from a replication message (schemas, tables, columns, message
//! prefixes, GIDs) are borrowed from the received frame instead of copied.
//!
//! Invariant: the bytes are valid UTF-8. Every constructor either validates or
//! starts from a `str`, which is what makes [`ByteStr::as_str`] sound.
//!
//! PostgreSQL reference: "Message Data Types" (protocol-message-types) for the
//! `String` type these names arrive as; pgrelay requires `client_encoding`
//! UTF8 on replication connections, so names are UTF-8 on the wire.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use bytes::Bytes;

/// UTF-8 text backed by `Bytes`.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteStr(Bytes);

impl ByteStr {
    /// Validates `bytes` as UTF-8 without copying them.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(ByteStr(bytes))
    }

    /// A `ByteStr` pointing at static text.
    pub const fn from_static(s: &'static str) -> Self {
        ByteStr(Bytes::from_static(s.as_bytes()))
    }

    /// The text.
    #[allow(unsafe_code)]
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor validates UTF-8 or starts from a `str`,
        // and the field is private and `Bytes` is immutable.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The underlying shared buffer.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Gives back the underlying shared buffer.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for ByteStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for ByteStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for ByteStr {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

// `Hash` must agree with `str`'s so `HashMap<ByteStr, _>` can be queried with
// a `&str` through `Borrow<str>`; `Bytes` hashes like `[u8]`, which differs.
impl Hash for ByteStr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Borrow<str> for ByteStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<String> for ByteStr {
    fn from(s: String) -> Self {
        ByteStr(Bytes::from(s))
    }
}

impl From<&'static str> for ByteStr {
    fn from(s: &'static str) -> Self {
        ByteStr::from_static(s)
    }
}

impl PartialEq<str> for ByteStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ByteStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn validates_without_copying() {
        let frame = Bytes::from_static(b"xxpublic\0");
        let name = ByteStr::from_utf8(frame.slice(2..8)).expect("utf8");
        assert_eq!(name, "public");
        assert_eq!(name.as_bytes().as_ptr(), frame[2..].as_ptr());
        let err = ByteStr::from_utf8(Bytes::from_static(b"ab\xff")).expect_err("invalid");
        assert_eq!(err.valid_up_to(), 2);
    }

    #[test]
    fn usable_as_str_key() {
        let mut m = HashMap::new();
        m.insert(ByteStr::from_static("gid-1"), 1);
        assert_eq!(m.get("gid-1"), Some(&1));
        assert_eq!(ByteStr::from(String::from("a")).to_string(), "a");
        assert_eq!(format!("{:?}", ByteStr::from("q\"")), "\"q\\\"\"");
    }
}
