//! `GET /api/search` answered by Postgres full-text search, the engine used when no Meilisearch
//! is configured: words, stems and web-search syntax, every filter, facets over all pages,
//! pagination, HTML-safe highlights, comments and service names that change, and the
//! documented lack of typo tolerance. Incidents are opened through the pipeline.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::{decode, eventually, publish, sample, App, KeyRole, Stack};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// The incidents every test searches, by the name the tests give them.
struct World {
    /// paycell GATEWAY_TIMEOUTS, "Gateway timeouts", HIGH, 1 March.
    a: String,
    /// checkout GATEWAY_TIMEOUTS, "Gateway timeouts", HIGH, 2 March.
    b: String,
    /// checkout LATENCY_MS, "Slow checkout", CRITICAL, department Payments, 3 March.
    c: String,
    /// paycell LATENCY_MS, "Slow checkout", CRITICAL, department Payments, 4 March.
    e: String,
    /// video-edge-1 … 6 BUFFER_RATIO, "Rebuffering", MEDIUM, 5 March, a minute apart, oldest
    /// first.
    edges: Vec<String>,
    department: String,
}

/// Three rules and ten incidents, published in event-time order.
async fn world(stack: &Stack, app: &App) -> World {
    let (status, department) = app
        .post("/api/departments", &json!({"name": "Payments"}))
        .await;
    assert_eq!(status, 201, "{department}");
    let department = department["data"]["id"].as_str().unwrap().to_owned();
    app.rule(
        json!({"name": "Gateway timeouts", "metric_type": "GATEWAY_TIMEOUTS",
                    "operator": ">", "threshold": 5, "severity": "HIGH"}),
    )
    .await;
    app.rule(
        json!({"name": "Slow checkout", "metric_type": "LATENCY_MS", "operator": ">",
                    "threshold": 150, "severity": "CRITICAL", "department_id": department}),
    )
    .await;
    app.rule(
        json!({"name": "Rebuffering", "metric_type": "BUFFER_RATIO", "operator": ">",
                    "threshold": 6, "severity": "MEDIUM"}),
    )
    .await;
    // Rule changes reach the evaluator within a second.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut samples = vec![
        sample("paycell", "GATEWAY_TIMEOUTS", 9.0, "2026-03-01T10:00:00Z"),
        sample("checkout", "GATEWAY_TIMEOUTS", 7.0, "2026-03-02T10:00:00Z"),
        sample("checkout", "LATENCY_MS", 300.0, "2026-03-03T10:00:00Z"),
        sample("paycell", "LATENCY_MS", 200.0, "2026-03-04T10:00:00Z"),
    ];
    for i in 1..=6 {
        samples.push(sample(
            &format!("video-edge-{i}"),
            "BUFFER_RATIO",
            8.0,
            &format!("2026-03-05T10:0{i}:00Z"),
        ));
    }
    publish(&stack.js().await, &samples).await;
    let all = eventually("ten incidents", WAIT, || async {
        let found = app.incidents("&sort_by=opened_at&sort_dir=asc").await;
        (found.len() == 10).then_some(found)
    })
    .await;
    let id = |i: usize| all[i]["id"].as_str().unwrap().to_owned();
    World {
        a: id(0),
        b: id(1),
        c: id(2),
        e: id(3),
        edges: (4..10).map(id).collect(),
        department,
    }
}

async fn search(app: &App, query: &[(&str, &str)]) -> (u16, Value) {
    let request = app.http.get(app.url("/api/search")).query(query);
    decode(request.send().await.expect("GET /api/search")).await
}

