//! The dashboard in real headless Chromium. Tracely runs here on its own nats-server and
//! Postgres; `e2e/dashboard.mjs` drives the browser with playwright-core through every page:
//! it watches an incident appear live, works it, previews a rule's backtest and reads a
//! notification, failing on any browser console error. Screenshots of each page are left in
//! `target/e2e-artifacts/dashboard/`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::support::{App, Stack};

/// The whole walk through the pages takes well under a minute; this only stops a hung browser.
const LIMIT: Duration = Duration::from_secs(300);

const SCREENSHOTS: &[&str] = &[
    "overview.png",
    "overview-violated.png",
    "incident.png",
    "rules.png",
    "notifications.png",
    "incidents.png",
    "departments.png",
    "search.png",
    "viewer.png",
];

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Chromium: `CHROMIUM_BIN`, or `chromium` on PATH.
fn chromium() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("CHROMIUM_BIN") {
        return Some(PathBuf::from(bin));
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .flat_map(|dir| [dir.join("chromium"), dir.join("chromium-browser")])
        .find(|bin| bin.is_file())
}

/// What is missing to run the browser, if anything.
fn missing() -> Option<&'static str> {
    if chromium().is_none() {
        return Some("chromium is not installed");
    }
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node {
        return Some("node is not installed");
    }
    if !repository()
        .join("e2e/node_modules/playwright-core/package.json")
        .is_file()
    {
        return Some("playwright-core is not installed in e2e/node_modules");
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_end_to_end_in_chromium() {
    if let Some(reason) = missing() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the browser test is required under CI, but {reason}; run `make e2e-deps`"
        );
        eprintln!(
            "\n*** SKIPPED the_dashboard_works_end_to_end_in_chromium: {reason} \
             (run `make e2e-deps`) ***\n"
        );
        return;
    }
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("e2e-artifacts/dashboard");
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).expect("creating the artifacts directory");

    let stack = Stack::start().await;
    let app = App::start(&stack).await;
    let mut command = tokio::process::Command::new("node");
    command
        .current_dir(repository())
        .arg("e2e/dashboard.mjs")
        .env("TRACELY_URL", app.url(""))
        .env("TRACELY_KEY", &app.admin_key)
        .env("TRACELY_ARTIFACTS", &artifacts)
        .env("CHROMIUM_BIN", chromium().unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("starting node");
    let output = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("the browser test hung")
        .expect("running node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the browser test failed ({}); screenshots are in {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status,
        artifacts.display()
    );
    for name in SCREENSHOTS {
        let size = std::fs::metadata(artifacts.join(name))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(size > 10_000, "screenshot {name} is missing or empty");
    }
    app.stop().await;
}
