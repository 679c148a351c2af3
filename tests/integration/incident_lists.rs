//! Lists stay fast: with 100,000 incidents, every filter of `GET /api/incidents` is served by
//! an index, for the page and for its total, and a typical search is served by the full-text
//! index. Timings are in the `incident_lists` benchmark.

use crate::support::Stack;
use serde_json::Value;
use store::incidents::DEFAULT_SORT;
use store::Page;

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
    crate::seed::seed_incidents(&pool, 100_000)
        .await
        .expect("seeding incidents");
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM incidents")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total, 100_000);

    let filters = crate::seed::filters(&pool)
        .await
        .expect("reading fixture ids");
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

/// Whether `plan` reads `relation` whole.
fn reads_whole(plan: &Value, relation: &str) -> bool {
    plan["Node Type"] == "Seq Scan" && plan["Relation Name"] == relation
        || plan["Plans"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|child| reads_whole(child, relation))
}

#[tokio::test]
async fn a_typical_search_is_served_by_the_full_text_index() {
    use store::search::SearchQuery;

    let stack = Stack::start().await;
    let pool = stack.pool().await;
    store::migrate(&pool).await.unwrap();
    crate::seed::seed_incidents(&pool, 100_000)
        .await
        .expect("seeding incidents");

    // One service's incidents, by a word of their text: 200 of the 100,000, all closed.
    let words = SearchQuery {
        q: "svc-423".into(),
        limit: 50,
        ..Default::default()
    };
    let closed = SearchQuery {
        status: Some(schemas::IncidentStatus::Closed),
        ..words.clone()
    };
    for (name, query) in [("words", &words), ("words+status", &closed)] {
        let plans = store::search::postgres::search_plans(&pool, query)
            .await
            .unwrap();
        for (which, plan) in ["page", "facets"].iter().zip(&plans) {
            let mut found = Vec::new();
            scans(&plan[0]["Plan"], &mut found);
            assert!(
                found.iter().any(|(node, index)| node == "Bitmap Index Scan"
                    && index == "incident_search_document_idx"),
                "the {which} query of a search by {name} does not use the GIN index: \
                 {found:?}\n{plan:#}"
            );
            for relation in ["incidents", "incident_search"] {
                assert!(
                    !reads_whole(&plan[0]["Plan"], relation),
                    "the {which} query of a search by {name} reads {relation} whole: \
                     {found:?}\n{plan:#}"
                );
            }
        }
    }
    // A filter that finds fewer rows than the words leads instead, still off an index.
    let service = SearchQuery {
        q: "latency".into(),
        service_id: Some("svc-42".into()),
        limit: 50,
        ..Default::default()
    };
    let plans = store::search::postgres::search_plans(&pool, &service)
        .await
        .unwrap();
    for (which, plan) in ["page", "facets"].iter().zip(&plans) {
        for relation in ["incidents", "incident_search"] {
            assert!(
                !reads_whole(&plan[0]["Plan"], relation),
                "the {which} query of a search in one service reads {relation} whole:\n{plan:#}"
            );
        }
    }

    // And the searches find what they should.
    let found = store::search::postgres::search(&pool, &words)
        .await
        .unwrap();
    assert_eq!(found.total, 200);
    assert_eq!(found.hits.len(), 50);
    assert_eq!(
        found.facets.service_id,
        [("svc-423".to_owned(), 200)].into()
    );
    for hit in &found.hits {
        assert_eq!(hit.service_id, "svc-423");
        assert_eq!(hit.highlights["title"], "rule 22 on <mark>svc-423</mark>");
    }
    let found = store::search::postgres::search(&pool, &closed)
        .await
        .unwrap();
    assert_eq!(found.total, 200);
    assert_eq!(found.facets.status, [("CLOSED".to_owned(), 200)].into());
    let found = store::search::postgres::search(&pool, &service)
        .await
        .unwrap();
    assert_eq!(found.total, 200);
}
