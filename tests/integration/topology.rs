//! The JetStream topology is applied idempotently, and a changed setting in the file updates
//! the running stream and consumer on the next start.

use std::time::Duration;

use crate::support::{App, Stack};
use consumers::topology::{self, Topology, BUILT_IN};
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
    metrics.delete_consumer("evaluate-0").await.unwrap();
    let mut rewound = built_in.evaluate_spec(0).to_config("evaluate-0");
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
    for p in 0..built_in.partitions() {
        let evaluate = metrics
            .consumer_info(&format!("evaluate-{p}"))
            .await
            .unwrap();
        assert_eq!(evaluate.config.max_deliver, 7);
        let c = &evaluate.config;
        let filters = [c.filter_subjects.clone(), vec![c.filter_subject.clone()]].concat();
        assert!(filters.contains(&format!("metrics.*.*.{p}")), "{filters:?}");
    }
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
    // As deployed when record still filtered on the server.
    const FILTERS: [&str; 3] = [
        "incidents.*.opened",
        "incidents.*.updated",
        "incidents.*.resolved",
    ];
    let filtered = BUILT_IN.replace(
        "[consumers.record]\n",
        &format!("[consumers.record]\nfilter_subjects = {FILTERS:?}\n"),
    );
    let filtered = Topology::parse(&filtered).unwrap();
    assert_eq!(filtered.consumer("record").filter_subjects, FILTERS);
    topology::apply(&js, &version, &filtered).await.unwrap();
    let incidents = js.get_stream("INCIDENTS").await.unwrap();
    let record = incidents.consumer_info("record").await.unwrap();
    assert_eq!(record.config.filter_subjects, FILTERS);

    topology::apply(&js, &version, &Topology::built_in())
        .await
        .unwrap();
    let record = incidents.consumer_info("record").await.unwrap();
    assert!(record.config.filter_subjects.is_empty());
    assert_eq!(record.config.filter_subject, "");
}

/// The stream stores each sample under its series' partition, and Tracely computes the same
/// partition as the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_are_stored_under_the_partition_tracely_computes() {
    let stack = Stack::start().await;
    let js = stack.js().await;
    let version = js.client().server_info().version;
    let built_in = Topology::built_in();
    topology::apply(&js, &version, &built_in).await.unwrap();
    let partitions = built_in.partitions();
    let series: Vec<(String, &str)> = (0..200)
        .map(|i| (format!("svc-{i}"), ["LATENCY_MS", "ERROR_RATE"][i % 2]))
        .collect();
    for (service, metric) in &series {
        js.publish(format!("metrics.{service}.{metric}"), "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let metrics = js.get_stream("METRICS").await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for (seq, (service, metric)) in series.iter().enumerate() {
        let stored = metrics.get_raw_message(seq as u64 + 1).await.unwrap();
        let p = schemas::subject::partition_of(service, metric, partitions);
        assert_eq!(
            stored.subject.as_str(),
            format!("metrics.{service}.{metric}.{p}")
        );
        seen.insert(p);
    }
    assert_eq!(
        seen.len(),
        partitions as usize,
        "every partition gets series"
    );
    // How a replay tells that no sample is stored unpartitioned.
    assert!(metrics
        .get_last_raw_message_by_subject("metrics.*.*")
        .await
        .is_err());
}

/// A METRICS stream created before partitioning takes the transform once its single evaluate
/// consumer has caught up; a partitioned stream refuses another partition count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpartitioned_stream_is_partitioned_only_once_caught_up() {
    let stack = Stack::start().await;
    let js = stack.js().await;
    let version = js.client().server_info().version;
    let built_in = Topology::built_in();
    let mut legacy = built_in.streams["METRICS"].to_config("METRICS");
    legacy.subject_transform = None;
    let stream = js.create_stream(legacy).await.unwrap();
    let old = built_in.consumer("evaluate").to_config("evaluate");
    stream.create_consumer(old).await.unwrap();
    js.publish("metrics.S1.LATENCY_MS", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let err = topology::apply(&js, &version, &built_in).await.unwrap_err();
    assert!(
        err.to_string().contains("still has 1 samples to evaluate"),
        "{err}"
    );
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("evaluate").await.unwrap();
    let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
    use futures::StreamExt;
    batch
        .next()
        .await
        .unwrap()
        .unwrap()
        .double_ack()
        .await
        .unwrap();

    topology::apply(&js, &version, &built_in).await.unwrap();
    let mut stream = js.get_stream("METRICS").await.unwrap();
    assert!(stream
        .info()
        .await
        .unwrap()
        .config
        .subject_transform
        .is_some());
    assert!(
        stream.consumer_info("evaluate").await.is_err(),
        "the old consumer is gone"
    );
    assert!(stream.consumer_info("evaluate-0").await.is_ok());
    assert!(
        stream
            .get_last_raw_message_by_subject("metrics.*.*")
            .await
            .is_ok(),
        "a replay sees that samples are still stored unpartitioned"
    );

    let more = BUILT_IN.replace("partitions = 8", "partitions = 16");
    let err = topology::apply(&js, &version, &Topology::parse(&more).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot change"), "{err}");
}
