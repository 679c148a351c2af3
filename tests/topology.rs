//! The JetStream topology is applied idempotently, and a changed setting in the file updates
//! the running stream and consumer on the next start.

mod support;

use std::time::Duration;

use consumers::topology::{self, Topology, BUILT_IN};
use support::{App, Stack};
use tracely::config::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_twice_is_harmless_and_changes_are_applied_on_restart() {
    let stack = Stack::start().await;
    let js = stack.js().await;
    let version = js.client().server_info().version;
    let built_in = Topology::built_in();
    topology::apply(&js, &version, &built_in).await.unwrap();
    topology::apply(&js, &version, &built_in).await.unwrap();
    let mut metrics = js.get_stream("METRICS").await.unwrap();
    let config = metrics.info().await.unwrap().config.clone();
    assert_eq!(config.subjects, ["metrics.>"]);
    assert_eq!(config.max_age, Duration::from_secs(7 * 24 * 3600));
    assert!(config.duplicate_window >= Duration::from_secs(120));

    // As after a crash: the evaluator re-created its consumer at a stream sequence.
    metrics.delete_consumer("evaluate").await.unwrap();
    let mut rewound = built_in.consumer("evaluate").to_config("evaluate");
    rewound.deliver_policy =
        async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: 1 };
    metrics.create_consumer(rewound).await.unwrap();

    // Edit the file as an operator would, and start Tracely with it.
    let edited = BUILT_IN
        .replace("max_age_secs = 604800", "max_age_secs = 86400")
        .replacen("max_deliver = -1", "max_deliver = 7", 1);
    let path = stack.path().join("topology.toml");
    std::fs::write(&path, edited).unwrap();
    let mut settings = stack.settings(&[Role::Record]);
    settings.topology = Topology::load(&path).unwrap();
    let app = App::start_with(settings).await;

    let config = metrics.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, Duration::from_secs(86400));
    let evaluate = metrics.consumer_info("evaluate").await.unwrap();
    assert_eq!(evaluate.config.max_deliver, 7);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_old_server_is_named_in_the_error() {
    let stack = Stack::start().await;
    let js = stack.js().await;
    let err = topology::apply(&js, "2.9.22", &Topology::built_in())
        .await
        .unwrap_err();
    assert!(matches!(err, topology::TopologyError::ServerTooOld { .. }));
    let message = err.to_string();
    assert!(
        message.contains("2.9.22") && message.contains("2.10"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_consumer_takes_the_filter_subjects_of_the_file() {
    let stack = Stack::start().await;
    let js = stack.js().await;
    let version = js.client().server_info().version;
    // As deployed before record had filters.
    let unfiltered = BUILT_IN.replace(
        "filter_subjects = [\"incidents.*.opened\", \"incidents.*.updated\", \"incidents.*.resolved\"]",
        "",
    );
    let unfiltered = Topology::parse(&unfiltered).unwrap();
    assert!(unfiltered.consumer("record").filter_subjects.is_empty());
    topology::apply(&js, &version, &unfiltered).await.unwrap();
    let incidents = js.get_stream("INCIDENTS").await.unwrap();
    let record = incidents.consumer_info("record").await.unwrap();
    assert!(record.config.filter_subjects.is_empty());
    assert_eq!(record.config.filter_subject, "");

    topology::apply(&js, &version, &Topology::built_in())
        .await
        .unwrap();
    let record = incidents.consumer_info("record").await.unwrap();
    assert_eq!(
        record.config.filter_subjects,
        [
            "incidents.*.opened",
            "incidents.*.updated",
            "incidents.*.resolved"
        ]
    );
}
