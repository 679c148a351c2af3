//! Sending one attempt of a delivery over HTTP, within the timeout, to a target the policy
//! allows, and classifying how it went.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderValue, CONTENT_TYPE, USER_AGENT};
use store::channels::{Channel, ChannelKind};
use store::targets::{self, TargetError, TargetPolicy, Url};

use super::payload;
use super::NotifyConfig;

/// Most of a failed response's body kept in the delivery log.
const RESPONSE_EXCERPT: usize = 512;

/// How an attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub outcome: Outcome,
    pub status_code: Option<u16>,
    pub latency: Duration,
    /// What went wrong, with an excerpt of the response when there was one.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The target answered with a status that may pass (408, 429, 5xx).
    HttpError,
    /// The target answered with a status retrying cannot fix (other 4xx, 3xx).
    Rejected,
    Timeout,
    Network,
    /// The policy forbids the target.
    Refused,
}

impl Outcome {
    /// As the delivery log spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::HttpError | Outcome::Rejected => "http_error",
            Outcome::Timeout => "timeout",
            Outcome::Network => "network",
            Outcome::Refused => "refused",
        }
    }

    /// Whether another attempt could go differently.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Outcome::HttpError | Outcome::Timeout | Outcome::Network
        )
    }
}

/// An HTTP client that refuses, at connection time, host names resolving to addresses the
/// policy forbids, and follows no redirects (a redirect could lead anywhere).
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    policy: TargetPolicy,
}

impl Sender {
    pub fn new(config: &NotifyConfig) -> Sender {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve the host itself, past the address checks.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver {
                policy: config.targets,
            }))
            .build()
            .expect("the HTTP client configuration is valid");
        Sender {
            client,
            policy: config.targets,
        }
    }

    /// Sends `body` (the webhook body's exact bytes) to the channel, as its kind wants it.
    pub async fn send(
        &self,
        channel: &Channel,
        delivery_id: uuid::Uuid,
        attempt: i32,
        body: &str,
    ) -> Attempt {
        let started = Instant::now();
        let failed = |outcome, error: String| Attempt {
            outcome,
            status_code: None,
            latency: started.elapsed(),
            error: Some(error),
        };
        let Some(url) = channel.url.as_deref() else {
            return failed(Outcome::Refused, "the channel has no URL".to_owned());
        };
        let url = match targets::parse(url) {
            Ok(url) => url,
            Err(e) => return failed(Outcome::Refused, e.to_string()),
        };
        if let Some(addr) = targets::literal_address(&url) {
            if let Err(e) = targets::check_address(&addr.to_string(), addr, self.policy) {
                return failed(Outcome::Refused, e.to_string());
            }
        }
        let payload = match channel.kind {
            ChannelKind::Slack => match serde_json::from_str::<payload::Body>(body) {
                Ok(parsed) => payload::slack_message(&parsed).to_string(),
                Err(e) => return failed(Outcome::Refused, format!("unreadable body: {e}")),
            },
            _ => body.to_owned(),
        };
        let mut request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(USER_AGENT, concat!("tracely/", env!("CARGO_PKG_VERSION")))
            .header(payload::IDEMPOTENCY_HEADER, delivery_id.to_string())
            .header(payload::ATTEMPT_HEADER, attempt.to_string());
        if let Some(secret) = &channel.secret {
            request = request.header(
                payload::SIGNATURE_HEADER,
                payload::signature(secret, payload.as_bytes()),
            );
        }
        let response = match request.body(payload).send().await {
            Ok(response) => response,
            Err(e) => {
                let outcome = classify_error(&e);
                // The URL may carry a token (Slack's do); the log shows only the target.
                return failed(outcome, error_chain(&e.without_url()));
            }
        };
        let status = response.status();
        let code = status.as_u16();
        if status.is_success() {
            // Read (and drop) the body so the connection can be reused.
            let _ = response.bytes().await;
            return Attempt {
                outcome: Outcome::Ok,
                status_code: Some(code),
                latency: started.elapsed(),
                error: None,
            };
        }
        let excerpt = response
            .text()
            .await
            .map(|t| t.chars().take(RESPONSE_EXCERPT).collect::<String>())
            .unwrap_or_default();
        let outcome = if code == 408 || code == 429 || status.is_server_error() {
            Outcome::HttpError
        } else {
            Outcome::Rejected
        };
        Attempt {
            outcome,
            status_code: Some(code),
            latency: started.elapsed(),
            error: Some(if excerpt.is_empty() {
                format!("HTTP {code}")
            } else {
                format!("HTTP {code}: {excerpt}")
            }),
        }
    }
}

/// Where a URL points, without the path or query, which may carry a token (Slack's do).
pub fn target_of(url: Option<&str>) -> String {
    match url.and_then(|u| Url::parse(u).ok()) {
        Some(url) => match url.port() {
            Some(port) => format!(
                "{}://{}:{port}",
                url.scheme(),
                url.host_str().unwrap_or_default()
            ),
            None => format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default()),
        },
        None => "in_app".to_owned(),
    }
}

fn classify_error(e: &reqwest::Error) -> Outcome {
    if find_source::<TargetError>(e).is_some() {
        Outcome::Refused
    } else if e.is_timeout() {
        Outcome::Timeout
    } else {
        Outcome::Network
    }
}

fn find_source<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        current = err.source();
    }
    None
}

/// The error and its causes on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut current = e.source();
    while let Some(err) = current {
        text.push_str(": ");
        text.push_str(&err.to_string());
        current = err.source();
    }
    text
}

/// Resolves host names and refuses those with an address the policy forbids.
struct GuardedResolver {
    policy: TargetPolicy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            if !policy.allow_private
                && (host.eq_ignore_ascii_case("localhost") || host.ends_with(".localhost"))
            {
                return Err(Box::new(TargetError::Private {
                    host,
                    addr: std::net::Ipv4Addr::LOCALHOST.into(),
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for addr in &addrs {
                targets::check_address(&host, addr.ip(), policy)
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}
