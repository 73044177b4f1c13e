//! The real `loadgen` binary, a tiny throughput run against the real services' binaries.
//!
//! `cargo test --workspace` builds `orders-service` and `notification-service` into the same
//! target directory as `loadgen` (their own integration tests need them), so `--bin-dir` is
//! the loadgen executable's directory. No timing is asserted: only that nothing was lost or
//! duplicated (in the database, and in notification-service's log of sends) and that the JSON
//! line says so.

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Longest the whole run may take (debug builds, a busy two-core machine).
const DEADLINE: Duration = Duration::from_secs(300);
/// After SIGTERM on a timeout, how long loadgen gets to stop the services it started.
const STOP_GRACE: Duration = Duration::from_secs(60);

/// Waits for `child` until `deadline`; on timeout asks it to stop (SIGTERM, so it stops its
/// own children too), then kills it, and returns `None`.
fn wait_with_deadline(child: std::process::Child, deadline: Duration) -> Option<ExitStatus> {
    let pid = rustix::process::Pid::from_child(&child);
    let (done, finished) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let mut child = child;
        let _ = done.send(child.wait());
    });
    if let Ok(status) = finished.recv_timeout(deadline) {
        waiter.join().unwrap();
        return Some(status.expect("waiting for loadgen"));
    }
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    if finished.recv_timeout(STOP_GRACE).is_err() {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        let _ = finished.recv();
    }
    waiter.join().unwrap();
    None
}

/// Runs loadgen with `args` (and `--bin-dir`); returns its exit status, the JSON line, and
/// its output for messages. Panics if it does not finish in time.
fn run_loadgen(args: &[&str]) -> (ExitStatus, serde_json::Value, String) {
    let loadgen = Path::new(env!("CARGO_BIN_EXE_loadgen"));
    let bin_dir = loadgen.parent().expect("the binary has a directory");
    for service in ["orders-service", "notification-service"] {
        assert!(
            bin_dir.join(service).is_file(),
            "{} is missing: `cargo test --workspace` builds it, or run `cargo build --workspace`",
            bin_dir.join(service).display()
        );
    }
    let out = tempfile::tempdir().unwrap();
    let stdout_path = out.path().join("stdout");
    let stderr_path = out.path().join("stderr");
    let child = Command::new(loadgen)
        .args(args)
        .arg("--bin-dir")
        .arg(bin_dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("start loadgen");

    let status = wait_with_deadline(child, DEADLINE);
    let stdout = std::fs::read_to_string(&stdout_path).unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    let status =
        status.unwrap_or_else(|| panic!("loadgen did not finish within {DEADLINE:?}\n{context}"));
    let last = stdout.lines().last().unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("the last line is not JSON ({e}) ({status})\n{context}"));
    (status, json, context)
}

/// The checks every clean run of 200 orders passes.
fn assert_clean_run(json: &serde_json::Value, context: &str) {
    assert_eq!(json["scenario"], "throughput", "{context}");
    assert_eq!(json["accepted"], 200, "{context}");
    assert_eq!(json["lost"], 0, "{context}");
    assert_eq!(json["duplicated"], 0, "{context}");
    assert_eq!(json["emails_sent"], 200, "{context}");
    // Counted in notification-service's log (a number, not null): each email sent once.
    assert_eq!(json["duplicated_sends"], 0, "{context}");
    assert_eq!(json["emails_sent_more_than_once"], 0, "{context}");
    assert_eq!(json["delivered_unacknowledged"], 0, "{context}");
    assert_eq!(json["not_sent_on_schedule"], 0, "{context}");
    assert_eq!(json["ok"], true, "{context}");
    assert!(context.contains("lost emails:"), "{context}");
    // The CPU the run cost, read from /proc: each service (hundreds of ms in a debug build),
    // and loadgen's own, which a short run may round to zero clock ticks.
    for service in ["orders-service", "notification-service"] {
        assert!(
            json["cpu_us_per_email"][service].as_f64() > Some(0.0),
            "{service}\n{context}"
        );
    }
    assert!(
        json["cpu_us_per_email"]["loadgen"].as_f64() >= Some(0.0),
        "{context}"
    );
    assert!(
        json["machine_cpu_us_per_email"].as_f64() > Some(0.0),
        "{context}"
    );
    let busy = json["machine_busy_share"].as_f64().unwrap_or(-1.0);
    assert!((0.0..=1.0).contains(&busy), "{context}");
    assert!(
        context.contains("CPU per email, whole machine:"),
        "{context}"
    );
}

#[test]
fn a_tiny_throughput_run_loses_and_duplicates_no_email() {
    let (status, json, context) =
        run_loadgen(&["throughput", "-n", "200", "-c", "8", "--deadline", "120s"]);
    assert!(status.success(), "loadgen exited with {status}\n{context}");
    assert_clean_run(&json, &context);
    assert_eq!(json["backend"], "sqlite", "{context}");
    assert_eq!(json["replicas"], 1, "{context}");
}

/// Two replicas of each service on PostgreSQL (`TEST_DATABASE_URL`, as the services' own
/// PostgreSQL tests use; SKIPPED without it): the same clean run, both receivers used, and
/// the databases dropped afterwards.
#[test]
fn a_tiny_run_on_two_replicas_on_postgres_loses_and_duplicates_no_email() {
    let Ok(admin_url) = std::env::var("TEST_DATABASE_URL") else {
        eprintln!("SKIPPED: TEST_DATABASE_URL is not set");
        return;
    };
    let (status, json, context) = run_loadgen(&[
        "throughput",
        "-n",
        "200",
        "-c",
        "8",
        "--deadline",
        "120s",
        "--postgres",
        &admin_url,
        "--replicas",
        "2",
        "--services-env",
        "DATABASE_MAX_CONNECTIONS=4",
    ]);
    assert!(status.success(), "loadgen exited with {status}\n{context}");
    assert_clean_run(&json, &context);
    assert_eq!(json["backend"], "postgres", "{context}");
    assert_eq!(json["replicas"], 2, "{context}");
    for process in [
        "orders-service#1",
        "orders-service#2",
        "notification-service#1",
        "notification-service#2",
    ] {
        assert!(
            json["peak_rss_kib_by_process"][process].as_u64() > Some(0),
            "{process}\n{context}"
        );
    }
    let connections = json["balancer"]["connections"].as_array().unwrap();
    assert_eq!(connections.len(), 2, "{context}");
    assert!(
        connections.iter().all(|n| n.as_u64() > Some(0)),
        "both receivers get webhooks\n{context}"
    );
    assert!(
        context.contains("dropped the 2 PostgreSQL databases"),
        "{context}"
    );
}
