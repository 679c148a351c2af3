//! compose.yaml and the Dockerfile agree with each other and with the binary.

use serde_norway::Value;

fn read(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn compose() -> Value {
    serde_norway::from_str(&read("compose.yaml")).expect("compose.yaml is not valid YAML")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("compose.yaml has no service {name}"))
}

/// Strings of a list, or the words of a string (compose accepts both).
fn words(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => serde_norway::to_string(other).unwrap().trim().to_owned(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Environment as (name, value) pairs, from either the map or the list form.
fn environment(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Mapping(map) => map
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => serde_norway::to_string(other).unwrap().trim().to_owned(),
                };
                (k.as_str().expect("variable name").to_owned(), value)
            })
            .collect(),
        Value::Sequence(_) => words(&service["environment"])
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv, String::new()),
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn env_value(service: &Value, name: &str) -> String {
    environment(service)
        .into_iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("tracely has no {name}"))
        .1
}

/// Container ports published by a service.
fn published_container_ports(service: &Value) -> Vec<u16> {
    let Value::Sequence(ports) = &service["ports"] else {
        return Vec::new();
    };
    ports
        .iter()
        .filter_map(|p| match p {
            // "HOST:CONTAINER", "IP:HOST:CONTAINER", optionally "/tcp".
            Value::String(s) => s.rsplit(':').next()?.split('/').next()?.parse().ok(),
            Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            Value::Mapping(_) => p["target"].as_u64().and_then(|n| u16::try_from(n).ok()),
            _ => None,
        })
        .collect()
}

#[test]
fn core_services_exist_with_healthchecks() {
    let compose = compose();
    for name in ["nats", "postgres", "meilisearch", "tracely"] {
        let test = words(&service(&compose, name)["healthcheck"]["test"]);
        assert!(test.len() > 1, "{name} has no healthcheck test");
    }
}

#[test]
fn nats_runs_with_jetstream() {
    let compose = compose();
    let command = words(&service(&compose, "nats")["command"]);
    assert!(
        command.iter().any(|w| w == "-js" || w == "--jetstream"),
        "nats command lacks -js: {command:?}"
    );
}

#[test]
fn tracely_publishes_its_http_port() {
    let compose = compose();
    let tracely = service(&compose, "tracely");
    assert!(
        published_container_ports(tracely).contains(&8080),
        "port 8080 not published"
    );
    let addr = env_value(tracely, "TRACELY_HTTP_ADDR");
    let port = addr.rsplit(':').next().unwrap();
    assert_eq!(
        port, "8080",
        "TRACELY_HTTP_ADDR={addr} disagrees with ports"
    );
}

#[test]
fn tracely_waits_for_healthy_dependencies() {
    let compose = compose();
    let depends = &service(&compose, "tracely")["depends_on"];
    for name in ["nats", "postgres", "meilisearch"] {
        assert_eq!(
            depends[name]["condition"].as_str(),
            Some("service_healthy"),
            "tracely does not wait for {name}"
        );
    }
}

#[test]
fn tracely_environment_uses_known_variables() {
    let compose = compose();
    let tracely = service(&compose, "tracely");
    let env = environment(tracely);
    assert!(!env.is_empty(), "tracely has no environment");
    for (name, _) in env {
        let ours = name.starts_with("TRACELY_")
            || name.starts_with("MEILI_")
            || name == "DATABASE_URL"
            || name == "RUST_LOG";
        assert!(
            !ours || tracely::config::ENV_VARS.contains(&name.as_str()),
            "{name} is not a variable the binary reads"
        );
    }
}

#[test]
fn meilisearch_runs_with_a_master_key_and_a_volume_that_tracely_uses() {
    let compose = compose();
    let meili = service(&compose, "meilisearch");
    assert!(!env_value(meili, "MEILI_MASTER_KEY").is_empty());
    assert!(
        words(&meili["volumes"])
            .iter()
            .any(|v| v.ends_with(":/meili_data")),
        "meilisearch keeps no data volume"
    );
    let tracely = service(&compose, "tracely");
    assert_eq!(env_value(tracely, "MEILI_URL"), "http://meilisearch:7700");
    assert_eq!(
        env_value(tracely, "MEILI_MASTER_KEY"),
        env_value(meili, "MEILI_MASTER_KEY"),
        "tracely and meilisearch disagree on the key"
    );
}

#[test]
fn dockerfile_is_multi_stage_and_ships_the_topology() {
    let dockerfile = read("Dockerfile");
    let froms = dockerfile
        .lines()
        .filter(|l| l.trim_start().to_ascii_uppercase().starts_with("FROM "))
        .count();
    assert!(froms >= 2, "Dockerfile is not multi-stage");

    let copy = dockerfile
        .lines()
        .find(|l| l.trim_start().starts_with("COPY") && l.contains("nats/topology.toml"))
        .expect("Dockerfile does not copy nats/topology.toml");
    // The image path must be the one compose points the binary at.
    let compose = compose();
    let topology = env_value(service(&compose, "tracely"), "TRACELY_TOPOLOGY");
    assert!(
        copy.split_whitespace().last() == Some(topology.as_str()),
        "Dockerfile copies the topology to `{copy}`, compose expects {topology}"
    );
}
