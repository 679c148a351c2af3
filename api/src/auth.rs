//! API keys and roles. [`authenticate`] runs before every `/api` route: it finds the caller's
//! key from `Authorization: Bearer …`, rate-limits per key (and per client address whenever the
//! database must be asked about a key, or there is none), and answers 401 without a valid key. Handlers then state the least role they
//! need with the [`Caller`] extractor, which answers 403 to a weaker key.

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use store::api_keys::{ApiKeyRecord, Principal, Role};
use uuid::Uuid;

use crate::error::ApiError;
use crate::AppState;

/// Keys look like `trk_` followed by 64 hex digits (256 random bits).
const KEY_PREFIX: &str = "trk_";

/// How many requests a caller may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second, per key or per client address.
    pub per_second: NonZeroU32,
    /// Requests that may arrive at once above the sustained rate.
    pub burst: NonZeroU32,
}

/// How long a checked key is trusted without asking the database again; a key revoked in
/// another process stops working here within this time.
const KNOWN_FOR: Duration = Duration::from_secs(5);
/// Most keys remembered at once; beyond it the memory is cleared.
const MAX_KNOWN: usize = 10_000;

/// Shared authentication state: the rate limiter, keys recently checked, and keys waiting to
/// have their use recorded.
pub struct Auth {
    limiter: DefaultKeyedRateLimiter<String>,
    known: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
    used: Mutex<HashSet<Uuid>>,
}

impl Auth {
    pub fn new(limit: RateLimit) -> Auth {
        let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
        Auth {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            known: Mutex::new(HashMap::new()),
            used: Mutex::new(HashSet::new()),
        }
    }

    fn recall(&self, digest: &[u8; 32]) -> Option<Principal> {
        let known = self.known.lock().expect("known keys lock poisoned");
        known
            .get(digest)
            .filter(|(_, at)| at.elapsed() < KNOWN_FOR)
            .map(|(p, _)| p.clone())
    }

    fn remember(&self, digest: [u8; 32], principal: &Principal) {
        let mut known = self.known.lock().expect("known keys lock poisoned");
        if known.len() >= MAX_KNOWN {
            known.clear();
        }
        known.insert(digest, (principal.clone(), Instant::now()));
    }

    /// Forgets a key at once, as when it is revoked through this process.
    pub fn forget(&self, key_id: Uuid) {
        let mut known = self.known.lock().expect("known keys lock poisoned");
        known.retain(|_, (p, _)| p.key_id != key_id);
    }

    /// `Err(wait)` when the caller must wait before the next request.
    fn check(&self, caller: &str) -> Result<(), Duration> {
        self.limiter
            .check_key(&caller.to_owned())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Writes down which keys were used since the last call, and forgets idle callers.
    /// Called every few seconds, so a busy key costs no write per request.
    pub async fn flush(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        self.limiter.retain_recent();
        let used: Vec<Uuid> = self
            .used
            .lock()
            .expect("key usage lock poisoned")
            .drain()
            .collect();
        if used.is_empty() {
            return Ok(());
        }
        store::api_keys::touch(pool, &used).await
    }
}

/// A key just created: the secret is shown this once.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub record: ApiKeyRecord,
    /// The key itself, for `Authorization: Bearer`. It cannot be shown again.
    pub key: String,
}

/// Creates a key with a fresh random secret.
pub async fn create_key(pool: &PgPool, name: &str, role: Role) -> Result<CreatedKey, sqlx::Error> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).expect("the operating system's random source works");
    let key = format!("{KEY_PREFIX}{}", hex(&secret));
    let prefix = &key[..KEY_PREFIX.len() + 8];
    let record = store::api_keys::insert(pool, name, role, prefix, &digest(&key)).await?;
    Ok(CreatedKey { record, key })
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Authenticates and rate-limits an `/api` request; see the module docs.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let presented = bearer(&req).map(|key| key.map(str::to_owned));
    let ip = client_ip(&req);
    match identify(&state, presented, ip).await {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err(e) => axum::response::IntoResponse::into_response(e),
    }
}

