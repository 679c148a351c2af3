//! Live announcements to dashboards (see `schemas::live`), made once a change is committed.
//! Best effort: a dashboard refetches whenever its event stream reconnects, so a lost
//! announcement only delays a refresh.

use schemas::live;
use serde::Serialize;

/// Publishes one announcement on core NATS; a failure is only logged.
pub async fn announce<T: Serialize>(client: &async_nats::Client, subject: String, what: &T) {
    if let Err(e) = client.publish(subject, live::encode(what).into()).await {
        tracing::debug!(error = %e, "could not make a live announcement");
    }
}

/// Announces services newly registered.
pub async fn services_registered(client: &async_nats::Client, ids: &[String]) {
    for id in ids {
        let registered = live::ServiceRegistered { id: id.clone() };
        announce(client, live::SERVICES.to_owned(), &registered).await;
    }
}
