//! Frontend (client-to-server) messages a replication client sends while in
//! COPY BOTH mode: CopyData ('d') wrapping status updates, and CopyDone
//! ('c') to end streaming cleanly. Everything else a client sends (startup,
//! authentication, Query) is covered by `postgres-protocol`.
//!
//! Invariants: each function appends exactly one complete message to the
//! destination buffer; payloads larger than the protocol's `Int32` length can
//! express are refused instead of being written with a wrapped length.
//!
//! PostgreSQL reference: "Message Formats" (protocol-message-formats),
//! CopyData (F & B) and CopyDone (F & B).

use bytes::{BufMut, BytesMut};

/// A payload too large for one protocol message (`Int32` length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot send a {len}-byte CopyData message: the protocol limit is 2 GiB; this is a pgrelay \
     bug, report it"
)]
pub struct MessageTooLarge {
    /// Size of the payload that did not fit.
    pub len: usize,
}

impl MessageTooLarge {
    /// The same payload never fits: fatal.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// Appends a CopyData message carrying `body`; writes nothing if `body` is
/// too large for a protocol message.
pub fn copy_data(body: &[u8], dst: &mut BytesMut) -> Result<(), MessageTooLarge> {
    let len = body
        .len()
        .checked_add(4)
        .and_then(|l| i32::try_from(l).ok())
        .ok_or(MessageTooLarge { len: body.len() })?;
    dst.reserve(body.len() + 5);
    dst.put_u8(b'd');
    dst.put_i32(len);
    dst.put_slice(body);
    Ok(())
}

/// Appends a CopyDone message.
pub fn copy_done(dst: &mut BytesMut) {
    dst.put_slice(b"c\x00\x00\x00\x04");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StandbyStatusUpdate;
    use pgrelay_types::{Lsn, PgTimestamp};

    #[test]
    fn wraps_status_update() {
        let mut body = BytesMut::new();
        StandbyStatusUpdate {
            write: Lsn(1),
            flush: Lsn(1),
            apply: Lsn(1),
            client_time: PgTimestamp(0),
            reply_requested: false,
        }
        .encode(&mut body);
        let mut dst = BytesMut::new();
        assert_eq!(copy_data(&body, &mut dst), Ok(()));
        assert_eq!(&dst[..5], b"d\x00\x00\x00\x26");
        assert_eq!(&dst[5..], &body[..]);
        copy_done(&mut dst);
        assert_eq!(&dst[39..], b"c\x00\x00\x00\x04");
    }
}
