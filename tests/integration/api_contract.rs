//! The API document matches the API: a property-based fuzzer (schemathesis) generates requests
//! from `/api/openapi.json` for every operation and checks that no response is a 5xx and none
//! contradicts the document (status, content type, headers, body schema).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::support::{eventually, publish, sample, App, Stack};
use serde_json::{json, Value};
use store::notifications::NewNotification;
use tracely::config::{HttpConfig, Role};

/// The schemathesis CLI: on PATH, or where pip puts scripts.
fn schemathesis() -> Option<PathBuf> {
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(scripts)
        .map(|dir| dir.join("schemathesis"))
        .find(|bin| bin.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_honours_its_openapi_document_under_fuzzing() {
    let Some(bin) = schemathesis() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "schemathesis is required under CI; run `make deps`"
        );
        eprintln!(
            "\n*** SKIPPED the_api_honours_its_openapi_document_under_fuzzing: schemathesis is \
             not installed (run `make deps`) ***\n"
        );
        return;
    };
    let stack = Stack::start().await;
    let mut settings = stack.settings(&Role::ALL);
    // The fuzzer sends thousands of requests; the limit itself is tested elsewhere.
    settings.http = HttpConfig {
        rate_limit: api::auth::RateLimit {
            per_second: 100_000.try_into().unwrap(),
            burst: 100_000.try_into().unwrap(),
        },
        ..HttpConfig::default()
    };
    let app = App::start_with(settings).await;

    // Real resources for every path with an id, so the fuzzer works on them (lifecycle moves,
    // patches, deletions) and not only on ids that do not exist; those are tested elsewhere.
    let (status, department) = app
        .post("/api/departments", &json!({"name": "Video"}))
        .await;
    assert_eq!(status, 201);
    let channels = format!(
        "/api/departments/{}/channels",
        department["data"]["id"].as_str().unwrap()
    );
    let webhook = json!({"type": "webhook", "url": "https://hooks.example.com/tracely",
                         "secret": "0123456789abcdef"});
    let (status, channel) = app.post(&channels, &webhook).await;
    assert_eq!(status, 201, "{channel}");
    app.seed_rules().await;
    publish(
        &stack.js().await,
        &[sample("S1", "LATENCY_MS", 400.0, "2026-01-01T00:00:00Z")],
    )
    .await;
    let incident = eventually("an incident", Duration::from_secs(20), || async {
        app.incidents("").await.first().cloned()
    })
    .await;
    let incident = incident["id"].as_str().unwrap().to_owned();
    let (status, comment) = app
        .post(
            &format!("/api/incidents/{incident}/comments"),
            &json!({"body": "looking"}),
        )
        .await;
    assert_eq!(status, 201);
    let (_, rules) = app.get("/api/rules").await;
    // A rule the fuzzer does not work on notifies the department, so the department (and with
    // it the channel routes) survives the fuzzer's deletions: those get 409.
    let keeper = json!({"metric_type": "LATENCY_MS", "operator": ">", "threshold": 900,
                        "severity": "LOW", "extra_department_ids": [department["data"]["id"]]});
    app.rule(keeper).await;
    let (status, key) = app
        .post("/api/keys", &json!({"name": "to revoke", "role": "viewer"}))
        .await;
    assert_eq!(status, 201);
    let notification = NewNotification {
        id: uuid::Uuid::new_v4(),
        department_id: None,
        incident_id: None,
        kind: "incident_opened".into(),
        severity: None,
        title: "fuzz".into(),
        body: String::new(),
    };
    store::notifications::insert(&app.pool, &notification)
        .await
        .unwrap();
    let (status, silence) = app
        .post(
            "/api/silences",
            &json!({"service_id": "S1", "recurrence": {"days": ["sat"], "start": "02:00", "duration": "4h"}}),
        )
        .await;
    assert_eq!(status, 201, "{silence}");
    // A backfill job over the one sample, for the job routes to work on.
    let (status, backfill) = app
        .post(
            "/api/backfills",
            &json!({"from": 1, "rule_ids": [rules["data"][0]["id"]]}),
        )
        .await;
    assert_eq!(status, 202, "{backfill}");
    let config = stack.path().join("schemathesis.toml");
    let operation = |path: &str, parameters: &[(&str, &Value)]| {
        let parameters: Vec<String> = parameters
            .iter()
            .map(|(name, value)| format!("\"path.{name}\" = {}", json!(value.as_str().unwrap())))
            .collect();
        format!(
            "[[operations]]\ninclude-path = \"{path}\"\nparameters = {{ {} }}\n\n",
            parameters.join(", ")
        )
    };
    let incident = json!(incident);
    let text = [
        operation("/api/incidents/{id}", &[("id", &incident)]),
        operation("/api/incidents/{id}/events", &[("id", &incident)]),
        operation("/api/incidents/{id}/comments", &[("id", &incident)]),
        operation(
            "/api/incidents/{id}/comments/{comment_id}",
            &[("id", &incident), ("comment_id", &comment["data"]["id"])],
        ),
        operation("/api/rules/{id}", &[("id", &rules["data"][0]["id"])]),
        operation(
            "/api/rules/{id}/backtest",
            &[("id", &rules["data"][0]["id"])],
        ),
        operation("/api/backfills/{id}", &[("id", &backfill["data"]["id"])]),
        operation(
            "/api/backfills/{id}/resume",
            &[("id", &backfill["data"]["id"])],
        ),
        operation(
            "/api/backfills/{id}/cancel",
            &[("id", &backfill["data"]["id"])],
        ),
        operation(
            "/api/departments/{id}",
            &[("id", &department["data"]["id"])],
        ),
        operation(
            "/api/departments/{id}/channels",
            &[("id", &department["data"]["id"])],
        ),
        operation(
            "/api/departments/{id}/channels/{channel_id}",
            &[
                ("id", &department["data"]["id"]),
                ("channel_id", &channel["data"]["id"]),
            ],
        ),
        operation("/api/keys/{id}", &[("id", &key["data"]["id"])]),
        operation("/api/services/{id}", &[("id", &json!("S1"))]),
        operation(
            "/api/notifications/{id}/read",
            &[("id", &json!(notification.id.to_string()))],
        ),
        operation(
            "/api/notifications/{id}/unread",
            &[("id", &json!(notification.id.to_string()))],
        ),
        operation("/api/silences/{id}", &[("id", &silence["data"]["id"])]),
    ]
    .concat();
    std::fs::write(&config, text).unwrap();

    let (key, url) = (app.admin_key.clone(), app.url("/api/openapi.json"));
    // Schemathesis keeps a cache in its working directory; keep it out of the repository.
    let workdir = stack.path().to_owned();
    let fuzz = move || {
        Command::new(&bin)
            .current_dir(&workdir)
            .arg("--config-file")
            .arg(&config)
            .args([
                "run",
                "--no-color",
                "--max-examples",
                "40",
                "--workers",
                "2",
                // An endless event stream; tests/dashboard_api.rs covers it.
                "--exclude-path",
                "/api/stream",
            ])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_headers_conformance,response_schema_conformance",
            ])
            .arg("--header")
            .arg(format!("Authorization: Bearer {key}"))
            .arg(&url)
            .output()
            .expect("running schemathesis")
    };
    // The fuzzer itself sometimes crashes generating a case (a "Runtime Error" inside its
    // libraries, listed under ERRORS). That says nothing about the API, so such a run is
    // repeated; any failed check (listed under FAILURES) fails at once.
    let mut attempts = 0;
    let report = loop {
        attempts += 1;
        let fuzz = fuzz.clone();
        let output = tokio::task::spawn_blocking(fuzz)
            .await
            .expect("the schemathesis task panicked");
        let report = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            break report;
        }
        let tool_crash_only = report.contains("Runtime Error") && !report.contains("FAILURES");
        assert!(
            tool_crash_only && attempts < 3,
            "schemathesis found responses that contradict the document (attempt {attempts}):\n\
             {report}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!("*** schemathesis crashed on its own (attempt {attempts}); running it again ***");
    };
    // A run that tested nothing would also succeed.
    assert!(
        report.contains("Tested: ") && !report.contains("Tested: 0"),
        "schemathesis tested no operation:\n{report}"
    );
    app.stop().await;
}
