//! The `notify` consumer: decides who hears about each incident event, and how.
//!
//! For an opened or resolved incident, or a status a person changed, it reads the incident from
//! Postgres (waiting for `record` to write it), finds the departments that hear about it (the
//! rule's own and its extra ones) and their enabled channels, and filters them by severity and
//! `send_resolved`. For each channel it records, in one transaction, a delivery item keyed on
//! (channel, event), so that an event redelivered or handled by two processes reaches a channel
//! once. A silence covering the event makes the delivery `suppressed`; an in-app channel gets
//! its notification row at once; webhook and Slack channels get a delivery (joining one that is
//! still collecting, when the channel groups) and a job on DELIVERIES for the sender. Once a
//! second it also makes the reminders of channels with a repeat interval.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use chrono::{DateTime, Utc};
use schemas::{
    live, ActivityKind, IncidentActivity, IncidentTransition, Severity, Source, TransitionKind,
};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use store::channels::{Channel, ChannelKind};
use store::deliveries::{self, DeliveryState, NewDelivery, NewItem};
use store::events::NOTIFIER_ACTOR;
use store::incidents::IncidentRecord;
use store::notifications::NewNotification;
use store::silences::SilenceMatch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::payload::{self, Event, EventKind, Incident};
use super::timeline;
use crate::error::is_transient_db_error;
use crate::jetstream::{run_pull_loop, settle, BatchHandler, DeadLetters, Outcome, Rejection};
use crate::telemetry;
use crate::topology::{ConsumerSpec, Topology, INCIDENTS};

pub const CONSUMER: &str = "notify";

/// How long, in polls, an event waits in place for `record` to write its incident before it is
/// handed back for a later delivery.
const RECORD_POLLS: usize = 20;
const RECORD_POLL: Duration = Duration::from_millis(50);
/// How often reminders are looked for, and most made per look.
const REMINDER_EVERY: Duration = Duration::from_secs(5);
const REMINDER_BATCH: i64 = 200;
/// How often deliveries whose job was lost are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

pub struct Notifier {
    js: jetstream::Context,
    pool: PgPool,
    spec: ConsumerSpec,
    dead_letters: DeadLetters,
    last_reminders: std::time::Instant,
    last_sweep: std::time::Instant,
    /// How late a delivery's next attempt must be before its job counts as lost: longer than
    /// any job can legitimately be held (the sender's ack wait).
    stall_after: Duration,
}

/// A webhook or Slack delivery that the sender must be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub delivery_id: Uuid,
    pub channel_id: Uuid,
}

/// What recording an event for one channel leaves to do once the transaction commits.
enum Routed {
    Nothing,
    /// Hand a webhook or Slack delivery to the sender.
    Send(Job),
    /// Tell dashboards about the in-app notification.
    InApp(live::NotificationCreated),
}

/// Tells dashboards about in-app notifications just committed.
async fn announce(client: &async_nats::Client, created: &[live::NotificationCreated]) {
    for notification in created {
        crate::announce::announce(client, live::NOTIFICATIONS.to_owned(), notification).await;
    }
}

/// Why an event could not be routed now.
#[derive(Debug, thiserror::Error)]
enum RouteError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("publishing a delivery job failed: {0}")]
    Publish(String),
}

