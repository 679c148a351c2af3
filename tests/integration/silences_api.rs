//! Silences and maintenance windows: the `/api/silences` resource (CRUD, validation, roles, the
//! `active` filter) and `store::silences::covering`, which the notifier asks before sending.
//! Every test runs its own nats-server and Postgres.

use crate::support::{decode, App, KeyRole, Stack};
use chrono::{DateTime, Duration, DurationRound, SecondsFormat, Utc};
use schemas::Severity;
use serde_json::{json, Value};
use store::silences::{NewSilence, Recurrence, SilenceMatch};
use uuid::Uuid;

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("an RFC 3339 time")
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    decode(request.send().await.expect("sending a request")).await
}

async fn delete(app: &App, path: &str) -> (u16, Value) {
    send(app.http.delete(app.url(path))).await
}

/// Creates a silence and returns it.
async fn create(app: &App, body: Value) -> Value {
    let (status, created) = app.post("/api/silences", &body).await;
    assert_eq!(status, 201, "creating silence {body}: {created}");
    created["data"].clone()
}

async fn create_department(app: &App, name: &str) -> String {
    let (status, body) = app.post("/api/departments", &json!({ "name": name })).await;
    assert_eq!(status, 201, "{body}");
    body["data"]["id"].as_str().unwrap().to_owned()
}

