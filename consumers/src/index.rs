//! The `index` consumer: keeps the Meilisearch index of incidents current.
//!
//! Every message on INCIDENTS (the pipeline's transitions and people's changes) names an
//! incident. A batch's incidents are read from Postgres as they are now, never taken from the
//! messages, so an old event replayed late cannot overwrite newer data. The documents are added
//! in one request, and the batch is acked only once Meilisearch's task has finished.
//!
//! - Meilisearch unreachable: the batch is retried with backoff (its ack deadline extended),
//!   and the rest of the backlog waits in the stream until it comes back.
//! - A task that failed for the server's reasons (disk, internal errors): retried like an
//!   outage. A batch Meilisearch refuses as invalid: tried again a few times, then document by
//!   document. A document that fails on its
//!   own can never be indexed, and its messages are dead-lettered with the reason.
//! - An incident not in Postgres yet: its messages are retried until `record` has written it,
//!   and dead-lettered only if `record` has handled them and the row is still missing.
//!
//! After a write, the same incidents are read again and any that changed meanwhile are
//! written again, so another writer's older state never stays in the index. The index's
//! settings are applied at start-up, before any document is loaded, and checked every minute.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use async_nats::jetstream;
use schemas::{IncidentActivity, IncidentTransition, TransitionKind};
use sqlx::PgPool;
use store::search::document::{self, SearchDocument};
use store::search::meili::{Meili, MeiliError, SyncError};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::is_transient_db_error;
use crate::jetstream::{
    ack_all, extend_ack_wait, retry_until_stopped, run_pull_loop, settle, BatchHandler,
    DeadLetters, Outcome, Rejection,
};
use crate::telemetry;
use crate::topology::{ConsumerSpec, Topology, INCIDENTS};

pub const CONSUMER: &str = "index";

/// Times Meilisearch may refuse a batch as invalid before its documents are tried one by one.
const TASK_ATTEMPTS: u32 = 3;
/// How long, in polls, a batch waits in place for `record` to write incidents it lacks.
const RECORD_POLLS: usize = 20;
const RECORD_POLL: std::time::Duration = std::time::Duration::from_millis(50);
/// How often renamed services and departments are looked for, and how far back each look
/// reaches past the previous one.
const RENAMES_CHECK: std::time::Duration = std::time::Duration::from_secs(15);
const RENAMES_OVERLAP_SECS: i64 = 10;
/// How often the index's settings are checked (and re-applied if the index was re-created).
const SETTINGS_CHECK: std::time::Duration = std::time::Duration::from_secs(60);

pub struct Indexer {
    js: jetstream::Context,
    pool: PgPool,
    meili: Meili,
    spec: ConsumerSpec,
    dead_letters: DeadLetters,
    settings_checked: std::time::Instant,
    renames_checked: std::time::Instant,
    /// Services and departments changed since this (database time) are looked for next.
    renames_since: Option<chrono::DateTime<chrono::Utc>>,
}

impl Indexer {
    pub fn new(js: jetstream::Context, pool: PgPool, meili: Meili, topology: &Topology) -> Indexer {
        Indexer {
            dead_letters: DeadLetters::new(js.clone(), CONSUMER),
            spec: topology.consumer(CONSUMER).clone(),
            js,
            pool,
            meili,
            settings_checked: std::time::Instant::now(),
            renames_checked: std::time::Instant::now(),
            renames_since: None,
        }
    }

