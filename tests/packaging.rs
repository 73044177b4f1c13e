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
    compose_file("docker-compose.yml")
}

/// A compose file as JSON, with its `<<: *anchor` merge keys resolved.
fn compose_file(path: &str) -> serde_json::Value {
    let mut yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is YAML: {e}"));
    // `<<: *anchor` merge keys are resolved by Compose before validation; do the same.
    yaml.apply_merge().expect("merge keys resolve");
    serde_json::to_value(yaml).expect("compose file converts to JSON")
}

/// The PostgreSQL variant (`-f docker-compose.yml -f docker-compose.postgres.yml`): valid on
/// its own against the schema, health-checked, every dependency waited for until healthy,
/// ports on loopback, the databases its URLs name created by the init script, and its one
/// extra required setting documented in `.env.example`.
#[test]
fn postgres_compose_file_is_valid_and_consistent() {
    let schema: serde_json::Value =
        serde_json::from_str(&read("tests/data/compose-spec.json")).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let doc = compose_file("docker-compose.postgres.yml");
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "docker-compose.postgres.yml is invalid:\n{}",
        errors.join("\n")
    );
    let base = compose();
    let init = read("deploy/postgres-init.sql");
    for (name, service) in doc["services"].as_object().unwrap() {
        let new_service = base["services"].get(name).is_none();
        if new_service {
            assert!(
                service["healthcheck"]["test"].is_array(),
                "{name} has no healthcheck"
            );
        }
        if name != "postgres" {
            assert_eq!(
                service["depends_on"]["postgres"]["condition"], "service_healthy",
                "{name} must wait for a healthy postgres"
            );
            let url = service["environment"]["DATABASE_URL"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} sets no DATABASE_URL"));
            let database = url.rsplit('/').next().unwrap();
            assert!(
                url.starts_with("postgres://")
                    && init.contains(&format!("CREATE DATABASE {database};")),
                "{name}: {url} names a database deploy/postgres-init.sql does not create"
            );
        }
        for port in service["ports"].as_array().into_iter().flatten() {
            let port = port.as_str().expect("ports are short-syntax strings");
            assert!(
                port.starts_with("${BIND_ADDRESS:-127.0.0.1}:"),
                "service {name} publishes {port} on every interface"
            );
        }
    }
    assert!(
        read(".env.example").contains("POSTGRES_PASSWORD="),
        ".env.example does not mention POSTGRES_PASSWORD"
    );
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

/// The workspace members, from the root manifest's `members = [...]`.
fn workspace_members() -> Vec<String> {
    let manifest = read("Cargo.toml");
    let start = manifest.find("members = [").expect("[workspace] members") + "members = [".len();
    let end = start + manifest[start..].find(']').expect("members list ends");
    manifest[start..end]
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_owned())
        .filter(|m| !m.is_empty())
        .collect()
}

/// The lines of the Dockerfile's `build` stage up to its first source copy: the manifest-only
/// dependency layer.
fn dependency_layer(dockerfile: &str) -> String {
    let stage = &dockerfile[dockerfile.find(" AS build").expect("a stage named build")..];
    stage[..stage.find("COPY src src").expect("the sources are copied")].to_owned()
}

/// Cargo loads the whole workspace before it builds anything: every member's manifest must be
/// in the dependency layer, with a placeholder for each of its targets (or `cargo build
/// --locked` fails in the image), and every member the services depend on must be copied whole.
#[test]
fn dockerfile_build_stage_has_the_whole_workspace() {
    let dockerfile = read("Dockerfile");
    let layer = dependency_layer(&dockerfile);
    let members = workspace_members();
    assert!(members.len() >= 3, "members: {members:?}");
    for member in &members {
        let manifest_copy = format!("COPY {member}/Cargo.toml {member}/Cargo.toml");
        assert!(
            layer.contains(&manifest_copy),
            "Dockerfile lacks `{manifest_copy}`"
        );
    }
    let mut packages: Vec<&str> = members.iter().map(String::as_str).collect();
    packages.push(""); // the root package, the demo launcher
    for package in packages {
        let dir = root().join(package);
        let prefix = if package.is_empty() {
            String::new()
        } else {
            format!("{package}/")
        };
        for target in ["src/lib.rs", "src/main.rs"] {
            if dir.join(target).exists() {
                assert!(
                    layer.contains(&format!(" {prefix}{target}")),
                    "the Dockerfile's dependency layer makes no placeholder {prefix}{target}"
                );
            }
        }
        let manifest = read(&format!("{prefix}Cargo.toml"));
        for bench in manifest.split("[[bench]]").skip(1) {
            let name = bench
                .lines()
                .find_map(|l| l.trim().strip_prefix("name = "))
                .expect("a bench has a name")
                .trim_matches('"');
            assert!(
                layer.contains(&format!("{prefix}benches/{name}.rs")),
                "the Dockerfile's dependency layer makes no placeholder for bench {name}"
            );
        }
    }
    // What the services link must be there in full for the real build.
    for service in ["orders-service", "notification-service"] {
        let manifest = read(&format!("{service}/Cargo.toml"));
        let deps = manifest
            .split("\n[dependencies]")
            .nth(1)
            .expect("[dependencies]");
        let deps = deps.split("\n[").next().unwrap();
        for member in members.iter().filter(|m| {
            deps.lines()
                .any(|l| l.starts_with(&format!("{m} ")) || l.starts_with(&format!("{m}.")))
        }) {
            assert!(
                dockerfile.contains(&format!("COPY {member} {member}")),
                "{service} depends on {member}, which the Dockerfile does not copy"
            );
        }
        assert!(
            dockerfile.contains(&format!("COPY {service} {service}")),
            "the Dockerfile does not copy {service}"
        );
    }
}