impl Notifier {
    pub fn new(js: jetstream::Context, pool: PgPool, topology: &Topology) -> Notifier {
        Notifier {
            dead_letters: DeadLetters::new(js.clone(), CONSUMER),
            spec: topology.consumer(CONSUMER).clone(),
            js,
            pool,
            last_reminders: std::time::Instant::now(),
            last_sweep: std::time::Instant::now(),
            stall_after: Duration::from_secs(
                topology.consumer(super::deliver::CONSUMER).ack_wait_secs + 30,
            ),
        }
    }

    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (js, spec) = (self.js.clone(), self.spec.clone());
        run_pull_loop(&js, INCIDENTS, CONSUMER, &spec, &shutdown, &mut self).await
    }

    async fn handle_one(&self, msg: &jetstream::Message) -> Outcome {
        let notify_backfill = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(schemas::headers::NOTIFY_BACKFILL))
            .is_some_and(|v| v.as_str() == "true");
        let parsed = match parse(&msg.subject, &msg.payload, notify_backfill) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Outcome::Done,
            Err(reason) => {
                return Outcome::Poison(Rejection {
                    kind: "decode",
                    reason,
                })
            }
        };
        let incident = match self.recorded_incident(parsed.incident_id).await {
            Ok(Some(incident)) => incident,
            Ok(None) => return self.unrecorded(msg, parsed.incident_id).await,
            Err(e) => return db_outcome(e),
        };
        let event = parsed.event(&incident);
        match self.route(&incident, &event, &parsed.event_key).await {
            Ok(()) => Outcome::Done,
            Err(RouteError::Db(e)) => db_outcome(e),
            Err(e @ RouteError::Publish(_)) => {
                tracing::warn!(error = %e, "will retry routing");
                Outcome::Retry
            }
        }
    }

    /// The incident's row, waiting a moment for `record`, which reads the same message.
    async fn recorded_incident(&self, id: Uuid) -> Result<Option<IncidentRecord>, sqlx::Error> {
        for _ in 0..RECORD_POLLS {
            if let Some(incident) = store::incidents::get(&self.pool, id).await? {
                return Ok(Some(incident));
            }
            tokio::time::sleep(RECORD_POLL).await;
        }
        store::incidents::get(&self.pool, id).await
    }

    /// What to do about an event whose incident is not in Postgres. Normally `record` has not
    /// got to it yet, and it is retried, however long that takes (an outage of Postgres or of
    /// `record` must not drop notifications). Only once `record` has handled the message and
    /// the row is still missing, because `record` dead-lettered it, is it given up.
    async fn unrecorded(&self, msg: &jetstream::Message, incident_id: Uuid) -> Outcome {
        let Ok(info) = msg.info() else {
            return Outcome::Retry;
        };
        let sequence = info.stream_sequence;
        if crate::record::has_handled(&self.js, sequence).await != Some(true) {
            return Outcome::Retry;
        }
        match store::incidents::get(&self.pool, incident_id).await {
            Ok(Some(_)) => Outcome::Retry,
            Ok(None) => Outcome::Poison(Rejection {
                kind: "unrecorded",
                reason: format!(
                    "incident {incident_id} is not in Postgres although record has handled \
                     stream sequence {sequence}; see record's dead letters"
                ),
            }),
            Err(e) => db_outcome(e),
        }
    }

    /// Records the event for every channel that hears about it and hands webhook and Slack
    /// deliveries to the sender.
    async fn route(
        &self,
        incident: &IncidentRecord,
        event: &Event,
        event_key: &str,
    ) -> Result<(), RouteError> {
        let mut departments: Vec<Uuid> = incident.department_id.into_iter().collect();
        departments.extend(store::rules::extra_departments(&self.pool, incident.rule_id).await?);
        departments.sort_unstable();
        departments.dedup();
        if departments.is_empty() {
            telemetry::unrouted();
            return Ok(());
        }
        let channels = store::channels::enabled_for_departments(&self.pool, &departments).await?;
        let channels: Vec<Channel> = channels
            .into_iter()
            .filter(|c| wants(c, event.kind, incident.severity))
            .collect();
        if channels.is_empty() {
            return Ok(());
        }
        let names = department_names(&self.pool, &departments).await?;
        let mut jobs = Vec::new();
        let mut created = Vec::new();
        let mut tx = self.pool.begin().await?;
        for channel in &channels {
            let department = names
                .get(&channel.department_id)
                .map(String::as_str)
                .unwrap_or("a department");
            match route_to_channel(&mut tx, channel, department, incident, event, event_key).await?
            {
                Routed::Send(job) => jobs.push(job),
                Routed::InApp(notification) => created.push(notification),
                Routed::Nothing => {}
            }
        }
        tx.commit().await?;
        announce(&self.js.client(), &created).await;
        publish_jobs(&self.js, &jobs).await
    }

    /// Publishes the job again for deliveries nobody is working on although their next attempt
    /// is long due: the process that committed them died before publishing.
    async fn sweep(&self) -> Result<(), RouteError> {
        let stalled = deliveries::stalled(&self.pool, self.stall_after, REMINDER_BATCH).await?;
        if stalled.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            count = stalled.len(),
            "republishing jobs of stalled deliveries"
        );
        let jobs: Vec<Job> = stalled
            .into_iter()
            .map(|(delivery_id, channel_id)| Job {
                delivery_id,
                channel_id,
            })
            .collect();
        publish_jobs(&self.js, &jobs).await
    }

    /// Makes the reminders that are due.
    async fn remind(&self) -> Result<(), RouteError> {
        let due = deliveries::due_reminders(&self.pool, REMINDER_BATCH).await?;
        for reminder in due {
            let (Some(incident), Some(channel)) = (
                store::incidents::get(&self.pool, reminder.incident_id).await?,
                store::channels::get(&self.pool, reminder.channel_id).await?,
            ) else {
                continue;
            };
            let key = format!("{}:reminder:{}", incident.id, reminder.number);
            if !wants(&channel, EventKind::Reminder, incident.severity) {
                // Recorded as made so it is not looked at again.
                continue;
            }
            let names = department_names(&self.pool, &[channel.department_id]).await?;
            let department = names
                .get(&channel.department_id)
                .map(String::as_str)
                .unwrap_or("a department");
            let event = Event {
                kind: EventKind::Reminder,
                at: Utc::now(),
                actor: NOTIFIER_ACTOR.to_owned(),
                from: None,
                to: None,
                incident: Incident::from_record(&incident),
            };
            let mut tx = self.pool.begin().await?;
            let routed =
                route_to_channel(&mut tx, &channel, department, &incident, &event, &key).await?;
            tx.commit().await?;
            match routed {
                Routed::Send(job) => publish_jobs(&self.js, &[job]).await?,
                Routed::InApp(notification) => announce(&self.js.client(), &[notification]).await,
                Routed::Nothing => {}
            }
        }
        Ok(())
    }
}