fn ids(body: &Value) -> Vec<String> {
    body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no list: {body}"))
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts a 422 `validation_failed` whose details and message name `field`.
#[track_caller]
fn refused(response: &(u16, Value), field: &str) {
    refused_with(response, 422, "validation_failed", field);
}

#[track_caller]
fn refused_with(response: &(u16, Value), status: u16, code: &str, field: &str) {
    let (got, body) = response;
    assert_eq!(*got, status, "expected `{field}` to be refused: {body}");
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    assert!(
        error["details"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["field"] == field)),
        "details do not name `{field}`: {body}"
    );
    assert!(
        error["message"].as_str().unwrap().contains(field),
        "message does not name `{field}`: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silences_are_created_read_changed_and_deleted() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let department = create_department(&app, "Video").await;
    let rule = Uuid::new_v4().to_string();

    // A one-off silence with every field.
    let created = create(
        &app,
        json!({
            "service_id": "S1",
            "rule_id": rule,
            "department_id": department,
            "severity": "HIGH",
            "starts_at": "2020-03-07T02:00:00+01:00",
            "ends_at": "2020-03-07T04:00:00Z",
            "comment": "  database upgrade  ",
        }),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let mut keys: Vec<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "active",
            "comment",
            "created_at",
            "created_by",
            "department_id",
            "ends_at",
            "id",
            "recurrence",
            "rule_id",
            "service_id",
            "severity",
            "starts_at",
            "updated_at"
        ]
    );
    assert_eq!(created["service_id"], "S1");
    assert_eq!(created["rule_id"], rule.as_str());
    assert_eq!(created["department_id"], department.as_str());
    assert_eq!(created["severity"], "HIGH");
    assert_eq!(
        at(created["starts_at"].as_str().unwrap()),
        at("2020-03-07T01:00:00Z")
    );
    assert_eq!(
        at(created["ends_at"].as_str().unwrap()),
        at("2020-03-07T04:00:00Z")
    );
    assert_eq!(created["recurrence"], Value::Null);
    assert_eq!(
        created["comment"], "database upgrade",
        "comments are trimmed"
    );
    assert_eq!(created["created_by"], "key:test-admin");
    assert_eq!(created["active"], false, "it ended long ago");

    let (status, got) = app.get(&format!("/api/silences/{id}")).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["data"], created);

    // A maintenance window: its recurrence comes back exactly as written, without an end.
    let before = Utc::now();
    let window = create(
        &app,
        json!({
            "service_id": "S2",
            "recurrence": {"days": ["sat", "sun"], "start": "02:00", "duration": "4h"},
        }),
    )
    .await;
    let after = Utc::now();
    assert_eq!(
        window["recurrence"],
        json!({"days": ["sat", "sun"], "start": "02:00", "duration": "4h"})
    );
    assert_eq!(window["ends_at"], Value::Null);
    assert_eq!(window["comment"], "");
    let starts_at = at(window["starts_at"].as_str().unwrap());
    assert!(
        before.duration_trunc(Duration::microseconds(1)).unwrap() <= starts_at
            && starts_at <= after,
        "starts_at defaults to now: {starts_at} not in {before}..{after}"
    );
    let window_id = window["id"].as_str().unwrap().to_owned();

    // The list, newest first.
    let (status, list) = app.get("/api/silences").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(ids(&list), [window_id.clone(), id.clone()]);
    assert_eq!(list["meta"], json!({"total": 2, "limit": 50, "offset": 0}));
    assert_eq!(list["data"][1], created);

    // End the maintenance window's series, then change and clear fields one at a time.
    let path = format!("/api/silences/{window_id}");
    let end = rfc(starts_at + Duration::days(30));
    let (status, patched) = app.patch(&path, &json!({ "ends_at": end })).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(at(patched["data"]["ends_at"].as_str().unwrap()), at(&end));
    assert_eq!(patched["data"]["service_id"], "S2", "untouched fields stay");
    assert_eq!(patched["data"]["recurrence"], window["recurrence"]);
    assert_eq!(patched["data"]["created_by"], window["created_by"]);
    assert!(
        at(patched["data"]["updated_at"].as_str().unwrap())
            > at(window["updated_at"].as_str().unwrap())
    );
    let (status, patched) = app
        .patch(
            &path,
            &json!({
                "severity": "CRITICAL",
                "recurrence": {"start": "23:00", "duration": "3h"},
                "comment": "nightly backups",
            }),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["data"]["severity"], "CRITICAL");
    assert_eq!(
        patched["data"]["recurrence"],
        json!({"days": [], "start": "23:00", "duration": "3h"}),
        "a recurrence is replaced whole"
    );
    assert_eq!(patched["data"]["comment"], "nightly backups");
    // The service matcher can be cleared while another matcher remains.
    let (status, patched) = app.patch(&path, &json!({"service_id": null})).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["data"]["service_id"], Value::Null);
    assert_eq!(patched["data"]["severity"], "CRITICAL");
    // With an end, the recurrence can go: it becomes a one-off silence.
    let (status, patched) = app.patch(&path, &json!({"recurrence": null})).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["data"]["recurrence"], Value::Null);
    let (status, got) = app.get(&path).await;
    assert_eq!(status, 200);
    assert_eq!(got["data"], patched["data"], "the change was stored");

    // Delete; then it is gone.
    let (status, body) = delete(&app, &path).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(body, Value::Null);
    let (status, body) = app.get(&path).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(delete(&app, &path).await.0, 404);
    assert_eq!(app.patch(&path, &json!({"comment": "x"})).await.0, 404);
    let (_, list) = app.get("/api/silences").await;
    assert_eq!(ids(&list), [id.as_str()]);

    // Ids that are not UUIDs are a 400 naming the path parameter.
    let response = app.get("/api/silences/nope").await;
    refused_with(&response, 400, "bad_request", "id");

    // Deleting its department deletes a silence set on it.
    let (status, _) = delete(&app, &format!("/api/departments/{department}")).await;
    assert_eq!(status, 204);
    assert_eq!(app.get(&format!("/api/silences/{id}")).await.0, 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_silences_are_refused_naming_the_field() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let post = |body: Value| {
        let app = &app;
        async move { app.post("/api/silences", &body).await }
    };
    let one_off = |extra: Value| {
        let mut body = json!({
            "service_id": "S1",
            "starts_at": "2026-03-07T02:00:00Z",
            "ends_at": "2026-03-07T04:00:00Z",
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let recurring = |recurrence: Value| json!({"service_id": "S1", "recurrence": recurrence});

    // No matcher at all: refused, naming every matcher. A silence that mutes everything must
    // not be made by leaving the matchers out.
    for body in [
        json!({"ends_at": "2036-01-01T00:00:00Z"}),
        json!({"service_id": null, "rule_id": null, "department_id": null, "severity": null,
               "ends_at": "2036-01-01T00:00:00Z"}),
        json!({"recurrence": {"start": "02:00", "duration": "1h"}}),
    ] {
        let response = post(body.clone()).await;
        for field in ["service_id", "rule_id", "department_id", "severity"] {
            refused(&response, field);
        }
    }

    for (body, field) in [
        (one_off(json!({"service_id": "has space"})), "service_id"),
        (one_off(json!({"service_id": ""})), "service_id"),
        (one_off(json!({"rule_id": "nope"})), "rule_id"),
        (one_off(json!({"department_id": "nope"})), "department_id"),
        (one_off(json!({"severity": "SEVERE"})), "severity"),
        (one_off(json!({"severity": "high"})), "severity"),
        (one_off(json!({"starts_at": "yesterday"})), "starts_at"),
        (one_off(json!({"starts_at": "2026-03-07"})), "starts_at"),
        (
            one_off(json!({"starts_at": "2026-03-07T02:00:00"})),
            "starts_at",
        ),
        (one_off(json!({"ends_at": 1_772_848_800})), "ends_at"),
        // ends_at must come after starts_at, and a one-off silence needs one.
        (
            one_off(json!({"ends_at": "2026-03-07T01:00:00Z"})),
            "ends_at",
        ),
        (
            one_off(json!({"ends_at": "2026-03-07T02:00:00Z"})),
            "ends_at",
        ),
        (one_off(json!({"ends_at": null})), "ends_at"),
        (json!({"service_id": "S1"}), "ends_at"),
        // Also when starts_at is now by default.
        (
            json!({"service_id": "S1", "ends_at": "2020-01-01T00:00:00Z"}),
            "ends_at",
        ),
        (one_off(json!({"comment": "x".repeat(2001)})), "comment"),
        (
            recurring(json!({"start": "2:00", "duration": "1h"})),
            "recurrence.start",
        ),
        (
            recurring(json!({"start": "24:00", "duration": "1h"})),
            "recurrence.start",
        ),
        (
            recurring(json!({"start": "02:00:00", "duration": "1h"})),
            "recurrence.start",
        ),
        (recurring(json!({"duration": "1h"})), "recurrence.start"),
        (
            recurring(json!({"days": ["sat", "sun", "sat"], "start": "02:00", "duration": "1h"})),
            "recurrence.days",
        ),
        (
            recurring(json!({"days": ["saturday"], "start": "02:00", "duration": "1h"})),
            "recurrence.days[0]",
        ),
        (
            recurring(json!({"start": "02:00", "duration": "0"})),
            "recurrence.duration",
        ),
        (
            recurring(json!({"start": "02:00", "duration": "8d"})),
            "recurrence.duration",
        ),
        (
            recurring(json!({"start": "02:00", "duration": "soon"})),
            "recurrence.duration",
        ),
        (recurring(json!({"start": "02:00"})), "recurrence.duration"),
    ] {
        refused(&post(body).await, field);
    }
    // A recurring silence may end, but not before it starts.
    let mut body = recurring(json!({"start": "02:00", "duration": "1h"}));
    body["starts_at"] = json!("2026-03-07T02:00:00Z");
    body["ends_at"] = json!("2026-03-06T02:00:00Z");
    refused(&post(body).await, "ends_at");

    // Unknown fields are refused, at the top and inside the recurrence.
    for body in [
        one_off(json!({"colour": "red"})),
        recurring(json!({"start": "02:00", "duration": "1h", "timezone": "CET"})),
    ] {
        let (status, response) = post(body.clone()).await;
        assert_eq!(status, 422, "{body}: {response}");
        assert_eq!(response["error"]["code"], "validation_failed");
    }
    let (status, response) = post(one_off(json!({"colour": "red"}))).await;
    assert!(
        response["error"]["message"]
            .as_str()
            .unwrap()
            .contains("colour"),
        "{status}: {response}"
    );

    // An unknown department is answered exactly as the rules API answers it.
    let unknown = Uuid::new_v4();
    let silence = post(one_off(json!({ "department_id": unknown }))).await;
    let rule = app
        .post(
            "/api/rules",
            &json!({"metric_type": "LATENCY_MS", "operator": ">", "threshold": 150,
                    "severity": "HIGH", "department_id": unknown}),
        )
        .await;
    refused(&silence, "department_id");
    assert_eq!(silence, rule);

    // Nothing was stored along the way.
    let (_, list) = app.get("/api/silences").await;
    assert_eq!(list["meta"]["total"], 0, "{list}");

    // Patches: the result must be a valid silence.
    let silence = create(&app, one_off(json!({}))).await;
    let window = create(&app, recurring(json!({"start": "02:00", "duration": "1h"}))).await;
    let path = format!("/api/silences/{}", silence["id"].as_str().unwrap());
    let window_path = format!("/api/silences/{}", window["id"].as_str().unwrap());
    let (status, body) = app.patch(&path, &json!({})).await;
    assert_eq!(status, 422, "an empty patch changes nothing: {body}");
    for (path, patch, field) in [
        (&path, json!({"service_id": null}), "rule_id"),
        (&path, json!({"starts_at": null}), "starts_at"),
        (&path, json!({"comment": null}), "comment"),
        (&path, json!({"comment": "x".repeat(2001)}), "comment"),
        (&path, json!({"ends_at": null}), "ends_at"),
        (&path, json!({"ends_at": "2026-03-07T01:00:00Z"}), "ends_at"),
        (
            &path,
            json!({"starts_at": "2026-03-07T05:00:00Z"}),
            "ends_at",
        ),
        (&path, json!({"starts_at": "tomorrow"}), "starts_at"),
        (&path, json!({"severity": "SEVERE"}), "severity"),
        (&path, json!({"service_id": "a/b"}), "service_id"),
        (
            &path,
            json!({"department_id": Uuid::new_v4()}),
            "department_id",
        ),
        (&window_path, json!({"recurrence": null}), "ends_at"),
        (
            &window_path,
            json!({"recurrence": {"days": ["mon", "mon"], "start": "02:00", "duration": "1h"}}),
            "recurrence.days",
        ),
        (
            &window_path,
            json!({"recurrence": {"start": "02:00", "duration": "0"}}),
            "recurrence.duration",
        ),
    ] {
        refused(&app.patch(path, &patch).await, field);
    }
    let (status, body) = app.patch(&path, &json!({"created_by": "someone"})).await;
    assert_eq!(status, 422, "created_by is not editable: {body}");
    let (_, unchanged) = app.get(&path).await;
    assert_eq!(unchanged["data"], silence, "refused patches change nothing");

    // Query parameters.
    for (query, field) in [
        ("active=maybe", "active"),
        ("rule_id=nope", "rule_id"),
        ("department_id=12", "department_id"),
        ("sort_by=severity", "sort_by"),
        ("sort_dir=up", "sort_dir"),
        ("limit=0", "limit"),
        ("colour=red", "colour"),
    ] {
        let response = app.get(&format!("/api/silences?{query}")).await;
        refused_with(&response, 400, "bad_request", field);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_read_silences_and_operators_manage_them() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let viewer = app.client(KeyRole::Viewer).await;
    let operator = app.client(KeyRole::Operator).await;
    let body = json!({"service_id": "S1", "ends_at": "2036-01-01T00:00:00Z"});

    let (status, denied) = send(viewer.post(app.url("/api/silences")).json(&body)).await;
    assert_eq!(status, 403, "{denied}");
    assert_eq!(denied["error"]["code"], "forbidden");

    let (status, created) = send(operator.post(app.url("/api/silences")).json(&body)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["data"]["created_by"], "key:test-operator");
    let path = app.url(&format!(
        "/api/silences/{}",
        created["data"]["id"].as_str().unwrap()
    ));

    let (status, list) = send(viewer.get(app.url("/api/silences"))).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["meta"]["total"], 1);
    let (status, got) = send(viewer.get(&path)).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["data"], created["data"]);

    let patch = json!({"comment": "by a viewer"});
    let (status, _) = send(viewer.patch(&path).json(&patch)).await;
    assert_eq!(status, 403);
    let (status, _) = send(viewer.delete(&path)).await;
    assert_eq!(status, 403);
    let (_, got) = send(viewer.get(&path)).await;
    assert_eq!(got["data"]["comment"], "", "the viewer changed nothing");

    let (status, patched) = send(operator.patch(&path).json(&json!({"comment": "ok"}))).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["data"]["comment"], "ok");
    assert_eq!(
        patched["data"]["created_by"], "key:test-operator",
        "the creator stays"
    );
    let (status, _) = send(operator.delete(&path)).await;
    assert_eq!(status, 204);
    let (status, _) = send(viewer.get(&path)).await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_filter_keeps_silences_covering_now() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let department = create_department(&app, "Video").await;
    let rule = Uuid::new_v4();
    let now = Utc::now();
    let hhmm = |t: DateTime<Utc>| t.format("%H:%M").to_string();

    // Created oldest first; the list is newest first.
    let ended = create(
        &app,
        json!({"service_id": "S1", "starts_at": rfc(now - Duration::hours(3)),
               "ends_at": rfc(now - Duration::hours(1))}),
    )
    .await;
    let current = create(
        &app,
        json!({"service_id": "S1", "rule_id": rule, "starts_at": rfc(now - Duration::hours(1)),
               "ends_at": rfc(now + Duration::hours(1))}),
    )
    .await;
    let future = create(
        &app,
        json!({"service_id": "S2", "starts_at": rfc(now + Duration::hours(1)),
               "ends_at": rfc(now + Duration::hours(2))}),
    )
    .await;
    // Every day, from an hour ago (to the minute) for two hours: inside a window now.
    let in_window = create(
        &app,
        json!({"department_id": department, "starts_at": rfc(now - Duration::days(2)),
               "recurrence": {"start": hhmm(now - Duration::hours(1)), "duration": "2h"}}),
    )
    .await;
    // Every day, starting three hours from now for an hour: between windows now.
    let between_windows = create(
        &app,
        json!({"department_id": department, "starts_at": rfc(now - Duration::days(2)),
               "recurrence": {"start": hhmm(now + Duration::hours(3)), "duration": "1h"}}),
    )
    .await;
    let id = |s: &Value| s["id"].as_str().unwrap().to_owned();

    let (status, active) = app.get("/api/silences?active=true").await;
    assert_eq!(status, 200, "{active}");
    assert_eq!(ids(&active), [id(&in_window), id(&current)]);
    assert_eq!(active["meta"]["total"], 2);
    assert!(active["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["active"] == true));

    let (_, inactive) = app.get("/api/silences?active=false").await;
    assert_eq!(
        ids(&inactive),
        [id(&between_windows), id(&future), id(&ended)]
    );
    assert_eq!(inactive["meta"]["total"], 3);
    assert!(inactive["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["active"] == false));

    // Pages are cut after filtering, and the total counts every page.
    let (_, page) = app.get("/api/silences?active=false&limit=1&offset=1").await;
    assert_eq!(ids(&page), [id(&future)]);
    assert_eq!(page["meta"], json!({"total": 3, "limit": 1, "offset": 1}));
    let (_, past_end) = app.get("/api/silences?active=true&offset=5").await;
    assert_eq!(ids(&past_end), Vec::<String>::new());
    assert_eq!(past_end["meta"]["total"], 2);

    // Sorting applies within the filter.
    let (_, by_start) = app
        .get("/api/silences?active=false&sort_by=starts_at&sort_dir=asc")
        .await;
    assert_eq!(
        ids(&by_start),
        [id(&between_windows), id(&ended), id(&future)]
    );
    // Open-ended silences end last.
    let (_, by_end) = app.get("/api/silences?sort_by=ends_at&sort_dir=desc").await;
    let by_end = ids(&by_end);
    assert_eq!(
        by_end[2..],
        [id(&future), id(&current), id(&ended)],
        "{by_end:?}"
    );

    // Matcher filters, alone and with `active`.
    let (_, s1) = app.get("/api/silences?service_id=S1").await;
    assert_eq!(ids(&s1), [id(&current), id(&ended)]);
    let (_, s1_active) = app.get("/api/silences?service_id=S1&active=true").await;
    assert_eq!(ids(&s1_active), [id(&current)]);
    assert_eq!(s1_active["meta"]["total"], 1);
    let (_, by_rule) = app.get(&format!("/api/silences?rule_id={rule}")).await;
    assert_eq!(ids(&by_rule), [id(&current)]);
    let (_, by_department) = app
        .get(&format!(
            "/api/silences?department_id={department}&active=false"
        ))
        .await;
    assert_eq!(ids(&by_department), [id(&between_windows)]);
    assert_eq!(by_department["meta"]["total"], 1);

    // Ending the current silence early makes it inactive.
    let (status, ended_early) = app
        .patch(
            &format!("/api/silences/{}", id(&current)),
            &json!({"ends_at": rfc(Utc::now() - Duration::seconds(1))}),
        )
        .await;
    assert_eq!(status, 200, "{ended_early}");
    assert_eq!(ended_early["data"]["active"], false);
    let (_, active) = app.get("/api/silences?active=true").await;
    assert_eq!(ids(&active), [id(&in_window)]);
    app.stop().await;
}

fn new_silence(service_id: Option<&str>, starts_at: &str, ends_at: Option<&str>) -> NewSilence {
    NewSilence {
        service_id: service_id.map(str::to_owned),
        rule_id: None,
        department_id: None,
        severity: None,
        starts_at: at(starts_at),
        ends_at: ends_at.map(at),
        recurrence: None,
        comment: String::new(),
        created_by: "key:test".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn covering_finds_the_silence_that_mutes_a_notification() {
    let stack = Stack::start().await;
    let pool = stack.pool().await;
    store::migrate(&pool).await.expect("migrating");
    let department = store::departments::insert(&pool, "Video", "")
        .await
        .unwrap()
        .id;
    let other_department = store::departments::insert(&pool, "Audio", "")
        .await
        .unwrap()
        .id;
    let (rule, other_rule) = (Uuid::new_v4(), Uuid::new_v4());
    let notification = |service_id, rule_id, department_id, severity| SilenceMatch {
        service_id,
        rule_id,
        department_id,
        severity,
    };
    let base = notification("S1", rule, department, Severity::High);
    let covering = |m: SilenceMatch<'static>, t: &'static str| {
        let pool = pool.clone();
        async move {
            store::silences::covering(&pool, &m, at(t))
                .await
                .expect("asking for a covering silence")
        }
    };

    // Nothing is silenced without silences.
    assert_eq!(covering(base, "2026-03-01T10:30:00Z").await, None);

    // One matcher each, all on 2026-03-01 from 10:00 to 12:00.
    let (from, to) = ("2026-03-01T10:00:00Z", Some("2026-03-01T12:00:00Z"));
    let by_service = store::silences::insert(&pool, &new_silence(Some("S1"), from, to))
        .await
        .unwrap()
        .id;
    let in_range = "2026-03-01T10:30:00Z";
    assert_eq!(covering(base, in_range).await, Some(by_service));
    assert_eq!(
        covering(
            notification("S2", rule, department, Severity::High),
            in_range
        )
        .await,
        None
    );
    // The range: start inclusive, end exclusive.
    assert_eq!(covering(base, "2026-03-01T09:59:59.999Z").await, None);
    assert_eq!(
        covering(base, "2026-03-01T10:00:00Z").await,
        Some(by_service)
    );
    assert_eq!(
        covering(base, "2026-03-01T11:59:59.999999Z").await,
        Some(by_service)
    );
    assert_eq!(
        covering(base, "2026-03-01T12:00:00Z").await,
        None,
        "expired"
    );

    let by_rule = store::silences::insert(
        &pool,
        &NewSilence {
            rule_id: Some(rule),
            ..new_silence(None, from, to)
        },
    )
    .await
    .unwrap()
    .id;
    let by_department = store::silences::insert(
        &pool,
        &NewSilence {
            department_id: Some(department),
            ..new_silence(None, from, to)
        },
    )
    .await
    .unwrap()
    .id;
    let by_severity = store::silences::insert(
        &pool,
        &NewSilence {
            severity: Some(Severity::Low),
            ..new_silence(None, from, to)
        },
    )
    .await
    .unwrap()
    .id;
    // Each notification is covered only by the silence whose matcher it meets.
    for (m, expected) in [
        (
            notification("S2", rule, other_department, Severity::High),
            Some(by_rule),
        ),
        (
            notification("S2", other_rule, department, Severity::High),
            Some(by_department),
        ),
        (
            notification("S2", other_rule, other_department, Severity::Low),
            Some(by_severity),
        ),
        (
            notification("S2", other_rule, other_department, Severity::High),
            None,
        ),
    ] {
        assert_eq!(covering(m, in_range).await, expected, "{m:?}");
    }

    // Every matcher that is set must match.
    let combined = store::silences::insert(
        &pool,
        &NewSilence {
            rule_id: Some(other_rule),
            department_id: Some(other_department),
            severity: Some(Severity::Critical),
            ..new_silence(Some("S3"), from, to)
        },
    )
    .await
    .unwrap()
    .id;
    let all_match = notification("S3", other_rule, other_department, Severity::Critical);
    assert_eq!(covering(all_match, in_range).await, Some(combined));
    for m in [
        notification("S4", other_rule, other_department, Severity::Critical),
        notification("S3", Uuid::new_v4(), other_department, Severity::Critical),
        notification("S3", other_rule, Uuid::new_v4(), Severity::Critical),
        notification("S3", other_rule, other_department, Severity::Medium),
    ] {
        assert_eq!(covering(m, in_range).await, None, "{m:?}");
    }

    // When several cover a notification, the earliest created wins.
    assert_eq!(covering(base, in_range).await, Some(by_service));
    sqlx::query("UPDATE silences SET created_at = created_at - interval '1 hour' WHERE id = $1")
        .bind(by_department)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(covering(base, in_range).await, Some(by_department));

    // A maintenance window: Saturdays from 23:00 for 3 hours, from March on, open-ended.
    // 2026-03-07 is a Saturday.
    let nightly: Recurrence =
        serde_json::from_value(json!({"days": ["sat"], "start": "23:00", "duration": "3h"}))
            .unwrap();
    let window = store::silences::insert(
        &pool,
        &NewSilence {
            recurrence: Some(nightly.clone()),
            ..new_silence(Some("S5"), "2026-03-01T00:00:00Z", None)
        },
    )
    .await
    .unwrap()
    .id;
    let s5 = notification("S5", rule, department, Severity::High);
    for (t, expected) in [
        ("2026-03-07T22:59:59Z", None),
        ("2026-03-07T23:00:00Z", Some(window)),
        ("2026-03-08T01:00:00Z", Some(window)),
        ("2026-03-08T02:00:00Z", None),
        ("2026-03-08T23:30:00Z", None),
        ("2026-03-14T23:30:00Z", Some(window)),
        ("2027-03-06T23:30:00Z", Some(window)),
        ("2026-02-28T23:30:00Z", None),
    ] {
        assert_eq!(covering(s5, t).await, expected, "at {t}");
    }
    // A window series that ended covers nothing after its end, even inside a window.
    let ended_series = store::silences::insert(
        &pool,
        &NewSilence {
            recurrence: Some(nightly),
            ..new_silence(
                Some("S6"),
                "2026-03-01T00:00:00Z",
                Some("2026-03-08T00:00:00Z"),
            )
        },
    )
    .await
    .unwrap()
    .id;
    let s6 = notification("S6", rule, department, Severity::High);
    assert_eq!(
        covering(s6, "2026-03-07T23:30:00Z").await,
        Some(ended_series)
    );
    assert_eq!(covering(s6, "2026-03-08T00:30:00Z").await, None);
    assert_eq!(covering(s6, "2026-03-14T23:30:00Z").await, None);

    // Inside a transaction, as the notifier asks.
    let mut tx = pool.begin().await.unwrap();
    let found = store::silences::covering(&mut *tx, &s5, at("2026-03-07T23:30:00Z"))
        .await
        .unwrap();
    assert_eq!(found, Some(window));
    tx.commit().await.unwrap();

    // A deleted silence covers nothing.
    assert!(store::silences::delete(&pool, window).await.unwrap());
    assert_eq!(covering(s5, "2026-03-07T23:30:00Z").await, None);
}
