//! One tracing subscriber per test binary, so the service's logs show up with a failing test.
//!
//! [`init_test_logging`] installs it: plain text through libtest's capture (printed only for
//! failing tests, or with `--nocapture`), filtered by `RUST_LOG` (default `info`). Tests
//! about the logs themselves read [`captured_logs`]: the same events as JSON lines.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

static INIT: Once = Once::new();
/// Set by the first [`captured_logs`]; until then nothing is captured.
static CAPTURING: AtomicBool = AtomicBool::new(false);
static CAPTURED: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Installs the test binary's global subscriber; later calls do nothing.
///
/// Panics if something else installed a global subscriber first: two would hide logs.
pub fn init_test_logging() {
    INIT.call_once(|| {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let text = tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_ansi(false)
            .with_filter(filter);
        let json = tracing_subscriber::fmt::layer()
            .json()
            .with_writer(|| Capture)
            .with_filter(filter_fn(|meta| {
                CAPTURING.load(Ordering::Relaxed) && *meta.level() <= tracing::Level::INFO
            }));
        tracing_subscriber::registry()
            .with(text)
            .with(json)
            .try_init()
            .expect("no other global subscriber in this test binary");
    });
}

/// Log lines at `info` and above, as JSON (`fmt().json()`'s shape, with `spans`), of every
/// test in this binary from the first call on; installs the subscriber if needed.
pub fn captured_logs() -> &'static Mutex<Vec<u8>> {
    init_test_logging();
    CAPTURING.store(true, Ordering::Relaxed);
    &CAPTURED
}

/// Appends to [`CAPTURED`].
struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
