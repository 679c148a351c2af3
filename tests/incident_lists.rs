//! Lists stay fast: with 100,000 incidents, every filter of `GET /api/incidents` is served by
//! an index, for the page and for its total. Timings are in the `incident_lists` benchmark.

#[path = "fixtures/seed.rs"]
mod seed;
mod support;

use schemas::{IncidentStatus, Severity};
use serde_json::Value;
use store::incidents::{IncidentFilter, DEFAULT_SORT};
use store::Page;
use support::Stack;
use uuid::Uuid;

/// Every scan and sort node in a plan, as (node type, relation or index).
fn scans(plan: &Value, found: &mut Vec<(String, String)>) {
    let node = plan["Node Type"].as_str().unwrap_or_default();
    if node.contains("Scan") || node.contains("Sort") {
        let target = plan["Index Name"]
            .as_str()
            .or(plan["Relation Name"].as_str())
            .unwrap_or_default();
        found.push((node.to_owned(), target.to_owned()));
    }
    for child in plan["Plans"].as_array().into_iter().flatten() {
        scans(child, found);
    }
}

#[tokio::test]
async fn every_incident_filter_is_served_by_an_index() {
    let stack = Stack::start().await;
    let pool = stack.pool().await;
    store::migrate(&pool).await.unwrap();
    seed::seed_incidents(&pool, 100_000)
        .await
        .expect("seeding incidents");
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM incidents")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total, 100_000);

    let fixture_id = |name: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Uuid>("SELECT md5($1)::uuid")
                .bind(name)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let rule = fixture_id("rule7").await;
    let department = fixture_id("department3").await;
    let filters = [
        (
            "status",
            IncidentFilter {
                status: Some(IncidentStatus::Open),
                ..Default::default()
            },
        ),
        (
            "severity",
            IncidentFilter {
                severity: Some(Severity::Critical),
                ..Default::default()
            },
        ),
        (
            "service_id",
            IncidentFilter {
                service_id: Some("svc-42".into()),
                ..Default::default()
            },
        ),
        (
            "rule_id",
            IncidentFilter {
                rule_id: Some(rule),
                ..Default::default()
            },
        ),
        (
            "department_id",
            IncidentFilter {
                department_id: Some(department),
                ..Default::default()
            },
        ),
        (
            "from/to",
            IncidentFilter {
                from: Some("2026-02-01T00:00:00Z".parse().unwrap()),
                to: Some("2026-02-02T00:00:00Z".parse().unwrap()),
                ..Default::default()
            },
        ),
        (
            "search",
            IncidentFilter {
                search: Some("svc-421".into()),
                ..Default::default()
            },
        ),
        (
            "status+service_id",
            IncidentFilter {
                status: Some(IncidentStatus::Closed),
                service_id: Some("svc-42".into()),
                ..Default::default()
            },
        ),
    ];
    for (name, filter) in &filters {
        let plans = store::incidents::list_plans(&pool, filter, DEFAULT_SORT, Page::default())
            .await
            .unwrap();
        // A quarter of all rows have each severity; counting that many, Postgres rightly reads
        // the table rather than the index. The page itself must still come off an index.
        let checked = if *name == "severity" { 1 } else { 2 };
        for (which, plan) in ["page", "total"].iter().zip(&plans).take(checked) {
            let mut found = Vec::new();
            scans(&plan[0]["Plan"], &mut found);
            assert!(
                !found.is_empty() && found.iter().all(|(node, _)| node != "Seq Scan"),
                "the {which} query filtered by {name} scans the table: {found:?}\n{plan:#}"
            );
            // The page comes off its index already in order; only a trigram search, which
            // finds rows anywhere, sorts what it found.
            if *which == "page" && *name != "search" {
                assert!(
                    found.iter().all(|(node, _)| !node.contains("Sort")),
                    "the page filtered by {name} is sorted after the scan: {found:?}\n{plan:#}"
                );
            }
        }
    }
    // Unfiltered, the newest page comes straight off the opened_at index.
    let [page, _] = store::incidents::list_plans(
        &pool,
        &IncidentFilter::default(),
        DEFAULT_SORT,
        Page::default(),
    )
    .await
    .unwrap();
    let mut found = Vec::new();
    scans(&page[0]["Plan"], &mut found);
    assert!(
        found
            .iter()
            .all(|(node, _)| node != "Seq Scan" && !node.contains("Sort")),
        "the unfiltered page scans the table: {found:?}"
    );
}
