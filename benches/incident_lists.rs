//! How fast `GET /api/incidents` lists are with 100,000 incidents: p50 and p99 of the store's
//! list (the page and its total) for each filter, against the same query with index scans
//! disabled in the same run; then the same for `GET /api/search` answered by Postgres (the page
//! with its highlights, the total and the facets). Starts its own Postgres (durable settings)
//! in a temp directory.
//!
//! Run with `cargo bench --bench incident_lists`.

#[path = "../tests/fixtures/seed.rs"]
mod seed;

use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use store::incidents::{IncidentFilter, DEFAULT_SORT};
use store::search::SearchQuery;
use store::Page;
use tracely::devstack::Postgres;

/// `cargo test --all-targets` runs this without `--bench`: then a small smoke run checks that
/// the benchmark still works, and its figures mean nothing.
fn scale() -> (i32, usize) {
    if std::env::args().any(|a| a == "--bench") {
        (100_000, 200)
    } else {
        (2_000, 5)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let postgres = Postgres::start(&dir.path().join("postgres"), false).await?;
    let url = postgres.create_database("bench").await?;
    let pool = PgPool::connect(&url).await?;
    store::migrate(&pool).await?;
    let (incidents, rounds) = scale();
    eprintln!("seeding {incidents} incidents…");
    seed::seed_incidents(&pool, incidents).await?;
    let options: PgConnectOptions = url.parse()?;
    let no_index = PgPoolOptions::new()
        // A search runs its page and its facets side by side.
        .max_connections(2)
        .connect_with(options.options([
            ("enable_indexscan", "off"),
            ("enable_bitmapscan", "off"),
            ("enable_indexonlyscan", "off"),
        ]))
        .await?;

    let filters = seed::filters(&pool).await?;

    println!("| filter | p50 ms | p99 ms | p50 without indexes ms | speed-up |");
    println!("|---|---:|---:|---:|---:|");
    for (name, filter) in &filters {
        let indexed = time(&pool, filter, rounds).await?;
        let scanned = time(&no_index, filter, rounds).await?;
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.0}× |",
            ms(indexed.0),
            ms(indexed.1),
            ms(scanned.0),
            scanned.0.as_secs_f64() / indexed.0.as_secs_f64()
        );
    }

    println!();
    println!("| search | hits | p50 ms | p99 ms | p50 without indexes ms | speed-up |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, query) in searches() {
        let hits = store::search::postgres::search(&pool, &query).await?.total;
        let indexed = time_search(&pool, &query, rounds).await?;
        let scanned = time_search(&no_index, &query, rounds).await?;
        println!(
            "| {name} | {hits} | {:.2} | {:.2} | {:.2} | {:.0}× |",
            ms(indexed.0),
            ms(indexed.1),
            ms(scanned.0),
            scanned.0.as_secs_f64() / indexed.0.as_secs_f64()
        );
    }
    pool.close().await;
    no_index.close().await;
    postgres.stop().await
}

/// p50 and p99 of listing the first page with its total, after a warm-up.
async fn time(
    pool: &PgPool,
    filter: &IncidentFilter,
    rounds: usize,
) -> anyhow::Result<(Duration, Duration)> {
    for _ in 0..rounds.min(10) {
        store::incidents::list(pool, filter, DEFAULT_SORT, Page::default()).await?;
    }
    let mut took = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        store::incidents::list(pool, filter, DEFAULT_SORT, Page::default()).await?;
        took.push(started.elapsed());
    }
    took.sort();
    Ok((took[rounds / 2], took[rounds * 99 / 100]))
}

/// Searches from narrow to everything, with and without words, on the first page of 50.
fn searches() -> Vec<(&'static str, SearchQuery)> {
    let words = |q: &str| SearchQuery {
        q: q.into(),
        limit: 50,
        ..Default::default()
    };
    vec![
        ("a service's id", words("svc-423")),
        (
            "a service's id, status=CLOSED",
            SearchQuery {
                status: Some(schemas::IncidentStatus::Closed),
                ..words("svc-423")
            },
        ),
        ("a value", words("314")),
        ("a phrase", words("\"rule 22\"")),
        (
            "a word of every incident, service_id",
            SearchQuery {
                service_id: Some("svc-42".into()),
                ..words("latency")
            },
        ),
        ("a word of every incident", words("latency")),
        ("no words", words("")),
        (
            "no words, service_id",
            SearchQuery {
                service_id: Some("svc-42".into()),
                ..words("")
            },
        ),
    ]
}

/// p50 and p99 of a search, after a warm-up.
async fn time_search(
    pool: &PgPool,
    query: &SearchQuery,
    rounds: usize,
) -> anyhow::Result<(Duration, Duration)> {
    for _ in 0..rounds.min(10) {
        store::search::postgres::search(pool, query).await?;
    }
    let mut took = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        store::search::postgres::search(pool, query).await?;
        took.push(started.elapsed());
    }
    took.sort();
    Ok((took[rounds / 2], took[rounds * 99 / 100]))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