    /// Applies the index settings (waiting for Meilisearch as long as it takes), then indexes
    /// until `shutdown` fires.
    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let meili = self.meili.clone();
        let applied = retry_until_stopped(
            CONSUMER,
            "settings",
            &shutdown,
            || meili.apply_settings(),
            || async {},
        )
        .await;
        if applied.is_none() {
            return Ok(());
        }
        tracing::info!(
            index = meili.index_uid(),
            "Meilisearch index settings applied"
        );
        let (js, spec) = (self.js.clone(), self.spec.clone());
        run_pull_loop(&js, INCIDENTS, CONSUMER, &spec, &shutdown, &mut self).await
    }

    async fn handle_batch(&self, batch: Vec<jetstream::Message>, shutdown: &CancellationToken) {
        // Which incident each message is about.
        let mut held: Vec<(jetstream::Message, Uuid)> = Vec::with_capacity(batch.len());
        for msg in batch {
            match incident_of(&msg.subject, &msg.payload) {
                Ok(id) => held.push((msg, id)),
                Err(reason) => {
                    let rejection = Rejection {
                        kind: "decode",
                        reason,
                    };
                    self.dead_letters.reject(&msg, &rejection).await;
                }
            }
        }
        if held.is_empty() {
            return;
        }
        let ids: Vec<Uuid> = held
            .iter()
            .map(|(_, id)| *id)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let messages: Vec<jetstream::Message> = held.iter().map(|(m, _)| m.clone()).collect();
        let pool = &self.pool;
        let Some(documents) = retry_until_stopped(
            CONSUMER,
            "read_documents",
            shutdown,
            || async {
                match document::for_incidents(pool, &ids).await {
                    Err(e) if is_transient_db_error(&e) => Err(e),
                    other => Ok(other),
                }
            },
            || extend_ack_wait(&messages),
        )
        .await
        else {
            return;
        };
        let documents: BTreeMap<Uuid, SearchDocument> = match documents {
            Ok(documents) => documents.into_iter().map(|d| (d.id, d)).collect(),
            Err(e) => {
                for (msg, _) in &held {
                    let rejection = Rejection {
                        kind: "database",
                        reason: e.to_string(),
                    };
                    self.dead_letters.reject(msg, &rejection).await;
                }
                return;
            }
        };
        let found: Vec<SearchDocument> = documents.values().cloned().collect();
        match self.upsert_with_retry(&found, &messages, shutdown).await {
            None => return,
            Some(Ok(())) => {}
            Some(Err(reason)) => {
                tracing::warn!(reason, "a batch failed to index; indexing one by one");
                let failed = self.upsert_one_by_one(&found, &messages, shutdown).await;
                let Some(failed) = failed else { return };
                let mut indexed = Vec::new();
                for (msg, id) in held {
                    match failed.get(&id) {
                        Some(reason) => {
                            let rejection = Rejection {
                                kind: "unindexable",
                                reason: reason.clone(),
                            };
                            self.dead_letters.reject(&msg, &rejection).await;
                        }
                        None => indexed.push((msg, id)),
                    }
                }
                self.finish(indexed, &documents, shutdown).await;
                return;
            }
        }
        self.finish(held, &documents, shutdown).await;
    }

    /// Checks what was written against Postgres (rewriting what changed meanwhile), then acks
    /// the messages whose incident was indexed; those whose incident is not in Postgres yet
    /// wait for `record`.
    async fn finish(
        &self,
        held: Vec<(jetstream::Message, Uuid)>,
        documents: &BTreeMap<Uuid, SearchDocument>,
        shutdown: &CancellationToken,
    ) {
        let messages: Vec<jetstream::Message> = held.iter().map(|(m, _)| m.clone()).collect();
        let sent: Vec<SearchDocument> = documents.values().cloned().collect();
        let meili = &self.meili;
        let verified = retry_until_stopped(
            CONSUMER,
            "verify",
            shutdown,
            || async {
                match meili.rewrite_changed(&self.pool, &sent).await {
                    Err(SyncError::Database(e)) if !is_transient_db_error(&e) => Ok(()),
                    Err(SyncError::Meili(MeiliError::Rejected(reason))) => {
                        tracing::warn!(
                            reason,
                            "a changed document was refused; its next change will index it"
                        );
                        Ok(())
                    }
                    Err(e) => Err(e),
                    Ok(_) => Ok(()),
                }
            },
            || extend_ack_wait(&messages),
        )
        .await;
        if verified.is_none() {
            return;
        }
        let mut done = Vec::with_capacity(held.len());
        let mut missing = Vec::new();
        for (msg, id) in held {
            if documents.contains_key(&id) {
                done.push(msg);
            } else {
                missing.push((msg, id));
            }
        }
        ack_all(CONSUMER, &done).await;
        telemetry::documents_indexed(documents.len());
        if missing.is_empty() {
            return;
        }
        // `record` reads the same messages: give it a moment before handing them back.
        let mut late = Vec::new();
        for _ in 0..RECORD_POLLS {
            tokio::time::sleep(RECORD_POLL).await;
            let ids: Vec<Uuid> = missing.iter().map(|(_, id)| *id).collect();
            if let Ok(found) = document::for_incidents(&self.pool, &ids).await {
                if found.len() == ids.len() {
                    late = found;
                    break;
                }
            }
        }
        if !late.is_empty() && self.meili.upsert(&late).await.is_ok() {
            let messages: Vec<jetstream::Message> = missing.into_iter().map(|(m, _)| m).collect();
            ack_all(CONSUMER, &messages).await;
            telemetry::documents_indexed(late.len());
            return;
        }
        for (msg, id) in missing {
            let outcome = self.unrecorded(&msg, id).await;
            settle(&msg, outcome, &self.spec, &self.dead_letters).await;
        }
    }

    /// Rewrites the documents of incidents whose service or department changed: a new display
    /// name or department name puts no message on INCIDENTS. The first look only notes the time.
    async fn refresh_renamed(&mut self) -> Result<(), SyncError> {
        let Some(since) = self.renames_since else {
            let (_, now) = document::touched_by_renames(&self.pool, chrono::Utc::now()).await?;
            self.renames_since = Some(now);
            return Ok(());
        };
        let (ids, now) = document::touched_by_renames(&self.pool, since).await?;
        for chunk in ids.chunks(1000) {
            let documents = document::for_incidents(&self.pool, chunk).await?;
            self.meili.upsert(&documents).await?;
            telemetry::documents_indexed(documents.len());
        }
        if !ids.is_empty() {
            tracing::info!(
                count = ids.len(),
                "rewrote documents of renamed services and departments"
            );
        }
        // A writer whose transaction began before `now` may commit after it: look back a little.
        self.renames_since = Some(now - chrono::TimeDelta::seconds(RENAMES_OVERLAP_SECS));
        Ok(())
    }

    async fn unrecorded(&self, msg: &jetstream::Message, id: Uuid) -> Outcome {
        let Ok(info) = msg.info() else {
            return Outcome::Retry;
        };
        if crate::record::has_handled(&self.js, info.stream_sequence).await != Some(true) {
            return Outcome::Retry;
        }
        match store::incidents::get(&self.pool, id).await {
            Ok(None) => Outcome::Poison(Rejection {
                kind: "unrecorded",
                reason: format!(
                    "incident {id} is not in Postgres although record has handled stream \
                     sequence {}",
                    info.stream_sequence
                ),
            }),
            _ => Outcome::Retry,
        }
    }

    /// Upserts, retrying while Meilisearch is unavailable. `Some(Err)` when it keeps refusing
    /// the documents as invalid.
    async fn upsert_with_retry(
        &self,
        documents: &[SearchDocument],
        messages: &[jetstream::Message],
        shutdown: &CancellationToken,
    ) -> Option<Result<(), String>> {
        let task_failures = std::sync::atomic::AtomicU32::new(0);
        retry_until_stopped(
            CONSUMER,
            "meilisearch",
            shutdown,
            || async {
                match self.meili.upsert(documents).await {
                    Ok(()) => Ok(Ok(())),
                    // A failed task may be the server's passing trouble: try it again a few
                    // times before blaming the data.
                    Err(MeiliError::Rejected(reason)) => {
                        let failures = task_failures.fetch_add(1, Ordering::Relaxed) + 1;
                        if failures >= TASK_ATTEMPTS {
                            Ok(Err(reason))
                        } else {
                            Err(MeiliError::Rejected(reason))
                        }
                    }
                    Err(e @ MeiliError::Unavailable(_)) => Err(e),
                }
            },
            || extend_ack_wait(messages),
        )
        .await
    }

    /// Upserts each document on its own; returns those that failed, with the reason.
    async fn upsert_one_by_one(
        &self,
        documents: &[SearchDocument],
        messages: &[jetstream::Message],
        shutdown: &CancellationToken,
    ) -> Option<BTreeMap<Uuid, String>> {
        let mut failed = BTreeMap::new();
        for document in documents {
            let single = std::slice::from_ref(document);
            if let Err(reason) = self.upsert_with_retry(single, messages, shutdown).await? {
                failed.insert(document.id, reason);
            }
        }
        Some(failed)
    }
}