/// The workspace root is itself a package (the demo launcher), so a bare `cargo build --bin`
/// only looks there: each binary's package must be selected with `-p`.
#[test]
fn dockerfile_cargo_builds_select_the_service_packages() {
    let dockerfile = read("Dockerfile").replace("\\\n", " ");
    let builds: Vec<&str> = dockerfile
        .split("&&")
        .filter(|c| c.contains("cargo build"))
        .collect();
    assert_eq!(builds.len(), 2, "the dependency layer and the real build");
    for build in builds {
        let words: Vec<&str> = build.split_whitespace().collect();
        for pair in words.windows(2).filter(|w| w[0] == "--bin") {
            assert!(
                words.windows(2).any(|w| w[0] == "-p" && w[1] == pair[1]),
                "`{}` builds --bin {} without -p {}",
                build.trim(),
                pair[1],
                pair[1]
            );
        }
        assert!(build.contains("--locked") && build.contains("--release"));
    }
}

/// Every base image is a build argument with the public image as its default, so a machine
/// that cannot pull it (CI, see .ci/compose) can name a local one, and the CI override only
/// sets arguments and build contexts the Dockerfile has.
#[test]
fn dockerfile_base_images_are_build_arguments_the_ci_override_uses() {
    let dockerfile = read("Dockerfile");
    let args: BTreeSet<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("ARG "))
        .filter_map(|a| a.split_once('=').map(|(name, _)| name))
        .collect();
    let mut stages = BTreeSet::new();
    for from in dockerfile.lines().filter_map(|l| l.strip_prefix("FROM ")) {
        let (image, stage) = from.split_once(" AS ").expect("every stage is named");
        let arg = image
            .strip_prefix("${")
            .and_then(|a| a.strip_suffix('}'))
            .unwrap_or_else(|| panic!("FROM {image}: the base image should be a build argument"));
        assert!(
            args.contains(arg),
            "FROM ${{{arg}}} without `ARG {arg}=<default>`"
        );
        stages.insert(stage.trim());
    }
    assert!(dockerfile.contains("ARG RUNTIME_IMAGE=debian:bookworm-slim"));
    assert!(dockerfile.contains("ARG BUILD_IMAGE=rust:${RUST_VERSION}-slim-bookworm"));

    let text = read(".ci/podman/compose.override.yml");
    let mut ci: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("override is YAML");
    ci.apply_merge().expect("merge keys resolve");
    let services = doc_services(&compose());
    for (name, service) in ci["services"].as_mapping().expect("services") {
        let name = name.as_str().unwrap();
        assert!(
            services.contains(name),
            "the CI override names {name}, not a service of docker-compose.yml"
        );
        let Some(build) = service.get("build") else {
            continue;
        };
        for arg in build["args"].as_mapping().expect("args") {
            let arg = arg.0.as_str().unwrap();
            assert!(
                args.contains(arg),
                "the CI override sets unknown build arg {arg}"
            );
        }
        for context in build["additional_contexts"].as_mapping().expect("contexts") {
            let context = context.0.as_str().unwrap();
            assert!(
                stages.contains(context)
                    && dockerfile.contains(&format!("COPY --from={context} ")),
                "the CI override's build context {context} replaces no stage the runtime copies from"
            );
        }
    }
}

fn doc_services(doc: &serde_json::Value) -> BTreeSet<String> {
    doc["services"]
        .as_object()
        .expect("services")
        .keys()
        .cloned()
        .collect()
}