impl BatchHandler for Notifier {
    async fn handle(&mut self, batch: Vec<jetstream::Message>, _shutdown: &CancellationToken) {
        for msg in batch {
            let outcome = self.handle_one(&msg).await;
            settle(&msg, outcome, &self.spec, &self.dead_letters).await;
        }
    }

    async fn tick(&mut self, _shutdown: &CancellationToken) {
        if self.last_reminders.elapsed() >= REMINDER_EVERY {
            self.last_reminders = std::time::Instant::now();
            if let Err(e) = self.remind().await {
                tracing::warn!(error = %e, "making reminders failed; will try again");
            }
        }
        if self.last_sweep.elapsed() >= SWEEP_EVERY {
            self.last_sweep = std::time::Instant::now();
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "looking for stalled deliveries failed; will try again");
            }
        }
    }
}

/// Whether the channel wants to hear about this kind of event at this severity.
fn wants(channel: &Channel, kind: EventKind, severity: Severity) -> bool {
    let rank = |s: Severity| match s {
        Severity::Critical => 4,
        Severity::High => 3,
        Severity::Medium => 2,
        Severity::Low => 1,
    };
    rank(severity) >= rank(channel.min_severity)
        && (kind != EventKind::Resolved || channel.send_resolved)
}

async fn department_names(
    pool: &PgPool,
    ids: &[Uuid],
) -> Result<BTreeMap<Uuid, String>, sqlx::Error> {
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, name FROM departments WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Records the event for one channel, once. Returns the job to publish for a webhook or Slack
/// delivery that is not finished, including one recorded by an earlier delivery of the event
/// whose job may not have been published, or the in-app notification it created.
async fn route_to_channel(
    tx: &mut PgConnection,
    channel: &Channel,
    department: &str,
    incident: &IncidentRecord,
    event: &Event,
    event_key: &str,
) -> Result<Routed, sqlx::Error> {
    let sent_out = channel.kind != ChannelKind::InApp;
    if let Some((delivery_id, state)) =
        deliveries::item_delivery(&mut *tx, channel.id, event_key).await?
    {
        if sent_out && !state.is_finished() {
            return Ok(Routed::Send(Job {
                delivery_id,
                channel_id: channel.id,
            }));
        }
        return Ok(Routed::Nothing);
    }
    let now = Utc::now();
    let event_json = serde_json::to_value(event).expect("events serialize");
    let silence = store::silences::covering(
        &mut *tx,
        &SilenceMatch {
            service_id: &incident.service_id,
            rule_id: incident.rule_id,
            department_id: channel.department_id,
            severity: incident.severity,
        },
        now,
    )
    .await?;
    let mut new_delivery = NewDelivery {
        id: Uuid::new_v4(),
        channel_id: channel.id,
        channel_kind: channel.kind.as_str(),
        channel_name: &channel.name,
        department_id: channel.department_id,
        service_id: &incident.service_id,
        state: DeliveryState::Grouping,
        silence_id: silence,
        due_at: now,
    };
    let mut joined = false;
    if silence.is_some() {
        new_delivery.state = DeliveryState::Suppressed;
    } else if !sent_out {
        new_delivery.state = DeliveryState::Delivered;
    } else if channel.group_wait.is_zero() {
        new_delivery.state = DeliveryState::Sending;
    } else {
        new_delivery.due_at =
            now + chrono::TimeDelta::from_std(channel.group_wait).unwrap_or_default();
    }
    if new_delivery.state == DeliveryState::Grouping {
        // Join the group collecting for this service, or open one. Opening loses to another
        // notifier opening the same group at the same moment; then that one is joined.
        let mut created = false;
        for _ in 0..3 {
            if let Some(group) =
                deliveries::open_group(&mut *tx, channel.id, &incident.service_id).await?
            {
                new_delivery.id = group;
                joined = true;
                break;
            }
            if deliveries::create(&mut *tx, &new_delivery).await? {
                created = true;
                break;
            }
        }
        if !joined && !created {
            // Groups opened and sealed under our feet three times: try the event again later.
            return Err(sqlx::Error::Protocol(
                "could not open or join a notification group".to_owned(),
            ));
        }
    } else {
        deliveries::create(&mut *tx, &new_delivery).await?;
    }
    let item = NewItem {
        channel_id: channel.id,
        event_key,
        delivery_id: new_delivery.id,
        incident_id: incident.id,
        kind: event.kind.as_str(),
        at: event.at,
        event: &event_json,
    };
    if !deliveries::add_item(&mut *tx, &item).await? {
        // Another notifier recorded it between our look and now.
        if !joined {
            deliveries::delete(&mut *tx, new_delivery.id).await?;
        }
        return Ok(Routed::Nothing);
    }
    let id = new_delivery.id;
    match new_delivery.state {
        DeliveryState::Suppressed => {
            let silence = silence.unwrap_or_default();
            timeline::write(
                &mut *tx,
                timeline::Entry {
                    kind: timeline::SUPPRESSED,
                    delivery_id: id,
                    incident_id: incident.id,
                    attempt: 0,
                    channel,
                    department,
                    data: json!({
                        "silence_id": silence,
                        "event": event.kind,
                        "summary": format!(
                            "notifying {department} via {} suppressed by silence {silence}",
                            kind_phrase(channel.kind)
                        ),
                    }),
                },
            )
            .await?;
            telemetry::notification(channel.kind.as_str(), "suppressed");
            Ok(Routed::Nothing)
        }
        DeliveryState::Delivered => {
            let notification = NewNotification {
                id,
                department_id: Some(channel.department_id),
                incident_id: Some(incident.id),
                kind: event.kind.as_str().to_owned(),
                severity: Some(incident.severity),
                title: payload::headline(event),
                body: payload::detail(event),
            };
            store::notifications::insert(&mut *tx, &notification).await?;
            deliveries::record_in_app_attempt(&mut *tx, id).await?;
            timeline::write(
                &mut *tx,
                timeline::Entry {
                    kind: timeline::NOTIFIED,
                    delivery_id: id,
                    incident_id: incident.id,
                    attempt: 1,
                    channel,
                    department,
                    data: json!({
                        "event": event.kind,
                        "outcome": "ok",
                        "summary": format!("notified {department} in app"),
                    }),
                },
            )
            .await?;
            telemetry::notification(channel.kind.as_str(), "delivered");
            Ok(Routed::InApp(live::NotificationCreated {
                id,
                department_id: Some(channel.department_id),
                incident_id: Some(incident.id),
            }))
        }
        // An item joining a group rides on the job its first item published.
        _ if joined => Ok(Routed::Nothing),
        _ => Ok(Routed::Send(Job {
            delivery_id: id,
            channel_id: channel.id,
        })),
    }
}

/// How a summary names a channel kind.
pub fn kind_phrase(kind: ChannelKind) -> &'static str {
    match kind {
        ChannelKind::InApp => "in-app notification",
        ChannelKind::Webhook => "webhook",
        ChannelKind::Slack => "Slack",
    }
}

