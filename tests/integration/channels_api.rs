//! Notification routing as people configure it: each department's channels
//! (`/api/departments/{id}/channels`) and the extra departments a rule notifies
//! (`extra_department_ids`), plus what the notifier reads back from the store.

use std::time::Duration;

use crate::support::{decode, App, KeyRole, Stack};
use schemas::Severity;
use serde_json::{json, Value};
use store::channels::{Channel, ChannelKind};
use tracely::config::Role;
use uuid::Uuid;

const SECRET: &str = "whsec-0123456789abcdef";
const ROTATED: &str = "whsec-fedcba9876543210";
const SLACK_URL: &str = "https://hooks.slack.com/services/T0001/B0001/sEcReTtOkEn";

async fn delete(app: &App, path: &str) -> (u16, Value) {
    decode(app.http.delete(app.url(path)).send().await.unwrap()).await
}

async fn department(app: &App, name: &str) -> String {
    let (status, body) = app.post("/api/departments", &json!({ "name": name })).await;
    assert_eq!(status, 201, "{body}");
    body["data"]["id"].as_str().unwrap().to_owned()
}

/// Creates a channel and returns it as shown.
async fn channel(app: &App, department: &str, body: Value) -> Value {
    let (status, created) = app
        .post(&format!("/api/departments/{department}/channels"), &body)
        .await;
    assert_eq!(status, 201, "creating channel {body}: {created}");
    created["data"].clone()
}

