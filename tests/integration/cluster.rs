//! The three-node JetStream cluster of `nats/cluster/`: the checked-in node configurations,
//! with only addresses and directories made local, form a cluster that Tracely runs on with
//! every stream replicated three times, and the pipeline keeps working when a node dies.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::support::{eventually, sample, App, Stack};
use chrono::{SubsecRound, Utc};
use serde_json::json;
use tokio::process::{Child, Command};
use tracely::config::Role;
use tracely::devstack::free_port;

const PATIENCE: Duration = Duration::from_secs(60);

struct Node {
    client_port: u16,
    child: Child,
}

fn nats_server() -> String {
    std::env::var("TRACELY_NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_owned())
}

/// Node `n` (1 to 3) from its checked-in file, listening on local ports, storing under `dir`.
fn local_config(n: usize, client: u16, http: u16, routes: &[u16; 3], dir: &Path) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("nats/cluster/nats-{n}.conf"));
    let mut text = std::fs::read_to_string(&path).expect("reading the node configuration");
    for (from, to) in [
        ("0.0.0.0:4222".to_owned(), format!("127.0.0.1:{client}")),
        ("0.0.0.0:8222".to_owned(), format!("127.0.0.1:{http}")),
        (
            "0.0.0.0:6222".to_owned(),
            format!("127.0.0.1:{}", routes[n - 1]),
        ),
        ("n1:6222".to_owned(), format!("127.0.0.1:{}", routes[0])),
        ("n2:6222".to_owned(), format!("127.0.0.1:{}", routes[1])),
        ("n3:6222".to_owned(), format!("127.0.0.1:{}", routes[2])),
        (
            "/var/lib/nats/jetstream".to_owned(),
            dir.join(format!("n{n}")).display().to_string(),
        ),
    ] {
        assert!(text.contains(&from), "nats-{n}.conf no longer has {from}");
        text = text.replace(&from, &to);
    }
    text
}

async fn start_cluster(dir: &Path) -> Vec<Node> {
    let ports = |_| free_port().unwrap();
    let routes: [u16; 3] = std::array::from_fn(ports);
    let mut nodes = Vec::new();
    for n in 1..=3 {
        let (client, http) = (free_port().unwrap(), free_port().unwrap());
        let config = dir.join(format!("nats-{n}.conf"));
        std::fs::write(&config, local_config(n, client, http, &routes, dir)).unwrap();
        let child = Command::new(nats_server())
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting nats-server");
        nodes.push(Node {
            client_port: client,
            child,
        });
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracely_runs_on_the_three_node_cluster_and_survives_losing_a_node() {
    let stack = Stack::start().await;
    let dir = stack.path().join("cluster");
    std::fs::create_dir_all(&dir).unwrap();
    let mut nodes = start_cluster(&dir).await;
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
        .collect();
    // JetStream answers once the three nodes have elected a meta leader.
    eventually("the cluster's JetStream", PATIENCE, || async {
        let client = async_nats::connect(&urls[0]).await.ok()?;
        async_nats::jetstream::new(client)
            .query_account()
            .await
            .ok()
    })
    .await;

    let mut settings = stack.settings(&Role::ALL);
    settings.nats_url = urls.join(",");
    for spec in settings.topology.streams.values_mut() {
        spec.replicas = 3;
    }
    let app = App::start_with(settings).await;
    let client = tracely::startup::connect_nats(&urls.join(","))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    for name in ["METRICS", "INCIDENTS", "DELIVERIES", "DEADLETTER"] {
        let mut stream = js.get_stream(name).await.unwrap();
        let info = stream.info().await.unwrap();
        assert_eq!(info.config.num_replicas, 3, "{name}");
        let cluster = info.cluster.as_ref().expect("cluster info");
        assert_eq!(
            cluster.replicas.len(),
            2,
            "{name} has a leader and two replicas"
        );
    }
    app.rule(
        json!({"metric_type": "LATENCY_MS", "operator": ">", "threshold": 500,
        "severity": "HIGH"}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let now = || Utc::now().trunc_subsecs(3).to_rfc3339();
    crate::support::publish(&js, &[sample("before", "LATENCY_MS", 900.0, &now())]).await;
    eventually("the first incident", PATIENCE, || async {
        (app.incidents("").await.len() == 1).then_some(())
    })
    .await;

    // Losing one node of three leaves every stream with a quorum.
    nodes[0].child.kill().await.unwrap();
    // Until the client has moved to another node and the streams that node led have elected
    // a new leader, a publish may time out; a publisher retries, and the sample's message id
    // keeps a retry from storing it twice.
    let after = [sample("after", "LATENCY_MS", 900.0, &now())];
    eventually("a publish to the two nodes left", PATIENCE, || async {
        api::publish::publish_samples(&js, &after).await.ok()
    })
    .await;
    let services = eventually("the second incident", PATIENCE, || async {
        let incidents = app.incidents("").await;
        (incidents.len() == 2).then_some(incidents)
    })
    .await;
    let mut services: Vec<&str> = services
        .iter()
        .map(|i| i["service_id"].as_str().unwrap())
        .collect();
    services.sort_unstable();
    assert_eq!(services, ["after", "before"]);
    app.stop().await;
}