impl BatchHandler for Indexer {
    async fn handle(&mut self, batch: Vec<jetstream::Message>, shutdown: &CancellationToken) {
        self.handle_batch(batch, shutdown).await;
    }

    async fn tick(&mut self, _shutdown: &CancellationToken) {
        if self.renames_checked.elapsed() >= RENAMES_CHECK {
            self.renames_checked = std::time::Instant::now();
            if let Err(e) = self.refresh_renamed().await {
                tracing::warn!(error = %e, "refreshing renamed services' and departments' incidents failed; will try again");
            }
        }
        if self.settings_checked.elapsed() < SETTINGS_CHECK {
            return;
        }
        self.settings_checked = std::time::Instant::now();
        match self.meili.settings_current().await {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                // Deleted and re-created with defaults, say: filters and facets would fail.
                if let Err(e) = self.meili.apply_settings().await {
                    tracing::warn!(error = %e, "re-applying the index settings failed; will try again");
                } else {
                    tracing::info!("re-applied the index settings");
                }
            }
        }
    }
}

/// The incident a message on INCIDENTS is about.
fn incident_of(subject: &str, payload: &[u8]) -> Result<Uuid, String> {
    let kind = subject.rsplit('.').next().unwrap_or_default();
    let is_transition = TransitionKind::ALL.iter().any(|k| k.as_str() == kind);
    if is_transition {
        IncidentTransition::from_msgpack(payload)
            .map(|t| t.incident.id)
            .map_err(|e| e.to_string())
    } else {
        IncidentActivity::from_msgpack(payload)
            .map(|a| a.incident_id)
            .map_err(|e| e.to_string())
    }
}