async fn identify(
    state: &AppState,
    presented: Result<Option<String>, ApiError>,
    ip: String,
) -> Result<Principal, ApiError> {
    let presented = presented?;
    let digest = presented.as_deref().map(digest);
    let auth = &state.auth;
    let principal = match digest.and_then(|d| auth.recall(&d)) {
        Some(known) => Some(known),
        None => {
            // A key this process has not just seen: the client's address pays before the
            // database is asked, so guessing keys cannot flood the pool.
            auth.check(&format!("ip:{ip}")).map_err(rate_limited)?;
            match digest {
                Some(d) => {
                    let found = store::api_keys::find_active(&state.pool, &d).await?;
                    if let Some(p) = &found {
                        auth.remember(d, p);
                    }
                    found
                }
                None => None,
            }
        }
    };
    if let Some(p) = &principal {
        auth.check(&format!("key:{}", p.key_id))
            .map_err(rate_limited)?;
    }
    match (principal, presented) {
        (Some(p), _) => {
            state
                .auth
                .used
                .lock()
                .expect("key usage lock poisoned")
                .insert(p.key_id);
            Ok(p)
        }
        (None, Some(_)) => Err(ApiError::Unauthorized(
            "the API key is unknown or revoked".to_owned(),
        )),
        (None, None) => Err(ApiError::Unauthorized(
            "an API key is required: send Authorization: Bearer <key>".to_owned(),
        )),
    }
}

fn rate_limited(wait: Duration) -> ApiError {
    ApiError::RateLimited {
        retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
    }
}

/// The key in `Authorization: Bearer <key>`, if the header is there at all.
fn bearer(req: &Request) -> Result<Option<&str>, ApiError> {
    let Some(value) = req.headers().get(AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed =
        || ApiError::Unauthorized("the Authorization header must be `Bearer <key>`".to_owned());
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, key) = value.split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || key.trim().is_empty() {
        return Err(malformed());
    }
    Ok(Some(key.trim()))
}

fn client_ip(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The least role a handler needs.
pub trait MinRole {
    const ROLE: Role;
}

pub struct Viewer;
pub struct Operator;
pub struct Admin;

impl MinRole for Viewer {
    const ROLE: Role = Role::Viewer;
}
impl MinRole for Operator {
    const ROLE: Role = Role::Operator;
}
impl MinRole for Admin {
    const ROLE: Role = Role::Admin;
}

/// The authenticated caller, holding at least role `R`; otherwise the request gets 403.
pub struct Caller<R>(pub Principal, PhantomData<R>);

impl<R> Caller<R> {
    /// How the caller is named in timelines and comments.
    pub fn actor(&self) -> String {
        format!("key:{}", self.0.name)
    }
}

impl<R: MinRole, S: Send + Sync> FromRequestParts<S> for Caller<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("an API key is required".to_owned()))?;
        if principal.role < R::ROLE {
            return Err(ApiError::Forbidden(format!(
                "this needs the {} role; the key {:?} has {}",
                R::ROLE,
                principal.name,
                principal.role
            )));
        }
        Ok(Caller(principal, PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_by_power() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    }

    #[test]
    fn bearer_parsing_names_malformed_headers() {
        let with = |value: &str| {
            Request::builder()
                .header(AUTHORIZATION, value)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert_eq!(bearer(&with("Bearer trk_abc")).unwrap(), Some("trk_abc"));
        assert_eq!(bearer(&with("bearer  trk_abc ")).unwrap(), Some("trk_abc"));
        assert!(matches!(
            bearer(&with("Basic dXNlcg==")),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(
            bearer(&with("Bearer ")),
            Err(ApiError::Unauthorized(_))
        ));
    }

    #[test]
    fn a_burst_beyond_the_limit_is_told_how_long_to_wait() {
        let auth = Auth::new(RateLimit {
            per_second: NonZeroU32::new(1).unwrap(),
            burst: NonZeroU32::new(2).unwrap(),
        });
        assert!(auth.check("key:a").is_ok());
        assert!(auth.check("key:a").is_ok());
        let wait = auth.check("key:a").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(auth.check("key:b").is_ok(), "limits are per caller");
    }
}
