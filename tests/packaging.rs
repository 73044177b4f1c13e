//! Checks on the container packaging that need no Docker engine: `docker-compose.yml` is valid
//! against the Compose Specification schema, the Dockerfile copies only paths that exist and
//! builds binaries this workspace really has, and `.env.example` covers every required setting.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn compose() -> serde_json::Value {
    let mut yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    // `<<: *anchor` merge keys are resolved by Compose before validation; do the same.
    yaml.apply_merge().expect("merge keys resolve");
    serde_json::to_value(yaml).expect("compose file converts to JSON")
}

/// The Compose Specification schema (copy of compose-spec/compose-spec `schema/compose-spec.json`).
#[test]
fn compose_file_is_valid_against_the_compose_specification() {
    let schema: serde_json::Value =
        serde_json::from_str(&read("tests/data/compose-spec.json")).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let doc = compose();
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "docker-compose.yml is invalid:\n{}",
        errors.join("\n")
    );
}

#[test]
fn schema_check_would_catch_a_mistake() {
    let schema: serde_json::Value =
        serde_json::from_str(&read("tests/data/compose-spec.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut doc = compose();
    doc["services"]["orders-service"]["depends_on"]["notification-service"]["condition"] =
        "service_healthyy".into();
    assert!(!validator.is_valid(&doc));
}

#[test]
fn every_service_has_a_healthcheck_and_waits_for_healthy_dependencies() {
    let doc = compose();
    let services = doc["services"].as_object().expect("services");
    for name in ["orders-service", "notification-service", "mailpit"] {
        let service = &services[name];
        assert!(
            service["healthcheck"]["test"].is_array(),
            "{name} has no healthcheck"
        );
        if let Some(deps) = service["depends_on"].as_object() {
            for (dep, cond) in deps {
                assert_eq!(cond["condition"], "service_healthy", "{name} -> {dep}");
            }
        }
    }
}

fn workspace_binaries() -> BTreeSet<String> {
    // A package with src/main.rs has a binary named after the package.
    let mut bins = BTreeSet::new();
    for dir in ["orders-service", "notification-service", "webhook-common"] {
        if root().join(dir).join("src/main.rs").exists() {
            let manifest = read(&format!("{dir}/Cargo.toml"));
            assert!(
                manifest.contains(&format!("name = \"{dir}\"")),
                "{dir}/Cargo.toml names another package"
            );
            bins.insert(dir.to_owned());
        }
    }
    bins
}

#[test]
fn dockerfile_builds_and_copies_the_workspace_binaries() {
    let dockerfile = read("Dockerfile");
    let bins = workspace_binaries();
    let mut built = BTreeSet::new();
    let mut words = dockerfile.split_whitespace().peekable();
    while let Some(word) = words.next() {
        if word == "--bin" {
            built.insert(words.next().expect("--bin takes a name").to_owned());
        }
        if let Some(rest) = word.strip_prefix("/src/target/release/") {
            assert!(
                bins.contains(rest),
                "Dockerfile copies unknown binary {rest}"
            );
        }
    }
    assert_eq!(
        built, bins,
        "Dockerfile must build exactly the workspace's service binaries"
    );
    let doc = compose();
    for (name, service) in doc["services"].as_object().unwrap() {
        if let Some(cmd) = service["command"].as_array() {
            let program = cmd[0].as_str().unwrap();
            assert!(
                bins.contains(program),
                "service {name} runs unknown binary {program}"
            );
        }
    }
}

#[test]
fn dockerfile_copies_only_paths_that_exist() {
    let dockerfile = read("Dockerfile");
    let mut checked = 0;
    for line in dockerfile.lines().map(str::trim) {
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        if args.contains("--from=") {
            continue;
        }
        let parts: Vec<&str> = args
            .split_whitespace()
            .filter(|a| !a.starts_with("--"))
            .collect();
        let (_dest, sources) = parts.split_last().expect("COPY has a destination");
        for source in sources {
            assert!(
                Path::new(&root().join(source)).exists(),
                "Dockerfile copies missing path {source}"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "expected the Dockerfile to copy the workspace, found {checked} paths"
    );
}

#[test]
fn env_example_sets_every_required_compose_variable() {
    let compose = read("docker-compose.yml");
    let example = read(".env.example");
    let defined: BTreeSet<&str> = example
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let mut required = BTreeSet::new();
    for chunk in compose.split("${").skip(1) {
        let name: String = chunk
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if chunk[name.len()..].starts_with(":?") {
            required.insert(name);
        }
    }
    assert!(!required.is_empty());
    for name in &required {
        assert!(
            defined.contains(name.as_str()),
            ".env.example does not set {name}"
        );
    }
    let secret = example
        .lines()
        .find_map(|l| l.strip_prefix("WEBHOOK_SECRET="))
        .expect("WEBHOOK_SECRET example");
    assert!(
        secret.starts_with("whsec_"),
        "the example secret must have the whsec_ form"
    );
}

/// The placeholders `.env.example` ships are exactly the ones both services refuse at
/// startup, so copying the example without editing it cannot give a running shop with
/// credentials anyone who reads this repository knows.
#[test]
fn env_example_placeholders_are_the_ones_the_services_refuse() {
    use webhook_common::placeholders::{EXAMPLE_ADMIN_TOKEN, EXAMPLE_WEBHOOK_SECRET};
    let example = read(".env.example");
    let value = |name: &str| {
        example
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!(".env.example does not set {name}"))
            .trim()
            .to_owned()
    };
    assert_eq!(value("ADMIN_TOKEN"), EXAMPLE_ADMIN_TOKEN);
    assert_eq!(value("WEBHOOK_SECRET"), EXAMPLE_WEBHOOK_SECRET);
}

/// Every published port binds to `${BIND_ADDRESS:-127.0.0.1}`: reachable from this machine
/// only, unless the user opts out in `.env`.
#[test]
fn compose_publishes_ports_on_loopback_unless_told_otherwise() {
    let doc = compose();
    let mut published = 0;
    for (name, service) in doc["services"].as_object().unwrap() {
        for port in service["ports"].as_array().into_iter().flatten() {
            let port = port.as_str().expect("ports are short-syntax strings");
            assert!(
                port.starts_with("${BIND_ADDRESS:-127.0.0.1}:"),
                "service {name} publishes {port} on every interface"
            );
            published += 1;
        }
    }
    assert!(published >= 3, "expected the three published ports");
}
