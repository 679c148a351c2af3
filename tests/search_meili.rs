//! Search against a real Meilisearch. These run when `MEILI_URL` is set (with
//! `MEILI_MASTER_KEY` if it needs one) or a `meilisearch` binary is on PATH (or `MEILI_BIN`),
//! and say loudly that they were skipped otherwise. No stand-in server is ever used.
//!
//! The binary has its own `main` (no test harness), so what it prints, the skip included, is
//! always shown by `cargo test`.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use store::search::meili::{Meili, MeiliConfig};
use support::{eventually, publish, sample, App, Stack};
use tracely::config::Role;
use tracely::devstack::MeiliServer;

/// Where the tests' Meilisearch is.
enum Server {
    /// Configured outside; it cannot be stopped by the tests.
    External { url: String, key: Option<String> },
    /// A `meilisearch` binary the tests start, one server per test.
    Binary(std::path::PathBuf),
}

type Case = fn(&'static Server) -> Pin<Box<dyn Future<Output = ()>>>;

fn main() -> std::process::ExitCode {
    let server = if let Some(url) = std::env::var("MEILI_URL").ok().filter(|u| !u.is_empty()) {
        Server::External {
            url,
            key: std::env::var("MEILI_MASTER_KEY")
                .ok()
                .filter(|k| !k.is_empty()),
        }
    } else if let Some(bin) = MeiliServer::binary().filter(|b| b.is_file()) {
        Server::Binary(bin)
    } else {
        println!(
            "\nsearch_meili: SKIPPED all Meilisearch integration tests: no `meilisearch` binary \
             on PATH (or MEILI_BIN) and MEILI_URL is not set. Search against Postgres is tested \
             by tests/integration/search_postgres.rs.\n"
        );
        return std::process::ExitCode::SUCCESS;
    };
    let server: &'static Server = Box::leak(Box::new(server));
    let cases: &[(&str, Case)] = &[
        ("an_opened_incident_is_searchable_within_two_seconds", |s| {
            Box::pin(an_opened_incident_is_searchable_within_two_seconds(s))
        }),
        ("typos_filters_facets_and_comments", |s| {
            Box::pin(typos_filters_facets_and_comments(s))
        }),
        ("the_index_catches_up_after_meilisearch_was_down", |s| {
            Box::pin(the_index_catches_up_after_meilisearch_was_down(s))
        }),
        ("reindex_restores_every_document", |s| {
            Box::pin(reindex_restores_every_document(s))
        }),
    ];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut failed = 0;
    for (name, case) in cases {
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(case(server))
        }));
        match outcome {
            Ok(()) => println!(
                "test {name} ... ok ({:.1} s)",
                started.elapsed().as_secs_f64()
            ),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!(
        "search_meili: {} passed, {failed} failed",
        cases.len() - failed
    );
    if failed > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// A private stack and Tracely with Meilisearch; the index is unique to the test.
struct Setup {
    stack: Stack,
    app: App,
    meili: Meili,
    config: MeiliConfig,
    /// Set when the test started its own server.
    server: Option<MeiliServer>,
}

async fn setup(server: &Server) -> Setup {
    let stack = Stack::start().await;
    let index = format!("incidents_test_{}", uuid::Uuid::new_v4().simple());
    let (config, own) = match server {
        Server::External { url, key } => (
            MeiliConfig {
                url: url.clone(),
                key: key.clone(),
                index,
            },
            None,
        ),
        Server::Binary(bin) => {
            let own = MeiliServer::start(bin, &stack.path().join("meili"))
                .await
                .expect("starting meilisearch");
            (own.config(&index), Some(own))
        }
    };
    let mut settings = stack.settings(&Role::ALL);
    settings.meili = Some(config.clone());
    let app = App::start_with(settings).await;
    let meili = Meili::from_config(&config).unwrap();
    app.rule(json!({"metric_type": "LATENCY_MS", "operator": ">", "threshold": 150, "severity": "HIGH", "name": "Paycell timeout"}))
        .await;
    app.rule(json!({"metric_type": "ERROR_RATE", "operator": ">", "threshold": 5, "severity": "LOW", "name": "Error burst"}))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Setup {
        stack,
        app,
        meili,
        config,
        server: own,
    }
}

impl Setup {
    /// Stops Tracely and deletes the test's index, so a shared server keeps nothing.
    async fn finish(self) {
        self.app.stop().await;
        let _ = self.meili.delete_index().await;
    }
}

async fn search(app: &App, query: &str) -> Value {
    let (status, body) = app.get(&format!("/api/search?{query}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["meta"]["engine"], "meilisearch", "{body}");
    body
}

fn ids(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn postgres_ids(app: &App) -> Vec<uuid::Uuid> {
    let mut ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM incidents")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    ids.sort_unstable();
    ids
}

async fn an_opened_incident_is_searchable_within_two_seconds(server: &Server) {
    let s = setup(server).await;
    let js = s.stack.js().await;
    publish(
        &js,
        &[sample(
            "paycell",
            "LATENCY_MS",
            420.0,
            "2026-11-23T10:00:00Z",
        )],
    )
    .await;
    let incident = eventually("the incident", Duration::from_secs(10), || async {
        s.app.incidents("").await.first().cloned()
    })
    .await;
    let recorded = Instant::now();
    let found = eventually(
        "the incident in search",
        Duration::from_secs(10),
        || async {
            let body = search(&s.app, "q=paycell").await;
            (!ids(&body).is_empty()).then_some(body)
        },
    )
    .await;
    assert!(
        recorded.elapsed() < Duration::from_secs(2),
        "searchable {:?} after it was recorded",
        recorded.elapsed()
    );
    assert_eq!(ids(&found), [incident["id"].as_str().unwrap()]);
    s.finish().await;
}

async fn typos_filters_facets_and_comments(server: &Server) {
    let s = setup(server).await;
    let js = s.stack.js().await;
    publish(
        &js,
        &[
            sample("paycell", "LATENCY_MS", 420.0, "2026-11-23T10:00:00Z"),
            sample("ledger", "LATENCY_MS", 300.0, "2026-11-23T10:00:00Z"),
            sample("ledger", "ERROR_RATE", 9.0, "2026-11-23T10:00:00Z"),
        ],
    )
    .await;
    eventually("three documents", Duration::from_secs(15), || async {
        (s.meili.count().await.ok()? == 3).then_some(())
    })
    .await;

    // A typo in each word still finds "Paycell timeout".
    let body = search(&s.app, "q=paycel%20timout").await;
    let hits = body["data"].as_array().unwrap();
    assert!(!hits.is_empty(), "{body}");
    assert_eq!(hits[0]["rule_name"], "Paycell timeout");
    assert!(hits[0]["highlights"].to_string().contains("<mark>"));

    // Facets count every hit; filters narrow them.
    let all = search(&s.app, "q=").await;
    assert_eq!(all["meta"]["total"], 3);
    assert_eq!(all["meta"]["facets"]["service_id"]["ledger"], 2);
    assert_eq!(all["meta"]["facets"]["severity"]["HIGH"], 2);
    assert_eq!(all["meta"]["facets"]["severity"]["LOW"], 1);
    assert_eq!(all["meta"]["facets"]["status"]["OPEN"], 3);
    let low = search(&s.app, "q=&severity=LOW").await;
    assert_eq!(low["meta"]["total"], 1);
    assert_eq!(low["data"][0]["service_id"], "ledger");
    let ledger = search(&s.app, "q=&service_id=ledger&severity=HIGH").await;
    assert_eq!(ledger["meta"]["total"], 1);
    let none = search(&s.app, "q=&from=2030-01-01T00:00:00Z").await;
    assert_eq!(none["meta"]["total"], 0);
    let before = search(&s.app, "q=&to=2030-01-01T00:00:00Z&status=OPEN").await;
    assert_eq!(before["meta"]["total"], 3);
    let closed = search(&s.app, "q=&status=CLOSED").await;
    assert_eq!(closed["meta"]["total"], 0);
    let (status, dept) = s
        .app
        .post("/api/departments", &json!({"name": "Payments"}))
        .await;
    assert_eq!(status, 201, "{dept}");
    let unowned = search(
        &s.app,
        &format!("q=&department_id={}", dept["data"]["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(unowned["meta"]["total"], 0);

    // A comment's text becomes searchable.
    let id = ids(&search(&s.app, "q=paycell").await)[0].clone();
    let (status, body) = s
        .app
        .post(
            &format!("/api/incidents/{id}/comments"),
            &json!({"body": "the upstream gateway rebooted at noon"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let found = eventually("the comment in search", Duration::from_secs(10), || async {
        let body = search(&s.app, "q=gateway%20rebooted").await;
        (ids(&body) == [id.clone()]).then_some(body)
    })
    .await;
    assert!(found["data"][0]["highlights"]["comments"]
        .as_str()
        .unwrap()
        .contains("<mark>"));
    s.finish().await;
}

async fn the_index_catches_up_after_meilisearch_was_down(server: &Server) {
    if matches!(server, Server::External { .. }) {
        println!(
            "the_index_catches_up_after_meilisearch_was_down: SKIPPED with MEILI_URL: the test \
             must stop and start the server itself"
        );
        return;
    }
    let mut s = setup(server).await;
    let own = s.server.as_mut().unwrap();
    own.shut_down().await.unwrap();
    let js = s.stack.js().await;
    let samples: Vec<_> = (0..50)
        .map(|i| {
            sample(
                &format!("svc-{i:02}"),
                "LATENCY_MS",
                400.0,
                "2026-11-23T10:00:00Z",
            )
        })
        .collect();
    publish(&js, &samples).await;
    eventually(
        "50 incidents in Postgres",
        Duration::from_secs(20),
        || async { (postgres_ids(&s.app).await.len() == 50).then_some(()) },
    )
    .await;
    let (_, ready) = s.app.get("/ready").await;
    assert_eq!(
        ready["checks"]["meilisearch"]["state"], "unavailable",
        "{ready}"
    );
    own.restart().await.unwrap();
    let expected = postgres_ids(&s.app).await;
    eventually(
        "the index to equal Postgres",
        Duration::from_secs(60),
        || async { (s.meili.ids().await.ok()? == expected).then_some(()) },
    )
    .await;
    assert_eq!(s.meili.count().await.unwrap(), 50);
    s.finish().await;
}

async fn reindex_restores_every_document(server: &Server) {
    let s = setup(server).await;
    let js = s.stack.js().await;
    let samples: Vec<_> = (0..20)
        .map(|i| {
            sample(
                &format!("svc-{i:02}"),
                "LATENCY_MS",
                400.0,
                "2026-11-23T10:00:00Z",
            )
        })
        .collect();
    publish(&js, &samples).await;
    let expected = eventually("20 incidents indexed", Duration::from_secs(20), || async {
        let ids = postgres_ids(&s.app).await;
        (ids.len() == 20 && s.meili.ids().await.ok()? == ids).then_some(ids)
    })
    .await;
    s.meili.clear().await.unwrap();
    assert_eq!(s.meili.count().await.unwrap(), 0);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tracely"));
    command
        .arg("reindex")
        .env("DATABASE_URL", &s.stack.database_url)
        .env("MEILI_URL", &s.config.url)
        .env("TRACELY_MEILI_INDEX", &s.config.index);
    if let Some(key) = &s.config.key {
        command.env("MEILI_MASTER_KEY", key);
    }
    let output = command.output().expect("running tracely reindex");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("reindexed 20 incidents"), "{stdout}");
    assert_eq!(s.meili.ids().await.unwrap(), expected);
    s.finish().await;
}