/// Publishes jobs and waits for their PubAcks; the delivery id is the `Nats-Msg-Id`.
async fn publish_jobs(js: &jetstream::Context, jobs: &[Job]) -> Result<(), RouteError> {
    let mut acks = Vec::with_capacity(jobs.len());
    for job in jobs {
        let message = PublishMessage::build()
            .payload(job.delivery_id.to_string().into())
            .message_id(job.delivery_id.to_string());
        let ack = js
            .send_publish(
                schemas::subject::deliveries_subject(&job.channel_id),
                message,
            )
            .await
            .map_err(|e| RouteError::Publish(e.to_string()))?;
        acks.push(ack);
    }
    for ack in acks {
        ack.await.map_err(|e| RouteError::Publish(e.to_string()))?;
    }
    Ok(())
}

fn db_outcome(e: sqlx::Error) -> Outcome {
    if is_transient_db_error(&e) {
        Outcome::Retry
    } else {
        Outcome::Poison(Rejection {
            kind: "database",
            reason: e.to_string(),
        })
    }
}

/// An INCIDENTS message that may notify someone.
struct Parsed {
    incident_id: Uuid,
    kind: EventKind,
    at: DateTime<Utc>,
    actor: String,
    from: Option<String>,
    to: Option<String>,
    /// Identifies the event: one delivery item per channel and key.
    event_key: String,
    snapshot: Option<schemas::IncidentSnapshot>,
}