/// A successful search.
async fn found(app: &App, query: &[(&str, &str)]) -> Value {
    let (status, body) = search(app, query).await;
    assert_eq!(status, 200, "{query:?}: {body}");
    assert_eq!(body["meta"]["engine"], "postgres", "{body}");
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

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// The hits' ids as a set, after checking that `total` counts them all.
async fn hit_set(app: &App, query: &[(&str, &str)]) -> BTreeSet<String> {
    let body = found(app, query).await;
    let ids = ids(&body);
    assert_eq!(body["meta"]["total"], ids.len(), "{query:?}: {body}");
    ids.into_iter().collect()
}

fn hit<'a>(body: &'a Value, id: &str) -> &'a Value {
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == id)
        .unwrap_or_else(|| panic!("{id} is not among the hits: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_search_finds_filters_counts_pages_and_highlights() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let w = world(&stack, &app).await;
    let edges: Vec<&String> = w.edges.iter().collect();

    // Words of the message, of the rule name and of the service, in any case.
    assert_eq!(hit_set(&app, &[("q", "GATEWAY")]).await, set(&[&w.a, &w.b]));
    assert_eq!(hit_set(&app, &[("q", "paycell")]).await, set(&[&w.a, &w.e]));
    assert_eq!(
        hit_set(&app, &[("q", "slow checkout")]).await,
        set(&[&w.c, &w.e]),
        "every word must match, in the rule name or the service"
    );
    assert_eq!(
        hit_set(&app, &[("q", "paycell timeout")]).await,
        set(&[&w.a])
    );
    // Stems: "timeout" finds "timeouts", "buffering" finds "BUFFER_RATIO".
    assert_eq!(hit_set(&app, &[("q", "timeout")]).await, set(&[&w.a, &w.b]));
    assert_eq!(hit_set(&app, &[("q", "buffering")]).await, set(&edges));
    // Web-search syntax: phrases, exclusion, alternatives.
    assert_eq!(
        hit_set(&app, &[("q", "\"gateway timeouts\"")]).await,
        set(&[&w.a, &w.b])
    );
    assert_eq!(
        hit_set(&app, &[("q", "\"timeouts gateway\"")]).await,
        set(&[])
    );
    assert_eq!(
        hit_set(&app, &[("q", "timeout -paycell")]).await,
        set(&[&w.b])
    );
    let mut either = set(&edges);
    either.extend(set(&[&w.c, &w.e]));
    assert_eq!(hit_set(&app, &[("q", "rebuffering or slow")]).await, either);
    // No typo tolerance in Postgres: a misspelt word finds nothing.
    let typo = found(&app, &[("q", "paycel timout")]).await;
    assert_eq!(typo["data"], json!([]), "{typo}");
    assert_eq!(typo["meta"]["total"], 0);
    // Only stop words: nothing to look for, so nothing found.
    let stop = found(&app, &[("q", "the")]).await;
    assert_eq!(
        (&stop["data"], &stop["meta"]["total"]),
        (&json!([]), &json!(0))
    );

    // A hit carries the incident, its title and the service's name.
    let body = found(&app, &[("q", "paycell timeout")]).await;
    let a = hit(&body, &w.a);
    assert_eq!(a["title"], "Gateway timeouts on paycell");
    assert_eq!(a["message"], "GATEWAY_TIMEOUTS 9 > 5 on paycell");
    assert_eq!(
        (&a["service_id"], &a["service_name"], &a["rule_name"]),
        (
            &json!("paycell"),
            &json!("paycell"),
            &json!("Gateway timeouts")
        )
    );
    assert_eq!(
        (&a["severity"], &a["status"], &a["peak_value"]),
        (&json!("HIGH"), &json!("OPEN"), &json!(9.0))
    );
    assert_eq!(a["opened_at"], "2026-03-01T10:00:00Z");
    assert!(
        a["rule_id"].is_string() && a["department_id"].is_null(),
        "{a}"
    );
    // Highlights: every field that matched, as HTML with the source text escaped.
    assert_eq!(
        a["highlights"],
        json!({
            "title": "Gateway <mark>timeouts</mark> on <mark>paycell</mark>",
            "message": "GATEWAY_<mark>TIMEOUTS</mark> 9 &gt; 5 on <mark>paycell</mark>",
        })
    );
    // A field without a match has no highlight: "ratio" is only in the message.
    let body = found(&app, &[("q", "ratio")]).await;
    assert_eq!(ids(&body).len(), 6);
    for h in body["data"].as_array().unwrap() {
        let highlights = h["highlights"].as_object().unwrap();
        assert_eq!(highlights.keys().collect::<Vec<_>>(), ["message"], "{h}");
        assert!(highlights["message"]
            .as_str()
            .unwrap()
            .starts_with("BUFFER_<mark>RATIO</mark> 8 &gt; 6 on video-edge-"));
    }

    // Equal relevance: newest first. Pages of 4 cover all six once, in that order.
    let mut paged = Vec::new();
    for offset in ["0", "4", "8"] {
        let body = found(
            &app,
            &[("q", "rebuffering"), ("limit", "4"), ("offset", offset)],
        )
        .await;
        assert_eq!(body["meta"]["total"], 6, "{body}");
        assert_eq!(
            (&body["meta"]["limit"], &body["meta"]["offset"]),
            (&json!(4), &json!(offset.parse::<u64>().unwrap()))
        );
        paged.extend(ids(&body));
    }
    let newest_first: Vec<String> = w.edges.iter().rev().cloned().collect();
    assert_eq!(paged, newest_first);

    // An empty query lists everything, newest first, without highlights.
    for query in [&[][..], &[("q", "  ")][..]] {
        let body = found(&app, query).await;
        let mut expected = newest_first.clone();
        expected.extend([&w.e, &w.c, &w.b, &w.a].map(String::clone));
        assert_eq!(ids(&body), expected);
        assert_eq!(body["meta"]["total"], 10);
        assert!(body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["highlights"] == json!({})));
    }

    // Every filter, with and without words.
    let (status, closed) = app
        .patch(
            &format!("/api/incidents/{}", w.b),
            &json!({"status": "CLOSED"}),
        )
        .await;
    assert_eq!(status, 200, "{closed}");
    let q = ("q", "timeout");
    assert_eq!(
        hit_set(&app, &[q, ("status", "CLOSED")]).await,
        set(&[&w.b])
    );
    assert_eq!(hit_set(&app, &[q, ("status", "OPEN")]).await, set(&[&w.a]));
    assert_eq!(hit_set(&app, &[("status", "CLOSED")]).await, set(&[&w.b]));
    assert_eq!(
        hit_set(&app, &[("q", "checkout"), ("severity", "CRITICAL")]).await,
        set(&[&w.c, &w.e])
    );
    assert_eq!(
        hit_set(&app, &[("severity", "HIGH")]).await,
        set(&[&w.a, &w.b])
    );
    assert_eq!(
        hit_set(&app, &[q, ("service_id", "checkout")]).await,
        set(&[&w.b])
    );
    assert_eq!(
        hit_set(&app, &[("service_id", "checkout")]).await,
        set(&[&w.b, &w.c])
    );
    // Service ids are exact: "check" is not "checkout".
    assert_eq!(hit_set(&app, &[("service_id", "check")]).await, set(&[]));
    assert_eq!(
        hit_set(&app, &[("department_id", w.department.as_str())]).await,
        set(&[&w.c, &w.e])
    );
    assert_eq!(
        hit_set(
            &app,
            &[("q", "paycell"), ("department_id", w.department.as_str())]
        )
        .await,
        set(&[&w.e])
    );
    // `from` is inclusive, `to` exclusive, both on the opening time.
    let window = [
        ("from", "2026-03-02T10:00:00Z"),
        ("to", "2026-03-04T10:00:00Z"),
    ];
    assert_eq!(hit_set(&app, &window).await, set(&[&w.b, &w.c]));
    assert_eq!(
        hit_set(&app, &[window[0], window[1], ("q", "checkout")]).await,
        set(&[&w.b, &w.c])
    );
    assert_eq!(
        hit_set(&app, &[("from", "2026-03-05T10:05:00+00:00")]).await,
        set(&edges[4..])
    );

    // Facets count every hit, not just the page, and are the same on every page.
    let mut seen = BTreeSet::new();
    for offset in ["0", "3", "6"] {
        let body = found(
            &app,
            &[
                ("q", "rebuffering or timeout"),
                ("limit", "3"),
                ("offset", offset),
            ],
        )
        .await;
        assert_eq!(body["meta"]["total"], 8, "{body}");
        let mut services = json!({"paycell": 1, "checkout": 1});
        for i in 1..=6 {
            services[format!("video-edge-{i}")] = json!(1);
        }
        assert_eq!(
            body["meta"]["facets"],
            json!({
                "status": {"OPEN": 7, "CLOSED": 1},
                "severity": {"MEDIUM": 6, "HIGH": 2},
                "service_id": services,
            })
        );
        seen.extend(ids(&body));
    }
    assert_eq!(seen.len(), 8);
    // Filters narrow the facets too; no hits, no counts.
    let body = found(&app, &[("q", "timeout"), ("status", "OPEN")]).await;
    assert_eq!(
        body["meta"]["facets"],
        json!({"status": {"OPEN": 1}, "severity": {"HIGH": 1}, "service_id": {"paycell": 1}})
    );
    let body = found(&app, &[("q", "nothing-like-this")]).await;
    assert_eq!(
        body["meta"],
        json!({"total": 0, "limit": 50, "offset": 0, "engine": "postgres",
               "facets": {"status": {}, "severity": {}, "service_id": {}}})
    );

    // Viewers may search.
    let viewer = app.client(KeyRole::Viewer).await;
    let response = viewer
        .get(app.url("/api/search?q=paycell"))
        .send()
        .await
        .unwrap();
    let (status, body) = decode(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["meta"]["total"], 2);

    // The incident list's substring search is unchanged.
    let listed = app.incidents("&search=aycel").await;
    assert_eq!(listed.len(), 2);

    // Bad parameters are refused and named, as on the incident list.
    let long = "x".repeat(201);
    let longest = "é".repeat(200);
    assert_eq!(search(&app, &[("q", longest.as_str())]).await.0, 200);
    for (query, field) in [
        (vec![("q", long.as_str())], "q"),
        (vec![("status", "SOLVED")], "status"),
        (vec![("severity", "urgent")], "severity"),
        (vec![("department_id", "payments")], "department_id"),
        (vec![("from", "yesterday")], "from"),
        (vec![("to", "2026-13-01T00:00:00Z")], "to"),
        (vec![("limit", "0")], "limit"),
        (vec![("limit", "1001")], "limit"),
        (vec![("offset", "-1")], "offset"),
        (vec![("sort_by", "opened_at")], "sort_by"),
        (vec![("q", "a"), ("q", "b")], "q"),
    ] {
        let (status, body) = search(&app, &query).await;
        assert_eq!(status, 400, "{query:?}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{body}");
        assert_eq!(body["error"]["details"][0]["field"], field, "{body}");
    }
    let (status, body) = search(&app, &[("q", "pay\0cell")]).await;
    assert_eq!(status, 400, "{body}");

    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comments_and_service_names_are_searchable_as_they_change() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let w = world(&stack, &app).await;

    // A comment's words become searchable, and its text is highlighted: the comment that
    // matched, escaped, with only the marks as markup.
    let comments = format!("/api/incidents/{}/comments", w.c);
    let (status, first) = app
        .post(&comments, &json!({"body": "Looking at the dashboards."}))
        .await;
    assert_eq!(status, 201, "{first}");
    let (status, second) = app
        .post(
            &comments,
            &json!({"body": "Root cause: the CDN <b>throttled</b> our origin & retries"}),
        )
        .await;
    assert_eq!(status, 201, "{second}");
    let body = found(&app, &[("q", "throttling")]).await;
    assert_eq!(ids(&body), std::slice::from_ref(&w.c));
    assert_eq!(
        body["data"][0]["highlights"],
        json!({"comments":
            "Root cause: the CDN &lt;b&gt;<mark>throttled</mark>&lt;/b&gt; our origin &amp; retries"})
    );
    // Words from the incident and from a comment together.
    let body = found(&app, &[("q", "checkout cdn")]).await;
    assert_eq!(ids(&body), std::slice::from_ref(&w.c));
    let highlights = &body["data"][0]["highlights"];
    assert!(
        highlights["title"]
            .as_str()
            .unwrap()
            .contains("<mark>checkout</mark>")
            && highlights["comments"]
                .as_str()
                .unwrap()
                .contains("<mark>CDN</mark>"),
        "{highlights}"
    );
    // The first comment matches too when asked for.
    let body = found(&app, &[("q", "dashboard")]).await;
    assert_eq!(
        body["data"][0]["highlights"]["comments"],
        "Looking at the <mark>dashboards</mark>."
    );

    // A deleted comment's words stop matching; the other comment's still match.
    let second_id = second["data"]["id"].as_str().unwrap();
    let response = app
        .http
        .delete(app.url(&format!("{comments}/{second_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(hit_set(&app, &[("q", "throttled")]).await, set(&[]));
    assert_eq!(hit_set(&app, &[("q", "dashboards")]).await, set(&[&w.c]));

    // Pipeline updates to an incident (a new peak) leave its text searchable.
    publish(
        &stack.js().await,
        &[sample(
            "checkout",
            "LATENCY_MS",
            900.0,
            "2026-03-05T11:00:00Z",
        )],
    )
    .await;
    eventually("the new peak", WAIT, || async {
        let (_, detail) = app.get(&format!("/api/incidents/{}", w.c)).await;
        (detail["data"]["peak_value"] == 900.0).then_some(())
    })
    .await;
    assert_eq!(hit_set(&app, &[("q", "dashboards")]).await, set(&[&w.c]));
    let body = found(&app, &[("q", "dashboards")]).await;
    assert_eq!(body["data"][0]["peak_value"], 900.0);

    // A service's display name is searchable, and shows in titles, from when it is set; its
    // id stays searchable. Names are escaped in highlights like any text.
    let rename = |name: Value| {
        let app = &app;
        async move {
            let (status, body) = app
                .patch("/api/services/paycell", &json!({"display_name": name}))
                .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    rename(json!("Mobile <Payments>")).await;
    let body = found(&app, &[("q", "payments")]).await;
    assert_eq!(
        ids(&body).into_iter().collect::<BTreeSet<_>>(),
        set(&[&w.a, &w.e])
    );
    let a = hit(&body, &w.a);
    assert_eq!(a["title"], "Gateway timeouts on Mobile <Payments>");
    assert_eq!(a["service_name"], "Mobile <Payments>");
    assert_eq!(
        a["highlights"]["title"],
        "Gateway timeouts on Mobile &lt;<mark>Payments</mark>&gt;"
    );
    assert_eq!(hit_set(&app, &[("q", "paycell")]).await, set(&[&w.a, &w.e]));
    rename(json!("Wallet")).await;
    assert_eq!(hit_set(&app, &[("q", "payments")]).await, set(&[]));
    assert_eq!(hit_set(&app, &[("q", "wallet")]).await, set(&[&w.a, &w.e]));
    rename(Value::Null).await;
    assert_eq!(hit_set(&app, &[("q", "wallet")]).await, set(&[]));
    let body = found(&app, &[("q", "paycell timeout")]).await;
    assert_eq!(body["data"][0]["title"], "Gateway timeouts on paycell");

    app.stop().await;
}