/// Asserts a 422 naming `field` whose message contains `says`.
fn refused(response: &(u16, Value), field: &str, says: &str) {
    let (status, body) = response;
    assert_eq!(*status, 422, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed", "{body}");
    assert_eq!(body["error"]["details"][0]["field"], field, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(field), "the message names {field}: {body}");
    assert!(message.contains(says), "expected {says:?} in: {body}");
}

fn no_secret(body: &Value) {
    let text = body.to_string();
    for secret in [SECRET, ROTATED, "sEcReTtOkEn", "/services/"] {
        assert!(!text.contains(secret), "{secret} leaked in {text}");
    }
    assert!(!text.contains("\"secret\""), "a secret field in {text}");
}

#[tokio::test]
async fn channels_of_every_type_are_managed_per_department_without_showing_secrets() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let video = department(&app, "Video").await;
    let audio = department(&app, "Audio").await;
    let base = format!("/api/departments/{video}/channels");
    let mut seen = Vec::new();

    // In-app: defaults everywhere, named after its type.
    let in_app = channel(&app, &video, json!({"type": "in_app"})).await;
    seen.push(in_app.clone());
    let in_app_id = in_app["id"].as_str().unwrap().to_owned();
    assert_eq!(
        in_app,
        json!({
            "id": in_app_id, "department_id": video, "name": "in_app", "type": "in_app",
            "url": null, "has_secret": false, "min_severity": "LOW", "send_resolved": true,
            "group_wait": "0", "repeat_interval": null, "enabled": true,
            "created_at": in_app["created_at"], "updated_at": in_app["updated_at"],
        })
    );

    // Webhook: every field given; the URL is shown, the secret only as `has_secret`.
    let webhook = channel(
        &app,
        &video,
        json!({"type": "webhook", "name": " On-call hook ", "url": "https://hooks.example.com/tracely?team=video",
               "secret": SECRET, "min_severity": "HIGH", "send_resolved": false, "group_wait": "30s",
               "repeat_interval": "4h", "enabled": false}),
    )
    .await;
    seen.push(webhook.clone());
    let webhook_id = webhook["id"].as_str().unwrap().to_owned();
    assert_eq!(webhook["name"], "On-call hook", "names are trimmed");
    assert_eq!(webhook["type"], "webhook");
    assert_eq!(
        webhook["url"],
        "https://hooks.example.com/tracely?team=video"
    );
    assert_eq!(webhook["has_secret"], true);
    assert_eq!(webhook["min_severity"], "HIGH");
    assert_eq!(webhook["send_resolved"], false);
    assert_eq!(webhook["group_wait"], "30s");
    assert_eq!(webhook["repeat_interval"], "4h");
    assert_eq!(webhook["enabled"], false);

    // Slack: the URL is the credential, so only scheme and host are shown.
    let slack = channel(
        &app,
        &video,
        json!({"type": "slack", "name": "#video-alerts", "url": SLACK_URL, "group_wait": "1m"}),
    )
    .await;
    seen.push(slack.clone());
    let slack_id = slack["id"].as_str().unwrap().to_owned();
    assert_eq!(slack["url"], "https://hooks.slack.com/…");
    assert_eq!(slack["has_secret"], false);
    assert_eq!(slack["group_wait"], "1m");

    // Stored as given: the notifier gets the full URL and the secret.
    let stored = store::channels::get(&app.pool, webhook_id.parse().unwrap())
        .await
        .unwrap()
        .expect("the webhook is stored");
    assert_eq!(stored.secret.as_deref(), Some(SECRET));
    let stored_slack = store::channels::get(&app.pool, slack_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored_slack.url.as_deref(), Some(SLACK_URL));

    // Lists: oldest first by default, by name on request, paged.
    let (status, list) = app.get(&base).await;
    assert_eq!(status, 200, "{list}");
    seen.push(list.clone());
    let ids: Vec<_> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, [in_app_id.as_str(), &webhook_id, &slack_id]);
    assert_eq!(list["meta"], json!({"total": 3, "limit": 50, "offset": 0}));
    assert_eq!(list["data"][1], webhook, "lists show what create showed");
    let (_, by_name) = app.get(&format!("{base}?sort_by=name")).await;
    let names: Vec<_> = by_name["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["#video-alerts", "On-call hook", "in_app"]);
    let (_, page) = app
        .get(&format!(
            "{base}?sort_by=name&sort_dir=desc&limit=1&offset=1"
        ))
        .await;
    assert_eq!(page["data"][0]["name"], "On-call hook");
    assert_eq!(page["meta"]["total"], 3);
    for bad in ["sort_by=url", "limit=0", "colour=red"] {
        let (status, body) = app.get(&format!("{base}?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (_, other) = app.get(&format!("/api/departments/{audio}/channels")).await;
    assert_eq!(
        other["data"],
        json!([]),
        "channels belong to one department"
    );
    assert_eq!(other["meta"]["total"], 0);

    // Read one.
    let (status, got) = app.get(&format!("{base}/{slack_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(got["data"], slack);
    seen.push(got);

    // Patch: only the given fields change; a new secret replaces the old one.
    let (status, patched) = app
        .patch(
            &format!("{base}/{webhook_id}"),
            &json!({"enabled": true, "secret": ROTATED, "repeat_interval": null, "type": "webhook"}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    seen.push(patched.clone());
    let patched = &patched["data"];
    assert_eq!(patched["enabled"], true);
    assert_eq!(patched["repeat_interval"], Value::Null);
    assert_eq!(patched["has_secret"], true);
    assert_eq!(patched["name"], "On-call hook");
    assert_eq!(patched["group_wait"], "30s");
    assert_eq!(patched["min_severity"], "HIGH");
    assert_eq!(patched["url"], webhook["url"]);
    let rotated = store::channels::get(&app.pool, webhook_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rotated.secret.as_deref(), Some(ROTATED));
    assert_eq!(rotated.repeat_interval, None);
    // Patching a Slack channel keeps its full URL, though only the masked one was shown.
    let (status, renamed) = app
        .patch(
            &format!("{base}/{slack_id}"),
            &json!({"name": "#video", "min_severity": "MEDIUM"}),
        )
        .await;
    assert_eq!(status, 200, "{renamed}");
    seen.push(renamed.clone());
    assert_eq!(renamed["data"]["url"], "https://hooks.slack.com/…");
    let slack_now = store::channels::get(&app.pool, slack_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(slack_now.url.as_deref(), Some(SLACK_URL));
    assert_eq!(slack_now.name, "#video");
    assert_eq!(slack_now.min_severity, Severity::Medium);
    // Patching the in-app channel's name to null names it after its type again.
    let (status, in_app_patched) = app
        .patch(
            &format!("{base}/{in_app_id}"),
            &json!({"name": "Video desk"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(in_app_patched["data"]["name"], "Video desk");
    let (_, unnamed) = app
        .patch(&format!("{base}/{in_app_id}"), &json!({"name": null}))
        .await;
    assert_eq!(unnamed["data"]["name"], "in_app");

    // The type cannot change; unknown and read-only fields are refused.
    refused(
        &app.patch(&format!("{base}/{slack_id}"), &json!({"type": "webhook"}))
            .await,
        "type",
        "cannot change",
    );
    refused(
        &app.patch(&format!("{base}/{slack_id}"), &json!({"has_secret": false}))
            .await,
        "has_secret",
        "editable fields are",
    );
    refused(
        &app.patch(
            &format!("{base}/{slack_id}"),
            &json!({"id": Uuid::new_v4()}),
        )
        .await,
        "id",
        "editable fields are",
    );

    // 404: an unknown department, an unknown channel, or another department's channel.
    let unknown = Uuid::new_v4();
    let slack_in_audio = format!("/api/departments/{audio}/channels/{slack_id}");
    for (status, body) in [
        app.get(&format!("/api/departments/{unknown}/channels"))
            .await,
        app.post(
            &format!("/api/departments/{unknown}/channels"),
            &json!({"type": "in_app"}),
        )
        .await,
        app.get(&format!("{base}/{unknown}")).await,
        app.patch(&format!("{base}/{unknown}"), &json!({"enabled": false}))
            .await,
        delete(&app, &format!("{base}/{unknown}")).await,
        app.get(&slack_in_audio).await,
        app.patch(&slack_in_audio, &json!({"enabled": false})).await,
        delete(&app, &slack_in_audio).await,
    ] {
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    let (_, body) = app.get(&format!("{base}/{unknown}")).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has no channel"),
        "{body}"
    );
    let (status, _) = app.get(&format!("{base}/not-a-uuid")).await;
    assert_eq!(status, 400);
    let still = store::channels::get(&app.pool, slack_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(still.enabled, "another department's patch changed nothing");

    // Delete.
    let (status, body) = delete(&app, &format!("{base}/{slack_id}")).await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = app.get(&format!("{base}/{slack_id}")).await;
    assert_eq!(status, 404);
    let (status, _) = delete(&app, &format!("{base}/{slack_id}")).await;
    assert_eq!(status, 404);

    // Deleting the department deletes its channels.
    let (status, _) = delete(&app, &format!("/api/departments/{video}")).await;
    assert_eq!(status, 204);
    let gone = store::channels::get(&app.pool, webhook_id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(gone, None);

    for body in &seen {
        no_secret(body);
    }
    app.stop().await;
}

#[tokio::test]
async fn invalid_channels_are_refused_naming_the_field() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let video = department(&app, "Video").await;
    let base = format!("/api/departments/{video}/channels");
    let hook = "https://hooks.example.com/x";

    for (body, field, says) in [
        (json!({}), "type", "missing field"),
        (json!({"type": "email"}), "type", "unknown variant"),
        (
            json!({"type": "in_app", "colour": "red"}),
            "colour",
            "unknown field",
        ),
        (
            json!({"type": "webhook", "secret": SECRET}),
            "url",
            "is required for webhook",
        ),
        (json!({"type": "slack"}), "url", "is required for slack"),
        (
            json!({"type": "in_app", "url": hook}),
            "url",
            "not allowed for in_app",
        ),
        (
            json!({"type": "webhook", "url": hook}),
            "secret",
            "is required for webhook",
        ),
        (
            json!({"type": "webhook", "url": hook, "secret": "short"}),
            "secret",
            "16 to 256",
        ),
        (
            json!({"type": "webhook", "url": hook, "secret": "s".repeat(257)}),
            "secret",
            "16 to 256",
        ),
        (
            json!({"type": "slack", "url": hook, "secret": SECRET}),
            "secret",
            "not allowed for slack",
        ),
        (
            json!({"type": "in_app", "secret": SECRET}),
            "secret",
            "not allowed for in_app",
        ),
        (
            json!({"type": "webhook", "url": "ftp://example.com/x", "secret": SECRET}),
            "url",
            "http or https",
        ),
        (
            json!({"type": "slack", "url": "not a url"}),
            "url",
            "is not a URL",
        ),
        (
            json!({"type": "slack", "url": "https://user:pw@hooks.example.com/"}),
            "url",
            "credentials",
        ),
        (
            json!({"type": "slack", "url": format!("https://example.com/{}", "x".repeat(2048))}),
            "url",
            "at most 2048",
        ),
        (
            json!({"type": "slack", "url": hook, "group_wait": "61m"}),
            "group_wait",
            "at most 1h",
        ),
        (
            json!({"type": "slack", "url": hook, "group_wait": "1500ms"}),
            "group_wait",
            "whole seconds",
        ),
        (
            json!({"type": "slack", "url": hook, "group_wait": "soon"}),
            "group_wait",
            "not a duration",
        ),
        (
            json!({"type": "in_app", "group_wait": "30s"}),
            "group_wait",
            "must be 0 for in_app",
        ),
        (
            json!({"type": "slack", "url": hook, "repeat_interval": "30s"}),
            "repeat_interval",
            "1m to 7d",
        ),
        (
            json!({"type": "slack", "url": hook, "repeat_interval": "8d"}),
            "repeat_interval",
            "maximum of 7d",
        ),
        (
            json!({"type": "in_app", "name": "  "}),
            "name",
            "must not be empty",
        ),
        (
            json!({"type": "in_app", "name": "n".repeat(101)}),
            "name",
            "at most 100",
        ),
        (
            json!({"type": "in_app", "min_severity": "URGENT"}),
            "min_severity",
            "unknown variant",
        ),
        (
            json!({"type": "in_app", "enabled": "yes"}),
            "enabled",
            "invalid type",
        ),
    ] {
        refused(&app.post(&base, &body).await, field, says);
    }
    // The boundaries are accepted.
    for body in [
        json!({"type": "webhook", "url": hook, "secret": "s".repeat(16), "group_wait": "1h", "repeat_interval": "1m"}),
        json!({"type": "webhook", "url": hook, "secret": "s".repeat(256), "group_wait": "0", "repeat_interval": "7d"}),
        json!({"type": "in_app", "name": "n".repeat(100), "group_wait": "0s"}),
    ] {
        channel(&app, &video, body).await;
    }

    // A patch is validated as a whole, after merging.
    let webhook = channel(
        &app,
        &video,
        json!({"type": "webhook", "url": hook, "secret": SECRET}),
    )
    .await;
    let path = format!("{base}/{}", webhook["id"].as_str().unwrap());
    for (patch, field, says) in [
        (json!({"secret": null}), "secret", "is required for webhook"),
        (json!({"secret": "short"}), "secret", "16 to 256"),
        (json!({"url": null}), "url", "is required for webhook"),
        (
            json!({"url": "gopher://example.com"}),
            "url",
            "http or https",
        ),
        (json!({"group_wait": "2h"}), "group_wait", "at most 1h"),
        (
            json!({"repeat_interval": "10s"}),
            "repeat_interval",
            "1m to 7d",
        ),
        (json!({"enabled": null}), "enabled", "invalid type"),
    ] {
        refused(&app.patch(&path, &patch).await, field, says);
    }
    let unchanged =
        store::channels::get(&app.pool, webhook["id"].as_str().unwrap().parse().unwrap())
            .await
            .unwrap()
            .unwrap();
    assert_eq!(
        unchanged.secret.as_deref(),
        Some(SECRET),
        "refused patches change nothing"
    );
    assert_eq!(unchanged.url.as_deref(), Some(hook));
    app.stop().await;
}

#[tokio::test]
async fn viewers_read_channels_and_only_admins_change_them() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let video = department(&app, "Video").await;
    let base = app.url(&format!("/api/departments/{video}/channels"));
    let existing = channel(&app, &video, json!({"type": "in_app"})).await;
    let one = format!("{base}/{}", existing["id"].as_str().unwrap());
    let body = json!({"type": "in_app", "name": "more"});

    for role in [KeyRole::Viewer, KeyRole::Operator] {
        let client = app.client(role).await;
        let (status, list) = decode(client.get(&base).send().await.unwrap()).await;
        assert_eq!(status, 200, "{role} lists: {list}");
        assert_eq!(list["meta"]["total"], 1);
        let (status, _) = decode(client.get(&one).send().await.unwrap()).await;
        assert_eq!(status, 200, "{role} reads one");
        for request in [
            client.post(&base).json(&body),
            client.patch(&one).json(&json!({"enabled": false})),
            client.delete(&one),
        ] {
            let (status, refused) = decode(request.send().await.unwrap()).await;
            assert_eq!(status, 403, "{role} may not write: {refused}");
            assert_eq!(refused["error"]["code"], "forbidden");
        }
    }
    let (status, _) = decode(reqwest::Client::new().get(&base).send().await.unwrap()).await;
    assert_eq!(status, 401, "no key, no channels");
    let (status, list) = app.get(&format!("/api/departments/{video}/channels")).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"], json!([existing]), "nothing was changed");

    let admin = app.client(KeyRole::Admin).await;
    let (status, _) = decode(admin.post(&base).json(&body).send().await.unwrap()).await;
    assert_eq!(status, 201);
    let (status, _) = decode(admin.delete(&one).send().await.unwrap()).await;
    assert_eq!(status, 204);
    app.stop().await;
}

#[tokio::test]
async fn private_targets_are_refused_unless_allowed() {
    let stack = Stack::start().await;
    let mut settings = stack.settings(&Role::ALL);
    settings.notify.targets.allow_private = false;
    let app = App::start_with(settings).await;
    let video = department(&app, "Video").await;
    let base = format!("/api/departments/{video}/channels");

    for url in [
        "http://127.0.0.1:9000/hook",
        "http://localhost:8080/",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.7/hook",
        "http://[::1]/hook",
    ] {
        for body in [
            json!({"type": "webhook", "url": url, "secret": SECRET}),
            json!({"type": "slack", "url": url}),
        ] {
            let response = app.post(&base, &body).await;
            refused(&response, "url", "private address");
            let message = response.1["error"]["message"].as_str().unwrap();
            assert!(message.contains("resolves to"), "{message}");
            assert!(
                message.contains("TRACELY_WEBHOOK_ALLOW_PRIVATE"),
                "the message says how to allow it: {message}"
            );
        }
    }
    let (_, list) = app.get(&base).await;
    assert_eq!(list["meta"]["total"], 0, "nothing refused was stored");

    // A public address is accepted, and cannot be patched to a private one.
    let public = channel(
        &app,
        &video,
        json!({"type": "webhook", "url": "https://203.0.113.7/hook", "secret": SECRET}),
    )
    .await;
    let path = format!("{base}/{}", public["id"].as_str().unwrap());
    refused(
        &app.patch(&path, &json!({"url": "http://192.168.1.20/hook"}))
            .await,
        "url",
        "private address",
    );
    let (_, got) = app.get(&path).await;
    assert_eq!(got["data"]["url"], "https://203.0.113.7/hook");
    app.stop().await;
}

#[tokio::test]
async fn the_notifier_reads_enabled_channels_of_its_departments() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let video = department(&app, "Video").await;
    let audio = department(&app, "Audio").await;
    let quiet = department(&app, "Quiet").await;

    let hook = channel(
        &app,
        &video,
        json!({"type": "webhook", "name": "hook", "url": "https://hooks.example.com/v", "secret": SECRET,
               "min_severity": "HIGH", "send_resolved": false, "group_wait": "45s", "repeat_interval": "2h"}),
    )
    .await;
    let off = channel(
        &app,
        &video,
        json!({"type": "in_app", "name": "off", "enabled": false}),
    )
    .await;
    // Audio's channel comes between two of Video's, so creation order is not department order.
    let slack = channel(
        &app,
        &audio,
        json!({"type": "slack", "name": "slack", "url": SLACK_URL}),
    )
    .await;
    let desk = channel(&app, &video, json!({"type": "in_app", "name": "desk"})).await;
    channel(&app, &quiet, json!({"type": "in_app", "name": "not asked"})).await;
    let id = |c: &Value| -> Uuid { c["id"].as_str().unwrap().parse().unwrap() };
    let (video, audio): (Uuid, Uuid) = (video.parse().unwrap(), audio.parse().unwrap());

    let expected_hook = Channel {
        id: id(&hook),
        department_id: video,
        name: "hook".into(),
        kind: ChannelKind::Webhook,
        url: Some("https://hooks.example.com/v".into()),
        secret: Some(SECRET.into()),
        min_severity: Severity::High,
        send_resolved: false,
        group_wait: Duration::from_secs(45),
        repeat_interval: Some(Duration::from_secs(2 * 3600)),
        enabled: true,
    };
    let expected_slack = Channel {
        id: id(&slack),
        department_id: audio,
        name: "slack".into(),
        kind: ChannelKind::Slack,
        url: Some(SLACK_URL.into()),
        secret: None,
        min_severity: Severity::Low,
        send_resolved: true,
        group_wait: Duration::ZERO,
        repeat_interval: None,
        enabled: true,
    };

    let found = store::channels::enabled_for_departments(&app.pool, &[audio, video])
        .await
        .unwrap();
    let mut by_department = vec![
        (video, vec![id(&hook), id(&desk)]),
        (audio, vec![id(&slack)]),
    ];
    by_department.sort();
    let expected_ids: Vec<Uuid> = by_department.into_iter().flat_map(|(_, ids)| ids).collect();
    let found_ids: Vec<Uuid> = found.iter().map(|c| c.id).collect();
    assert_eq!(
        found_ids, expected_ids,
        "enabled channels only, by department, then as created"
    );
    assert!(found.contains(&expected_hook), "{found:?}");
    assert!(found.contains(&expected_slack), "{found:?}");
    assert!(!found_ids.contains(&id(&off)));

    let only_video = store::channels::enabled_for_departments(&app.pool, &[video])
        .await
        .unwrap();
    assert_eq!(
        only_video.iter().map(|c| c.id).collect::<Vec<_>>(),
        [id(&hook), id(&desk)]
    );
    assert!(store::channels::enabled_for_departments(&app.pool, &[])
        .await
        .unwrap()
        .is_empty());

    // `get` returns a channel enabled or not, and works inside a transaction.
    let mut tx = app.pool.begin().await.unwrap();
    let disabled = store::channels::get(&mut *tx, id(&off))
        .await
        .unwrap()
        .expect("a disabled channel is still found");
    assert!(!disabled.enabled);
    assert_eq!(disabled.kind, ChannelKind::InApp);
    assert_eq!(disabled.url, None);
    assert_eq!(
        store::channels::get(&mut *tx, id(&hook)).await.unwrap(),
        Some(expected_hook)
    );
    assert_eq!(
        store::channels::get(&mut *tx, Uuid::new_v4())
            .await
            .unwrap(),
        None
    );
    tx.commit().await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn rules_name_extra_departments_that_must_exist_and_stay() {
    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let video = department(&app, "Video").await;
    let audio = department(&app, "Audio").await;
    let network = department(&app, "Network").await;
    let mut sorted = vec![audio.clone(), network.clone()];
    sorted.sort();

    // Round trip: given in any order, repeats once, shown sorted by id everywhere.
    let (status, created) = app
        .post(
            "/api/rules",
            &json!({"metric_type": "LATENCY_MS", "operator": ">", "threshold": 150, "severity": "HIGH",
                    "department_id": video, "extra_department_ids": [network, audio, network]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let rule = created["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["data"]["extra_department_ids"], json!(sorted));
    let (_, got) = app.get(&format!("/api/rules/{rule}")).await;
    assert_eq!(got["data"]["extra_department_ids"], json!(sorted));
    let plain = app
        .rule(json!({"metric_type": "PACKET_LOSS", "operator": ">", "threshold": 2, "severity": "LOW"}))
        .await;
    let (_, list) = app.get("/api/rules").await;
    let extras: Vec<_> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].clone(), r["extra_department_ids"].clone()))
        .collect();
    assert_eq!(
        extras,
        [(json!(rule), json!(sorted)), (json!(plain), json!([]))],
        "lists carry them too, empty by default"
    );
    let rule_id: Uuid = rule.parse().unwrap();
    let sorted_ids: Vec<Uuid> = sorted.iter().map(|d| d.parse().unwrap()).collect();
    assert_eq!(
        store::rules::extra_departments(&app.pool, rule_id)
            .await
            .unwrap(),
        sorted_ids
    );
    assert_eq!(
        store::rules::extra_departments(&app.pool, plain.parse().unwrap())
            .await
            .unwrap(),
        Vec::<Uuid>::new()
    );

    // Patching other fields keeps them; patching the list replaces it.
    let (status, patched) = app
        .patch(&format!("/api/rules/{rule}"), &json!({"threshold": 200}))
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["data"]["extra_department_ids"], json!(sorted));
    let (status, patched) = app
        .patch(
            &format!("/api/rules/{rule}"),
            &json!({"extra_department_ids": [network]}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["data"]["extra_department_ids"], json!([network]));

    // Unknown departments are refused like an unknown department_id; so is the rule's own.
    let unknown = Uuid::new_v4();
    let create = |extra: Value| {
        json!({"metric_type": "LATENCY_MS", "operator": ">", "threshold": 1, "severity": "LOW",
               "department_id": video, "extra_department_ids": extra})
    };
    refused(
        &app.post("/api/rules", &create(json!([audio, unknown])))
            .await,
        "extra_department_ids",
        &format!("department {unknown} does not exist"),
    );
    refused(
        &app.post(
            "/api/rules",
            &json!({"metric_type": "LATENCY_MS", "operator": ">", "threshold": 1, "severity": "LOW", "department_id": unknown}),
        )
        .await,
        "department_id",
        &format!("department {unknown} does not exist"),
    );
    refused(
        &app.post("/api/rules", &create(json!([video]))).await,
        "extra_department_ids",
        "the rule's own department_id",
    );
    refused(
        &app.patch(
            &format!("/api/rules/{rule}"),
            &json!({"extra_department_ids": [unknown]}),
        )
        .await,
        "extra_department_ids",
        "does not exist",
    );
    // Moving the rule into a department it also lists is refused until the list changes.
    refused(
        &app.patch(
            &format!("/api/rules/{rule}"),
            &json!({"department_id": network}),
        )
        .await,
        "extra_department_ids",
        "own department_id",
    );
    let (status, moved) = app
        .patch(
            &format!("/api/rules/{rule}"),
            &json!({"department_id": network, "extra_department_ids": [video]}),
        )
        .await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["data"]["department_id"], json!(network));
    assert_eq!(moved["data"]["extra_department_ids"], json!([video]));
    let (_, rules) = app.get("/api/rules").await;
    assert_eq!(rules["meta"]["total"], 2, "no refused rule was stored");

    // A department a rule notifies cannot be deleted until the rule lets it go.
    let (status, body) = delete(&app, &format!("/api/departments/{video}")).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("extra_department_ids"),
        "{body}"
    );
    let (status, body) = app
        .patch(
            &format!("/api/rules/{rule}"),
            &json!({"extra_department_ids": []}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["extra_department_ids"], json!([]));
    let (status, _) = delete(&app, &format!("/api/departments/{video}")).await;
    assert_eq!(status, 204);

    // Deleting a rule forgets its extra departments, and frees them.
    let (status, _) = app
        .patch(
            &format!("/api/rules/{rule}"),
            &json!({"extra_department_ids": [audio]}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = delete(&app, &format!("/api/rules/{rule}")).await;
    assert_eq!(status, 204);
    assert!(store::rules::extra_departments(&app.pool, rule_id)
        .await
        .unwrap()
        .is_empty());
    let (status, _) = delete(&app, &format!("/api/departments/{audio}")).await;
    assert_eq!(status, 204);
    app.stop().await;
}
