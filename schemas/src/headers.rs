//! Header names shared by publishers, consumers and the dead-letter tooling.

/// Set to `application/json` to publish a JSON body; anything else (or nothing) means
/// MessagePack.
pub const CONTENT_TYPE: &str = "Content-Type";
pub const JSON_CONTENT_TYPE: &str = "application/json";
pub const MSGPACK_CONTENT_TYPE: &str = "application/msgpack";

/// Why a message was dead-lettered, in words.
pub const DEADLETTER_REASON: &str = "Tracely-Reason";
/// Machine-readable class of the failure (`decode`, `invalid`, `subject`, `max_deliver`, ...).
pub const DEADLETTER_KIND: &str = "Tracely-Reason-Kind";
pub const DEADLETTER_SUBJECT: &str = "Tracely-Original-Subject";
pub const DEADLETTER_STREAM: &str = "Tracely-Original-Stream";
pub const DEADLETTER_SEQUENCE: &str = "Tracely-Original-Sequence";
pub const DEADLETTER_CONSUMER: &str = "Tracely-Consumer";
pub const DEADLETTER_DELIVERED: &str = "Tracely-Delivered";

/// On a message `tracely deadletter replay` published again: the one consumer it is for.
/// Every other consumer of the stream acks it unread, since it handled the original.
pub const REDRIVE_FOR: &str = "Tracely-Redrive-For";
/// On a re-driven message: the DEADLETTER sequence it came from.
pub const REDRIVE_OF: &str = "Tracely-Redrive-Of";

/// On a backfilled incident transition: `true` asks `notify` to notify it like a live one
/// (`tracely replay --notify`). Backfills are not notified otherwise.
pub const NOTIFY_BACKFILL: &str = "Tracely-Notify";
