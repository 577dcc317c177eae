//! `Decoder`: the stateful front end that turns XLogData payloads into
//! [`Message`]s, tracking the two pieces of state the byte layout depends
//! on: whether we are inside a Stream Start/Stop block, and the relation
//! definitions row messages refer to.
//!
//! Invariants: state changes only after a message decoded successfully, so
//! a failed decode leaves the decoder as it was. Stream blocks do not nest;
//! transaction-framing messages (Begin, Commit, the prepare family, Stream
//! Commit/Abort/Prepare) never appear inside a block; Stream Stop never
//! appears outside one. Violations are reported as decode errors at offset 0
//! because they mean the sequence, not a byte, is wrong.
//!
//! PostgreSQL reference: "Logical Replication Message Formats"
//! (protocol-logicalrep-message-formats) and "Logical Streaming Replication
//! Protocol" (protocol-logical-replication), "Streaming of Large
//! Transactions for Logical Decoding" (logicaldecoding-streaming).

use bytes::Bytes;
use pgrelay_types::{Oid, RelationInfo, Xid};
use std::sync::Arc;

use crate::error::{DecodeError, DecodeErrorKind};
use crate::message::{self, DecoderConfig, Message};
use crate::relation_cache::RelationCache;

/// Stateful pgoutput decoder for one replication connection.
#[derive(Debug, Clone)]
pub struct Decoder {
    config: DecoderConfig,
    relations: RelationCache,
    stream: Option<Xid>,
}

impl Decoder {
    /// A decoder for a stream started with these options.
    pub fn new(config: DecoderConfig) -> Self {
        Decoder {
            config,
            relations: RelationCache::new(),
            stream: None,
        }
    }

    /// The options this decoder was configured with.
    pub fn config(&self) -> DecoderConfig {
        self.config
    }

    /// Top-level xid of the open Stream Start block, if any.
    pub fn stream_xid(&self) -> Option<Xid> {
        self.stream
    }

    /// The relation definitions known so far.
    pub fn relations(&self) -> &RelationCache {
        &self.relations
    }

    /// The definition row messages outside stream blocks would use.
    pub fn relation(&self, oid: Oid) -> Option<&Arc<RelationInfo>> {
        self.relations.get(oid, None)
    }

    /// Decodes one XLogData payload and updates the stream state.
    pub fn decode(&mut self, payload: &Bytes) -> Result<Message, DecodeError> {
        let msg = message::decode(payload, &self.config, self.stream, &self.relations)?;
        let unexpected = |context| {
            Err(DecodeError::new(
                msg.name(),
                0,
                DecodeErrorKind::UnexpectedMessage {
                    message: msg.name(),
                    context,
                },
            ))
        };
        match (&msg, self.stream) {
            (Message::Relation(r), stream) => {
                self.relations.insert(r.relation.clone(), stream);
            }
            (Message::StreamStart(s), None) => self.stream = Some(s.xid),
            (Message::StreamStart(s), Some(open)) => {
                return Err(DecodeError::new(
                    msg.name(),
                    0,
                    DecodeErrorKind::NestedStream { xid: s.xid, open },
                ))
            }
            (Message::StreamStop, Some(_)) => self.stream = None,
            (Message::StreamStop, None) => return unexpected("outside a stream block"),
            (
                Message::Begin(_)
                | Message::Commit(_)
                | Message::BeginPrepare(_)
                | Message::Prepare(_)
                | Message::CommitPrepared(_)
                | Message::RollbackPrepared(_)
                | Message::StreamCommit(_)
                | Message::StreamAbort(_)
                | Message::StreamPrepare(_),
                Some(_),
            ) => return unexpected("inside a stream block"),
            (Message::StreamCommit(c), None) => self.relations.commit_stream(c.xid),
            (Message::StreamPrepare(p), None) => self.relations.commit_stream(p.xid),
            (Message::StreamAbort(a), None) if a.xid == a.subxid => {
                self.relations.abort_stream(a.xid)
            }
            _ => {}
        }
        Ok(msg)
    }
}
