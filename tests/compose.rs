//! `docker compose up` for real, from `cargo test`: runs `.ci/compose` (docker-compose.yml
//! under Podman and podman-compose, an order followed to its email, `down`/`up` with the data
//! volumes kept, `kill -9` of each service restarted by its restart policy) where `podman` is
//! installed, with the debug binaries this `cargo test` built. Skipped, saying so, where Podman
//! is not installed, and under CI, where `.ci/run` runs `.ci/compose` as a step of its own.

use std::io::Write;
use std::path::Path;
use std::process::Command;

/// Written straight to stderr: libtest captures `eprintln!`, and a skip should be seen.
fn note(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{message}");
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

#[test]
fn compose_up_follows_an_order_to_its_email() {
    if std::env::var_os("CI").is_some() {
        note("SKIPPED the compose test: under CI, .ci/run runs .ci/compose as a step of its own");
        return;
    }
    if !on_path("podman") {
        note("SKIPPED the compose test: podman is not installed (README.md, Tests: .ci/compose)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut compose = Command::new("bash");
    compose
        .arg(root.join(".ci/compose"))
        .env("WEBHOOKS_COMPOSE_PROFILE", "debug");
    // This test runs from <target dir>/debug/deps: the script's `cargo test --workspace
    // --no-run` must find this run's build there, not start another elsewhere.
    let exe = std::env::current_exe().expect("current_exe");
    if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
        if profile_dir.file_name().is_some_and(|name| name == "debug") {
            if let Some(target_dir) = profile_dir.parent() {
                compose.env("CARGO_TARGET_DIR", target_dir);
            }
        }
    }
    let status = compose.status().expect("run .ci/compose");
    assert!(status.success(), ".ci/compose failed: {status}");
}
