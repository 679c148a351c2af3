//! `/api/stream`: server-sent events that keep a dashboard live without polling. See
//! [`crate::live`] for where they come from.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::SelectAll;
use futures::StreamExt as _;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{Caller, Viewer};
use crate::error::ApiError;
use crate::extract::{service_id_list, Params};
use crate::live::points::Points;
use crate::live::{Hub, Live};
use crate::AppState;

/// Most services whose samples one stream carries.
pub const MAX_SERVICES: usize = 100;
/// How often gathered samples are sent as points.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Events held for a slow browser; beyond them events are dropped and it is told to refetch.
const BUFFER: usize = 256;
/// A browser that has had no room for events this long is let go.
const STUCK_AFTER: Duration = Duration::from_secs(30);
/// How often a stream checks that its key has not been revoked.
const KEY_RECHECK: Duration = Duration::from_secs(30);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stream))
}

/// Live updates as server-sent events, fed from NATS. Each event's data is one JSON object:
///
/// - `hello` `{at}`: sent first, and again whenever events may have been missed; refetch what
///   the page shows.
/// - `incident` `{id, service_id, kind}`: an incident changed, and Postgres has the change.
///   `kind` is `opened`, `updated`, `resolved`, `status_changed`, `severity_changed`,
///   `assigned`, `commented` or `comment_deleted`.
/// - `notification` `{id, department_id, incident_id}`: an in-app notification was created.
/// - `rules` `{id, change}`: a rule was `created`, `updated` or `deleted`.
/// - `service` `{id}`: a service was registered, on first sight of a sample.
/// - `points` `{points: [{service_id, metric_type, t, count, avg, min, max, last}], dropped}`:
///   samples of the services asked for, per series and second of event time, at most once a
///   second.
/// - `health`: the pipeline's health, as `GET /api/pipeline`, every 5 s.
///
/// A comment line is sent every 15 s to keep the connection open. Announcements are best
/// effort: a client that reconnects, or hears `hello` again, refetches. A browser that reads
/// too slowly misses events and hears `hello`; one that reads nothing for 30 s is let go, and
/// so is one whose key is revoked.
#[utoipa::path(get, path = "/stream", tag = "dashboard",
    params(("services" = Option<String>, Query,
        description = "Comma-separated service ids (at most 100) whose samples to send as points.")),
    responses(
        (status = 200, description = "An endless `text/event-stream`.", content_type = "text/event-stream", body = String),
        (status = 503, description = "This process serves as many streams as it may.")))]
pub async fn stream(
    caller: Caller<Viewer>,
    State(state): State<AppState>,
    mut params: Params,
) -> Result<Response, ApiError> {
    let raw = params.take::<String>("services")?.unwrap_or_default();
    let services = service_id_list(&raw, "services", 0, MAX_SERVICES)?;
    params.finish()?;
    let hub = state.live.clone();
    let permit = hub
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Unavailable {
            message: "this process serves as many event streams as it may; try again later"
                .to_owned(),
            details: json!([]),
        })?;
    let mut samples = SelectAll::new();
    for service in &services {
        let subject = format!("{}.{service}.*", schemas::subject::METRICS_PREFIX);
        let subscriber = hub
            .nats()
            .subscribe(subject)
            .await
            .map_err(|e| anyhow::anyhow!("subscribing to the samples of {service}: {e}"))?;
        samples.push(subscriber);
    }
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(feed(
        hub,
        state.pool.clone(),
        caller.0.key_id,
        samples,
        tx,
        permit,
    ));
    let events = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok::<_, Infallible>(event), rx))
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response();
    // Proxies must pass events on as they come; `Sse` already forbids caching.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Sends one browser its events until it goes away, its key is revoked or the process stops.
/// Nothing here waits on the browser: events it cannot take now are dropped and it is told to
/// refetch, and one that has taken nothing for [`STUCK_AFTER`] is let go.
async fn feed(
    hub: Arc<Hub>,
    pool: PgPool,
    key_id: Uuid,
    mut samples: SelectAll<async_nats::Subscriber>,
    tx: mpsc::Sender<Event>,
    _permit: OwnedSemaphorePermit,
) {
    let mut events = hub.subscribe();
    let mut out = Outbox::new(tx);
    out.offer(hello());
    if let Some(pipeline) = hub.pipeline() {
        out.offer(json_event("health", &*pipeline));
    }
    let mut points = Points::default();
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut recheck =
        tokio::time::interval_at(tokio::time::Instant::now() + KEY_RECHECK, KEY_RECHECK);
    loop {
        tokio::select! {
            () = hub.stop.cancelled() => return,
            () = out.tx.closed() => return,
            received = events.recv() => match received {
                Ok(Live::Resync) => out.missed = true,
                Ok(live) => out.offer(live_event(&live)),
                Err(RecvError::Lagged(_)) => out.missed = true,
                Err(RecvError::Closed) => return,
            },
            Some(message) = samples.next(), if !samples.is_empty() => {
                let content_type = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(schemas::headers::CONTENT_TYPE))
                    .map(|v| v.as_str());
                // Malformed samples are the evaluator's to dead-letter; a chart skips them.
                if let Ok(sample) = schemas::MetricSample::from_message(
                    message.subject.as_str(),
                    content_type,
                    &message.payload,
                ) {
                    points.add(&sample);
                }
            }
            _ = flush.tick() => {
                if out.stuck() {
                    tracing::debug!("ending an event stream whose browser stopped reading");
                    return;
                }
                out.resync();
                let (taken, dropped) = points.take();
                if !taken.is_empty() {
                    out.offer(json_event("points", &json!({ "points": taken, "dropped": dropped })));
                }
            }
            _ = recheck.tick() => {
                // A revoked key loses its stream; the browser's reconnect then gets 401.
                if let Ok(false) = store::api_keys::is_active(&pool, key_id).await {
                    return;
                }
            }
        }
    }
}

/// The events on their way to one browser.
struct Outbox {
    tx: mpsc::Sender<Event>,
    /// Events were dropped since the browser last heard `hello`.
    missed: bool,
    /// Since when the browser has had no room for events.
    full_since: Option<Instant>,
}

impl Outbox {
    fn new(tx: mpsc::Sender<Event>) -> Outbox {
        Outbox {
            tx,
            missed: false,
            full_since: None,
        }
    }

    fn offer(&mut self, event: Event) {
        match self.tx.try_send(event) {
            Ok(()) => self.full_since = None,
            Err(TrySendError::Full(_)) => {
                self.missed = true;
                self.full_since.get_or_insert_with(Instant::now);
            }
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// Tells the browser to refetch once it has room, if it missed events.
    fn resync(&mut self) {
        if self.missed && self.tx.try_send(hello()).is_ok() {
            self.missed = false;
            self.full_since = None;
        }
    }

    fn stuck(&self) -> bool {
        self.full_since
            .is_some_and(|since| since.elapsed() >= STUCK_AFTER)
    }
}

fn hello() -> Event {
    json_event("hello", &json!({ "at": chrono::Utc::now() }))
}

fn live_event(live: &Live) -> Event {
    match live {
        Live::Incident(changed) => json_event("incident", &**changed),
        Live::Notification(created) => json_event("notification", &**created),
        Live::Rules(changed) => json_event("rules", &**changed),
        Live::Service(registered) => json_event("service", &**registered),
        Live::Health(pipeline) => json_event("health", &**pipeline),
        Live::Resync => hello(),
    }
}

fn json_event<T: serde::Serialize + ?Sized>(name: &'static str, data: &T) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(data).expect("events are plain data"))
}
