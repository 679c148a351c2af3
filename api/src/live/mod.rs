//! Live updates for dashboards, fed from NATS.
//!
//! The [`Hub`] holds one set of NATS subscriptions per API process: the `tracely.live.…`
//! announcements that `evaluate` and `archive` (new services), `record` (incidents), `notify`
//! (in-app notifications) and the rule routes make once Postgres has a change, and people's
//! activity on the INCIDENTS stream, which the outbox relays only after it is committed. It fans them out to every open event stream. It also measures the pipeline's
//! health every few seconds ([`health`]). Each event stream subscribes on its own to the
//! samples of the services its page shows and sends them as per-second points ([`points`]).

pub mod health;
pub mod points;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::connection::State;
use async_nats::jetstream;
use futures::StreamExt as _;
use schemas::live::{
    self, IncidentChanged, NotificationCreated, RuleChange, RuleChanged, ServiceRegistered,
};
use schemas::{ActivityKind, IncidentActivity};
use sqlx::PgPool;
use tokio::sync::{broadcast, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use health::Pipeline;

/// Most event streams one process serves at once.
pub const MAX_STREAMS: usize = 1_000;
/// How often the pipeline's health is measured and sent.
pub const HEALTH_EVERY: Duration = Duration::from_secs(5);
/// How often the NATS connection is looked at, to tell pages to refetch after an outage.
const CONNECTION_CHECK: Duration = Duration::from_secs(1);
/// Events an event stream may fall behind by before it is told to refetch everything.
const BACKLOG: usize = 1_024;

/// One change to send to every event stream.
#[derive(Debug, Clone)]
pub enum Live {
    Incident(Arc<IncidentChanged>),
    Notification(Arc<NotificationCreated>),
    Rules(Arc<RuleChanged>),
    Service(Arc<ServiceRegistered>),
    Health(Arc<Pipeline>),
    /// Announcements may have been lost (NATS was disconnected): every page refetches.
    Resync,
}

/// A durable consumer whose backlog the health panel shows.
#[derive(Debug, Clone)]
pub struct WatchedConsumer {
    pub stream: String,
    pub name: String,
}

pub struct Hub {
    nats: async_nats::Client,
    consumers: Vec<WatchedConsumer>,
    events: broadcast::Sender<Live>,
    health: watch::Sender<Option<Arc<Pipeline>>>,
    /// Fires when the process stops, so event streams end and the server can shut down.
    pub stop: CancellationToken,
    /// One permit per open event stream.
    pub streams: Arc<Semaphore>,
}

impl Hub {
    pub fn new(
        nats: async_nats::Client,
        consumers: Vec<WatchedConsumer>,
        stop: CancellationToken,
    ) -> Arc<Hub> {
        Arc::new(Hub {
            nats,
            consumers,
            events: broadcast::channel(BACKLOG).0,
            health: watch::channel(None).0,
            stop,
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        })
    }

    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// The durable consumers whose backlog is measured.
    pub fn consumers(&self) -> &[WatchedConsumer] {
        &self.consumers
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Live> {
        self.events.subscribe()
    }

    /// The latest measurement of the pipeline's health, once there is one.
    pub fn pipeline(&self) -> Option<Arc<Pipeline>> {
        self.health.borrow().clone()
    }

    /// Announces a rule change to every API process, this one included. Best effort.
    pub async fn rule_changed(&self, id: Uuid, change: RuleChange) {
        let changed = RuleChanged { id, change };
        if let Err(e) = self
            .nats
            .publish(live::RULES, live::encode(&changed).into())
            .await
        {
            tracing::debug!(error = %e, "could not announce a rule change");
        }
    }

    /// Forwards announcements and measures health until the process stops.
    pub async fn run_until_stopped(
        self: Arc<Self>,
        js: jetstream::Context,
        pool: PgPool,
    ) -> anyhow::Result<()> {
        // Measuring waits on JetStream and Postgres; it must never hold up announcements.
        let (forwarded, ()) = tokio::join!(self.forward(), self.measure(js, pool));
        forwarded
    }

    async fn forward(&self) -> anyhow::Result<()> {
        let mut subscriptions = vec![self
            .nats
            .subscribe(format!("{}.>", live::PREFIX))
            .await
            .context("subscribing to live announcements")?];
        for kind in ActivityKind::ALL {
            let subject = format!("{}.*.{}", schemas::subject::INCIDENTS_PREFIX, kind.as_str());
            subscriptions.push(
                self.nats
                    .subscribe(subject)
                    .await
                    .context("subscribing to incident activity")?,
            );
        }
        let mut messages = futures::stream::select_all(subscriptions);
        let mut connected = true;
        let mut look = tokio::time::interval(CONNECTION_CHECK);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return Ok(()),
                message = messages.next() => {
                    let Some(message) = message else {
                        anyhow::bail!("the NATS subscriptions for live updates ended");
                    };
                    if let Some(event) = decode(&message) {
                        // No receivers is fine: nobody is watching.
                        let _ = self.events.send(event);
                    }
                }
                _ = look.tick() => {
                    // Announcements made while this process was cut off from NATS are lost:
                    // once it is back, every page refetches.
                    let now = self.nats.connection_state() == State::Connected;
                    if now && !connected {
                        let _ = self.events.send(Live::Resync);
                    }
                    connected = now;
                }
            }
        }
    }

    async fn measure(&self, js: jetstream::Context, pool: PgPool) {
        let mut meter = health::Meter::new(js, pool, self.consumers.clone());
        let mut every = tokio::time::interval(HEALTH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let pipeline = tokio::select! {
                () = self.stop.cancelled() => return,
                pipeline = meter.measure() => Arc::new(pipeline),
            };
            self.health.send_replace(Some(pipeline.clone()));
            let _ = self.events.send(Live::Health(pipeline));
        }
    }
}

/// Reads one announcement or activity message; anything else, or anything malformed, is
/// ignored, since dashboards refetch on their own.
fn decode(message: &async_nats::Message) -> Option<Live> {
    let subject = message.subject.as_str();
    let payload = &message.payload;
    if subject.starts_with(live::INCIDENTS) {
        return serde_json::from_slice(payload)
            .ok()
            .map(|c| Live::Incident(Arc::new(c)));
    }
    if subject == live::NOTIFICATIONS {
        return serde_json::from_slice(payload)
            .ok()
            .map(|n| Live::Notification(Arc::new(n)));
    }
    if subject == live::SERVICES {
        return serde_json::from_slice(payload)
            .ok()
            .map(|s| Live::Service(Arc::new(s)));
    }
    if subject == live::RULES {
        return serde_json::from_slice(payload)
            .ok()
            .map(|r| Live::Rules(Arc::new(r)));
    }
    if subject.starts_with(schemas::subject::INCIDENTS_PREFIX) {
        let activity = IncidentActivity::from_msgpack(payload).ok()?;
        return Some(Live::Incident(Arc::new(IncidentChanged {
            id: activity.incident_id,
            service_id: activity.service_id,
            kind: activity.kind.as_str().to_owned(),
        })));
    }
    None
}