impl Parsed {
    fn event(&self, incident: &IncidentRecord) -> Event {
        let mut shown = Incident::from_record(incident);
        if let Some(snapshot) = &self.snapshot {
            shown.merge_snapshot(snapshot);
        }
        Event {
            kind: self.kind,
            at: self.at,
            actor: self.actor.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            incident: shown,
        }
    }
}

/// Reads a message; `Ok(None)` for messages that notify nobody (updates, backfills not marked
/// `notify_backfill`, other activity), `Err` with the reason for one that cannot be read.
fn parse(subject: &str, bytes: &[u8], notify_backfill: bool) -> Result<Option<Parsed>, String> {
    let kind = subject.rsplit('.').next().unwrap_or_default();
    if kind == ActivityKind::StatusChanged.as_str() {
        let activity = IncidentActivity::from_msgpack(bytes).map_err(|e| e.to_string())?;
        return Ok(Some(Parsed {
            incident_id: activity.incident_id,
            kind: EventKind::StatusChanged,
            at: activity.at,
            actor: activity.actor,
            from: activity.from,
            to: activity.to,
            event_key: activity.id.to_string(),
            snapshot: None,
        }));
    }
    if kind != TransitionKind::Opened.as_str() && kind != TransitionKind::Resolved.as_str() {
        return Ok(None);
    }
    let t = IncidentTransition::from_msgpack(bytes).map_err(|e| e.to_string())?;
    // Backfilled incidents are history, not news, unless the backfill asked otherwise.
    if t.incident.source == Source::Backfill && !notify_backfill {
        return Ok(None);
    }
    let kind = match t.kind {
        TransitionKind::Opened => EventKind::Opened,
        TransitionKind::Resolved => EventKind::Resolved,
        TransitionKind::Updated => return Ok(None),
    };
    Ok(Some(Parsed {
        incident_id: t.incident.id,
        kind,
        at: t.at,
        actor: store::events::PIPELINE_ACTOR.to_owned(),
        from: None,
        to: None,
        event_key: format!("{}:{}", t.incident.id, kind.as_str()),
        snapshot: Some(t.incident),
    }))
}
