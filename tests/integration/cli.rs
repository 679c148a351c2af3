//! The `tracely` command line as a user meets it: migrate, publish with bad lines, and the
//! errors for bad configuration.

use std::process::Output;

use crate::support::Stack;
use tokio::process::Command;

fn tracely() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tracely"));
    // Keep a developer's local stack (./.tracely/dev.env) out of the picture.
    cmd.env("TRACELY_DATA_DIR", "/nonexistent-tracely-data-dir");
    // ...and a developer's Meilisearch.
    cmd.env_remove("MEILI_URL").env_remove("MEILI_BIN");
    cmd
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_schema() {
    let stack = Stack::start().await;
    let output = tracely()
        .arg("migrate")
        .env("DATABASE_URL", &stack.database_url)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let pool = stack.pool().await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "api_keys",
            "backfills",
            "deliveries",
            "delivery_attempts",
            "delivery_items",
            "departments",
            "incident_comments",
            "incident_events",
            "incident_search",
            "incidents",
            "metric_rollups",
            "metric_samples",
            "notification_channels",
            "notifications",
            "outbox",
            "rule_departments",
            "rules",
            "services",
            "silences"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_made_listed_and_revoked_from_the_command_line() {
    let stack = Stack::start().await;
    let create = tracely()
        .args([
            "apikey", "create", "--role", "operator", "--name", "on-call",
        ])
        .env("DATABASE_URL", &stack.database_url)
        .output()
        .await
        .unwrap();
    assert!(create.status.success(), "{}", text(&create));
    let key = String::from_utf8_lossy(&create.stdout).trim().to_owned();
    assert!(
        key.starts_with("trk_") && key.len() == 68,
        "stdout is only the key: {key:?}"
    );

    let list = tracely()
        .args(["apikey", "list"])
        .env("DATABASE_URL", &stack.database_url)
        .output()
        .await
        .unwrap();
    let listed = text(&list);
    assert!(
        listed.contains("operator") && listed.contains("on-call") && listed.contains("active"),
        "{listed}"
    );
    assert!(
        !listed.contains(&key[12..]),
        "the secret is never listed: {listed}"
    );

    let pool = stack.pool().await;
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM api_keys WHERE name = 'on-call'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let revoke = tracely()
        .args(["apikey", "revoke", &id.to_string()])
        .env("DATABASE_URL", &stack.database_url)
        .output()
        .await
        .unwrap();
    assert!(revoke.status.success(), "{}", text(&revoke));
    let revoked: bool =
        sqlx::query_scalar("SELECT revoked_at IS NOT NULL FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(revoked);

    // Mistakes are named.
    let bad_role = tracely()
        .args(["apikey", "create", "--role", "root"])
        .env("DATABASE_URL", &stack.database_url)
        .output()
        .await
        .unwrap();
    assert!(!bad_role.status.success());
    assert!(
        text(&bad_role).contains("viewer, operator or admin"),
        "{}",
        text(&bad_role)
    );
    let unknown = tracely()
        .args(["apikey", "revoke", &uuid::Uuid::new_v4().to_string()])
        .env("DATABASE_URL", &stack.database_url)
        .output()
        .await
        .unwrap();
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("no key with id"),
        "{}",
        text(&unknown)
    );
}

#[tokio::test]
async fn the_openapi_document_is_printed_for_clients() {
    let output = tracely().arg("openapi").output().await.unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/api/incidents/{id}"]["patch"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reports_rejected_lines_and_fails() {
    let stack = Stack::start().await;
    let js = stack.js().await;
    let version = js.client().server_info().version;
    consumers::topology::apply(&js, &version, &consumers::Topology::built_in())
        .await
        .unwrap();
    let file = stack.path().join("samples.ndjson");
    std::fs::write(
        &file,
        concat!(
            r#"{"service_id":"S1","metric_type":"LATENCY_MS","value":180,"recorded_at":"2026-03-12T09:00:00Z","id":"a"}"#, "\n",
            r#"{"service_id":"S1","metric_type":"LATENCY_MS","value":"fast","recorded_at":"2026-03-12T09:00:01Z"}"#, "\n",
            "\n",
            r#"{"service_id":"S1","metric_type":"LATENCY_MS","value":180,"recorded_at":"2026-03-12T09:00:00Z","id":"a"}"#, "\n",
            "not json\n",
        ),
    )
    .unwrap();
    let output = tracely()
        .args(["publish", "--file"])
        .arg(&file)
        .env("TRACELY_NATS_URL", stack.nats.url())
        .output()
        .await
        .unwrap();
    let out = text(&output);
    assert!(
        !output.status.success(),
        "rejected lines must fail the command: {out}"
    );
    assert!(
        out.contains("published 2 samples: 1 stored, 1 duplicates; 2 rejected"),
        "{out}"
    );
    assert!(out.contains("line 2: field `value`"), "{out}");
    assert!(out.contains("line 5: malformed JSON"), "{out}");
    let mut metrics = js.get_stream("METRICS").await.unwrap();
    assert_eq!(metrics.info().await.unwrap().state.messages, 1);
}

#[tokio::test]
async fn configuration_mistakes_are_named() {
    let output = tracely()
        .args(["migrate", "--database-url", "postgres://127.0.0.1:1/x"])
        .env("TRACELY_HTTP_ADRR", "127.0.0.1:1")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(
        text(&output).contains("TRACELY_HTTP_ADRR"),
        "{}",
        text(&output)
    );

    let output = tracely()
        .args([
            "publish",
            "--file",
            "/no/such/file.csv",
            "--nats-url",
            "nats://127.0.0.1:1",
        ])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(
        text(&output).contains("/no/such/file.csv"),
        "{}",
        text(&output)
    );

    let output = tracely()
        .args([
            "publish",
            "--file",
            "samples.txt",
            "--nats-url",
            "nats://127.0.0.1:1",
        ])
        .output()
        .await
        .unwrap();
    assert!(text(&output).contains("--format"), "{}", text(&output));

    let output = tracely()
        .args([
            "run",
            "--nats-url",
            "nats://x",
            "--database-url",
            "postgres://x",
            "--roles",
            "evaluate,judge",
        ])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(text(&output).contains("judge"), "{}", text(&output));

    // Reindexing needs a Meilisearch to rebuild, and says where it could not reach it.
    let output = tracely()
        .args(["reindex", "--database-url", "postgres://127.0.0.1:1/x"])
        .env_remove("MEILI_URL")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(text(&output).contains("MEILI_URL"), "{}", text(&output));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let output = tracely()
        .args(["reindex", "--database-url", "postgres://127.0.0.1:1/x"])
        .env("MEILI_URL", format!("http://{closed}"))
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(
        text(&output).contains(&format!("reaching Meilisearch at http://{closed}")),
        "{}",
        text(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_the_stack_with_an_admin_key_in_dev_env() {
    use tokio::io::{AsyncBufReadExt as _, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let mut dev = Command::new(env!("CARGO_BIN_EXE_tracely"))
        .args(["dev", "--http-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        // A developer's Meilisearch must not receive this stack's incidents.
        .env_remove("MEILI_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let dashboard = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.trim().strip_prefix("Dashboard") {
                return url.trim().to_owned();
            }
        }
        panic!("tracely dev ended without printing the dashboard");
    })
    .await
    .expect("tracely dev printed no dashboard within 2 minutes");

    let env_file = dir.path().join("dev.env");
    let env = std::fs::read_to_string(&env_file).unwrap();
    let key = env
        .lines()
        .find_map(|l| l.strip_prefix("TRACELY_API_KEY="))
        .expect("dev.env names TRACELY_API_KEY")
        .to_owned();
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "dev.env holds an admin key");
    let (base, fragment) = dashboard
        .split_once("/?key=")
        .expect("the link carries the key");
    assert_eq!(fragment, key);

    let client = reqwest::Client::new();
    let with_key = client
        .post(format!("{base}/api/departments"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"name": "Video"}))
        .send()
        .await
        .unwrap();
    assert_eq!(with_key.status(), 201, "the key is an admin key");
    let without = client
        .get(format!("{base}/api/incidents"))
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), 401);

    let pid = dev.id().unwrap() as i32;
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = tokio::time::timeout(std::time::Duration::from_secs(60), dev.wait())
        .await
        .expect("tracely dev stops on Ctrl-C")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(!env_file.exists(), "dev.env is removed with the stack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_and_writes_its_section_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("BENCHMARKS.md");
    std::fs::write(&file, "# Benchmarks\n\nOther results stay.\n").unwrap();
    let run = || async {
        let out = tracely()
            .args(["bench", "--samples", "10000", "--series", "200"])
            .args(["--level-secs", "2", "--probes-per-sec", "20"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--write")
            .arg(&file)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    let printed = run().await;
    for expected in [
        "1/3 raw JetStream",
        "2/3 Tracely sustained",
        "3/3 detection latency",
    ] {
        assert!(printed.contains(expected), "{printed}");
    }
    run().await;
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(
        written.starts_with("# Benchmarks\n\nOther results stay.\n"),
        "{written}"
    );
    assert_eq!(
        written.matches("## End to end (`tracely bench`)").count(),
        1,
        "replaced, not appended: {written}"
    );
    assert!(
        written.contains("| 50% |") && written.contains("probes"),
        "{written}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "the benchmark's data is removed"
    );
}
