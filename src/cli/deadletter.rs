//! `tracely deadletter list|show|replay`: the DEADLETTER stream, where consumers copy the
//! messages they give up on, with headers naming where each came from and why.
//!
//! `replay` publishes a dead letter again on its original subject with `Tracely-Redrive-For`
//! naming the consumer that gave up, so every other consumer of the stream acks it unread (they
//! handled the original), and `tracely replay` skips it (it reads the original). The copy's
//! message id is derived from the original's stream and sequence and the consumer, so a replay
//! repeated within the stream's duplicate window is stored once.

use std::process::ExitCode;

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, message::StreamMessage, stream::Stream};
use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use schemas::headers;
use serde_json::Value;

use crate::config::{DeadletterCommand, DeadletterFilter};
use crate::startup::connect_nats;

const STREAM: &str = "DEADLETTER";
/// Reasons are cut to this many characters in the list.
const REASON_WIDTH: usize = 60;

pub async fn run(command: DeadletterCommand) -> anyhow::Result<ExitCode> {
    match command {
        DeadletterCommand::List {
            filter,
            limit,
            nats,
        } => {
            let stream = open(&nats.nats_url).await?;
            let letters = newest(&stream, &filter, limit).await?;
            print_list(&letters);
            Ok(ExitCode::SUCCESS)
        }
        DeadletterCommand::Show { seq, nats } => {
            let stream = open(&nats.nats_url).await?;
            let letter = get(&stream, seq).await?;
            print_letter(&letter);
            Ok(ExitCode::SUCCESS)
        }
        DeadletterCommand::Replay {
            seqs,
            filter,
            all,
            dry_run,
            keep,
            nats,
        } => {
            let filtered =
                filter.consumer.is_some() || filter.stream.is_some() || filter.kind.is_some();
            if seqs.is_empty() && !filtered && !all {
                bail!("name the dead letters to re-drive: give their sequences, a filter (--consumer, --stream, --kind) or --all");
            }
            let client = connect_nats(&nats.nats_url).await?;
            let js = jetstream::new(client);
            let stream = js
                .get_stream(STREAM)
                .await
                .context("opening the DEADLETTER stream")?;
            let letters = if seqs.is_empty() {
                newest(&stream, &filter, usize::MAX).await?
            } else {
                let mut letters = Vec::with_capacity(seqs.len());
                for seq in seqs {
                    let letter = get(&stream, seq).await?;
                    if !letter.matches(&filter) {
                        bail!("dead letter {seq} does not match the filters given");
                    }
                    letters.push(letter);
                }
                letters
            };
            if letters.is_empty() {
                println!("no dead letters match");
                return Ok(ExitCode::SUCCESS);
            }
            print_list(&letters);
            if dry_run {
                println!(
                    "\ndry run: {} would be re-driven; nothing changed",
                    letters.len()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let mut failed = 0;
            for letter in &letters {
                match redrive(&js, &stream, letter, keep).await {
                    Ok(stored) => println!(
                        "re-drove {} to {} for {}{}",
                        letter.seq,
                        letter.subject,
                        letter.consumer,
                        if stored {
                            ""
                        } else {
                            " (already re-driven; stored once)"
                        }
                    ),
                    Err(e) => {
                        failed += 1;
                        eprintln!("could not re-drive {}: {e:#}", letter.seq);
                    }
                }
            }
            println!(
                "\n{} re-driven{}, {failed} failed",
                letters.len() - failed,
                if keep {
                    " and kept"
                } else {
                    " and deleted from DEADLETTER"
                }
            );
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// One dead letter, with what its headers say.
struct Letter {
    seq: u64,
    at: DateTime<Utc>,
    /// The original's subject, stream and sequence.
    subject: String,
    stream: String,
    stream_seq: String,
    consumer: String,
    delivered: String,
    kind: String,
    reason: String,
    message: StreamMessage,
}

impl Letter {
    fn from_message(message: StreamMessage) -> Letter {
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        Letter {
            seq: message.sequence,
            at: DateTime::from_timestamp(message.time.unix_timestamp(), message.time.nanosecond())
                .unwrap_or_default(),
            subject: header(headers::DEADLETTER_SUBJECT),
            stream: header(headers::DEADLETTER_STREAM),
            stream_seq: header(headers::DEADLETTER_SEQUENCE),
            consumer: header(headers::DEADLETTER_CONSUMER),
            delivered: header(headers::DEADLETTER_DELIVERED),
            kind: header(headers::DEADLETTER_KIND),
            reason: header(headers::DEADLETTER_REASON),
            message,
        }
    }

    fn matches(&self, filter: &DeadletterFilter) -> bool {
        let is =
            |wanted: &Option<String>, value: &str| wanted.as_deref().is_none_or(|w| w == value);
        // `evaluate` stands for every partition's consumer, `evaluate-3` for one.
        let consumer = filter.consumer.as_deref().is_none_or(|w| {
            w == self.consumer
                || (w == consumers::topology::EVALUATE
                    && consumers::topology::evaluate_partition(&self.consumer).is_some())
        });
        consumer && is(&filter.stream, &self.stream) && is(&filter.kind, &self.kind)
    }
}

async fn open(url: &str) -> anyhow::Result<Stream> {
    let js = jetstream::new(connect_nats(url).await?);
    js.get_stream(STREAM)
        .await
        .context("opening the DEADLETTER stream (has Tracely started against this NATS?)")
}

async fn get(stream: &Stream, seq: u64) -> anyhow::Result<Letter> {
    let message = stream.get_raw_message(seq).await.with_context(|| {
        format!("no dead letter {seq} (re-driven and deleted, or past the stream's max age?)")
    })?;
    Ok(Letter::from_message(message))
}

/// Up to `limit` matching dead letters, the newest that match, oldest first.
async fn newest(
    stream: &Stream,
    filter: &DeadletterFilter,
    limit: usize,
) -> anyhow::Result<Vec<Letter>> {
    let state = stream.get_info().await.context("reading DEADLETTER")?.state;
    let mut letters = Vec::new();
    if state.messages == 0 {
        return Ok(letters);
    }
    let mut seq = state.last_sequence;
    while seq >= state.first_sequence && letters.len() < limit {
        // Gaps are dead letters already re-driven and deleted.
        if let Ok(message) = stream.get_raw_message(seq).await {
            let letter = Letter::from_message(message);
            if letter.matches(filter) {
                letters.push(letter);
            }
        }
        if seq == 0 {
            break;
        }
        seq -= 1;
    }
    letters.reverse();
    Ok(letters)
}

/// Publishes the letter again for its consumer; `false` when the stream had it already.
async fn redrive(
    js: &jetstream::Context,
    stream: &Stream,
    letter: &Letter,
    keep: bool,
) -> anyhow::Result<bool> {
    if letter.subject.is_empty() || letter.consumer.is_empty() {
        bail!("it carries no original subject or consumer");
    }
    let mut out = HeaderMap::new();
    for (name, values) in letter.message.headers.iter() {
        let name_text: &str = name.as_ref();
        if name_text.starts_with("Tracely-Original-")
            || name_text.starts_with("Tracely-Reason")
            || [
                headers::DEADLETTER_CONSUMER,
                headers::DEADLETTER_DELIVERED,
                "Nats-Msg-Id",
            ]
            .contains(&name_text)
        {
            continue;
        }
        for value in values {
            out.append(name.clone(), value.clone());
        }
    }
    out.insert(headers::REDRIVE_FOR, letter.consumer.as_str());
    out.insert(headers::REDRIVE_OF, letter.seq.to_string().as_str());
    let id = format!(
        "redrive:{}:{}:{}",
        letter.stream, letter.stream_seq, letter.consumer
    );
    out.insert("Nats-Msg-Id", id.as_str());
    let ack = js
        .publish_with_headers(letter.subject.clone(), out, letter.message.payload.clone())
        .await
        .context("publishing")?
        .await
        .context("waiting for the stream to store it")?;
    if !keep {
        stream
            .delete_message(letter.seq)
            .await
            .context("deleting it from DEADLETTER after re-driving it")?;
    }
    Ok(!ack.duplicate)
}

fn print_list(letters: &[Letter]) {
    if letters.is_empty() {
        println!("no dead letters");
        return;
    }
    println!(
        "{:>8}  {:<20}  {:<9}  {:<18}  {:>5}  {:<40}  reason",
        "seq", "dead-lettered (UTC)", "consumer", "original", "tries", "subject"
    );
    for l in letters {
        println!(
            "{:>8}  {:<20}  {:<9}  {:<18}  {:>5}  {:<40}  {}: {}",
            l.seq,
            l.at.format("%Y-%m-%d %H:%M:%S"),
            l.consumer,
            format!("{}:{}", l.stream, l.stream_seq),
            l.delivered,
            l.subject,
            l.kind,
            cut(&l.reason, REASON_WIDTH)
        );
    }
}

fn print_letter(l: &Letter) {
    println!("dead letter {} (stored {})", l.seq, l.at.to_rfc3339());
    println!(
        "  original   {} seq {} on {}",
        l.stream, l.stream_seq, l.subject
    );
    println!(
        "  consumer   {} (delivered {} times)",
        l.consumer, l.delivered
    );
    println!("  reason     {}: {}", l.kind, l.reason);
    println!("headers:");
    for (name, values) in l.message.headers.iter() {
        for value in values {
            println!("  {}: {}", AsRef::<str>::as_ref(name), value.as_str());
        }
    }
    println!("payload ({} bytes):", l.message.payload.len());
    println!("{}", describe_payload(&l.message.payload));
}

/// JSON as it is, readable text as text, MessagePack as JSON, anything else as hex.
fn describe_payload(payload: &[u8]) -> String {
    if let Ok(json) = serde_json::from_slice::<Value>(payload) {
        return serde_json::to_string_pretty(&json).unwrap_or_default();
    }
    // Checked before MessagePack, where almost any byte string decodes as something.
    if let Ok(text) = std::str::from_utf8(payload) {
        if text
            .chars()
            .all(|c| !c.is_control() || c == '\n' || c == '\t')
        {
            return text.to_owned();
        }
    }
    if let Ok(value) = rmp_serde::from_slice::<Value>(payload) {
        return format!(
            "(MessagePack)\n{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    }
    let hex: Vec<String> = payload
        .iter()
        .take(512)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "(binary) {}{}",
        hex.join(" "),
        if payload.len() > 512 { " …" } else { "" }
    )
}

fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width - 1).collect();
    cut.push('…');
    cut
}
