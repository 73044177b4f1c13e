//! Child processes: the two services and the baseline server. Each one logs to its own file,
//! says where it listens in a log line (it binds port 0 itself), is stopped with SIGTERM then
//! SIGKILL, and is killed when dropped (`kill_on_drop`), so loadgen leaves no orphan even when
//! it fails or panics (only a SIGKILL of loadgen itself cannot be caught). Also reads the
//! processes' memory and CPU time from `/proc`.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cpu::{self, CpuUse, MachineCpu};

/// Longest wait for a child to say where it listens and to answer its health check.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// Longest wait for a child to exit after SIGTERM before it is killed. Longer than the
/// services' own shutdown grace (10 s by default).
const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// How often a starting child's log is read for its address.
const START_POLL: Duration = Duration::from_millis(20);
/// How many lines of a failed child's log are shown.
const LOG_TAIL_LINES: usize = 25;

/// Where the services' binaries are, and every child that is still running.
pub struct Fleet {
    bin_dir: PathBuf,
    /// The children not yet stopped. A std mutex: it is only held to push, find or take a
    /// child, never across an await; whoever takes a child out is the one that waits for it.
    running: Mutex<Vec<Child>>,
}

/// What to start.
pub struct Spawn {
    /// Name for messages and reports, e.g. `orders-service`.
    pub label: String,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Its whole environment besides `PATH` (the child does not inherit loadgen's, so a
    /// `DATABASE_URL` in the caller's shell cannot leak in).
    pub env: Vec<(String, String)>,
    /// File that receives its stdout and stderr.
    pub log: PathBuf,
    /// Log markers each followed by an address, e.g. `listening on http://`, in the order
    /// the child prints them.
    pub marks: Vec<&'static str>,
    /// Path answered with 200 once the child serves, e.g. `/healthz`.
    pub health_path: Option<&'static str>,
}

/// A started child.
#[derive(Debug, Clone)]
pub struct Process {
    /// Name for messages and reports.
    pub label: String,
    /// Its process id.
    pub pid: u32,
    /// `http://addr` for each of [`Spawn::marks`], in order.
    pub urls: Vec<String>,
    /// Its log file.
    pub log: PathBuf,
}

impl Process {
    /// The first address the child announced.
    pub fn url(&self) -> &str {
        &self.urls[0]
    }
}

impl Fleet {
    /// A fleet taking the services' binaries from `bin_dir`.
    pub fn new(bin_dir: PathBuf) -> Fleet {
        Fleet {
            bin_dir,
            running: Mutex::new(Vec::new()),
        }
    }

    /// The path of one of the services' binaries, or an error saying how to build it.
    pub fn binary(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.bin_dir.join(name);
        if !path.is_file() {
            bail!(
                "{} not found; run `cargo build --release --workspace` first, or point --bin-dir \
                 at the directory holding orders-service and notification-service",
                path.display()
            );
        }
        Ok(path)
    }

    /// Starts a child and waits until it has announced its addresses and, if it has one,
    /// passed its health check.
    pub async fn start(&self, spawn: Spawn) -> anyhow::Result<Process> {
        let log = std::fs::File::create(&spawn.log)
            .with_context(|| format!("creating {}", spawn.log.display()))?;
        let mut command = Command::new(&spawn.program);
        command
            .args(&spawn.args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(spawn.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", spawn.program.display()))?;
        let pid = child.id().context("a just-started child has a pid")?;
        self.running_children().push(child);

        let mut process = Process {
            label: spawn.label,
            pid,
            urls: Vec::new(),
            log: spawn.log,
        };
        let deadline = Instant::now() + START_DEADLINE;
        // With one listener, the socket table finds it even when a RUST_LOG override hides
        // the log line.
        let single = spawn.marks.len() == 1;
        for mark in spawn.marks {
            let url = self.wait_for_mark(&process, mark, single, deadline).await?;
            process.urls.push(url);
        }
        if let Some(path) = spawn.health_path {
            self.wait_healthy(&process, path, deadline).await?;
        }
        Ok(process)
    }

    fn running_children(&self) -> std::sync::MutexGuard<'_, Vec<Child>> {
        // A panic while the lock was held cannot leave the list half-changed.
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Err` when the child has exited (it should not have).
    fn check_alive(&self, process: &Process) -> anyhow::Result<()> {
        let mut running = self.running_children();
        let Some(child) = running.iter_mut().find(|c| c.id() == Some(process.pid)) else {
            bail!("{} is not running", process.label);
        };
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} exited early with {status}\n{}",
                process.label,
                describe_log(&process.log)
            );
        }
        Ok(())
    }

    /// Reads the child's log until `mark` is followed by an address, or, with `or_socket`,
    /// until the child listens on a loopback TCP port; returns `http://addr`.
    async fn wait_for_mark(
        &self,
        process: &Process,
        mark: &str,
        or_socket: bool,
        deadline: Instant,
    ) -> anyhow::Result<String> {
        loop {
            self.check_alive(process)?;
            let text = std::fs::read_to_string(&process.log).unwrap_or_default();
            if let Some(addr) = address_after(&text, mark) {
                return Ok(format!("http://{addr}"));
            }
            if let Some(port) = or_socket.then(|| listening_port(process.pid)).flatten() {
                return Ok(format!("http://127.0.0.1:{port}"));
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not log {mark:?} within {START_DEADLINE:?} (a RUST_LOG that hides \
                     info lines hides it too)\n{}",
                    process.label,
                    describe_log(&process.log)
                );
            }
            tokio::time::sleep(START_POLL).await;
        }
    }

    async fn wait_healthy(
        &self,
        process: &Process,
        path: &str,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("{}{path}", process.url());
        loop {
            self.check_alive(process)?;
            if let Ok(response) = http.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not answer {url} within {START_DEADLINE:?}\n{}",
                    process.label,
                    describe_log(&process.log)
                );
            }
            tokio::time::sleep(START_POLL).await;
        }
    }

    /// Stops one child: SIGTERM, then SIGKILL if it has not exited within the deadline.
    pub async fn stop(&self, process: &Process) -> anyhow::Result<()> {
        let child = {
            let mut running = self.running_children();
            running
                .iter()
                .position(|c| c.id() == Some(process.pid))
                .map(|at| running.swap_remove(at))
        };
        let Some(child) = child else {
            return Ok(());
        };
        let status = terminate(child).await?;
        if !status.success() {
            bail!(
                "{} exited with {status} when stopped\n{}",
                process.label,
                describe_log(&process.log)
            );
        }
        Ok(())
    }

    /// Stops every child still running, all at once, each SIGTERM then SIGKILL.
    pub async fn stop_all(&self) {
        let children = std::mem::take(&mut *self.running_children());
        let mut stopping = tokio::task::JoinSet::new();
        for child in children {
            stopping.spawn(terminate(child));
        }
        while stopping.join_next().await.is_some() {}
    }
}

/// SIGTERM, wait, SIGKILL after [`STOP_DEADLINE`]; returns how the child ended.
async fn terminate(mut child: Child) -> anyhow::Result<std::process::ExitStatus> {
    if let Some(pid) = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(rustix::process::Pid::from_raw)
    {
        // It may have exited in the meantime; then the wait below returns at once.
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    match tokio::time::timeout(STOP_DEADLINE, child.wait()).await {
        Ok(status) => Ok(status?),
        Err(_) => {
            child.kill().await?;
            Ok(child.wait().await?)
        }
    }
}

/// The address right after `mark` in `text`, e.g. `127.0.0.1:43125`.
pub fn address_after(text: &str, mark: &str) -> Option<String> {
    let at = text.find(mark)? + mark.len();
    let addr: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.contains(':').then_some(addr)
}

/// The port of the one TCP socket `pid` listens on at 127.0.0.1, from `/proc`: its socket
/// inodes (`/proc/PID/fd`) matched against the listening sockets of its network namespace
/// (`/proc/PID/net/tcp`). `None` while there is none, or more than one.
fn listening_port(pid: u32) -> Option<u16> {
    let inodes: HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    let ports: Vec<u16> = listening_loopback_ports(&table, &inodes);
    match ports.as_slice() {
        [port] => Some(*port),
        _ => None,
    }
}

/// The ports of the sockets in `/proc/net/tcp` text that listen (state `0A`) on 127.0.0.1
/// (`0100007F`, little-endian) and whose inode is in `inodes`.
fn listening_loopback_ports(table: &str, inodes: &HashSet<u64>) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            let (ip, port) = local.split_once(':')?;
            let listening = *state == "0A" && ip == "0100007F";
            (listening && inodes.contains(&inode.parse().ok()?))
                .then(|| u16::from_str_radix(port, 16).ok())
                .flatten()
        })
        .collect()
}

/// The log's path and its last lines, for an error message.
pub fn describe_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    format!("log: {}\n{tail}", path.display())
}

/// A `kB` field of `/proc/PID/status` (`VmHWM`, the peak resident set, or `VmRSS`), in KiB.
/// `None` once the process is gone or off Linux.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, field)
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// Samples the peak RSS (`VmHWM`) of some processes every [`Monitor::EVERY`] and, every
/// `report_every`, prints a progress line with their current RSS and the driver's count of
/// answered requests. Stops when finished or dropped.
pub struct Monitor {
    /// Per process: label, pid and the largest `VmHWM` seen (KiB). Written only by the
    /// sampling task; read after it has been stopped and joined.
    peaks: Arc<Vec<(String, u32, AtomicU64)>>,
    /// Each process's CPU time when sampling started, in `peaks`' order.
    cpu_at_start: Vec<Option<Duration>>,
    /// loadgen's own CPU time, and the machine's, when sampling started.
    own_cpu_at_start: Option<Duration>,
    machine_at_start: Option<MachineCpu>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// What a [`Monitor`] saw over its window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampled {
    /// Each process's peak RSS (label, KiB); a process that is gone keeps its last sample.
    pub peak_rss: Vec<(String, u64)>,
    /// CPU spent by each process, loadgen and the machine from start to finish.
    pub cpu: CpuUse,
}

impl Monitor {
    /// Sampling interval.
    pub const EVERY: Duration = Duration::from_millis(250);

    /// Starts sampling `processes` (label, pid); `answered` is the driver's progress counter.
    pub fn start(
        processes: Vec<(String, u32)>,
        answered: Arc<AtomicU64>,
        report_every: Duration,
    ) -> Monitor {
        let cpu_at_start = processes
            .iter()
            .map(|(_, pid)| cpu::process_cpu(*pid))
            .collect();
        let own_cpu_at_start = cpu::process_cpu(std::process::id());
        let machine_at_start = cpu::machine_cpu();
        let peaks: Arc<Vec<(String, u32, AtomicU64)>> = Arc::new(
            processes
                .into_iter()
                .map(|(label, pid)| (label, pid, AtomicU64::new(0)))
                .collect(),
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(sample(
            Arc::clone(&peaks),
            answered,
            report_every,
            stop.clone(),
        ));
        Monitor {
            peaks,
            cpu_at_start,
            own_cpu_at_start,
            machine_at_start,
            stop,
            task: Some(task),
        }
    }

    /// Stops sampling, reads `VmHWM` and the CPU times one last time, and returns the peak RSS
    /// of each process and the CPU spent since [`Monitor::start`].
    pub async fn finish(mut self) -> Sampled {
        // Read before waiting for the sampling task, so the window ends now.
        let machine = cpu::machine_cpu()
            .zip(self.machine_at_start)
            .map(|(end, start)| end.since(start));
        let spent =
            |start: Option<Duration>, pid: u32| Some(cpu::process_cpu(pid)?.saturating_sub(start?));
        let mut by_process: Vec<(String, Option<Duration>)> = self
            .peaks
            .iter()
            .zip(&self.cpu_at_start)
            .map(|((label, pid, _), start)| (label.clone(), spent(*start, *pid)))
            .collect();
        by_process.push((
            "loadgen".to_owned(),
            spent(self.own_cpu_at_start, std::process::id()),
        ));
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let peak_rss = self
            .peaks
            .iter()
            .map(|(label, pid, peak)| {
                let last = proc_status_kib(*pid, "VmHWM").unwrap_or(0);
                (label.clone(), last.max(peak.load(Ordering::Relaxed)))
            })
            .collect();
        Sampled {
            peak_rss,
            cpu: CpuUse {
                by_process,
                machine,
            },
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn sample(
    peaks: Arc<Vec<(String, u32, AtomicU64)>>,
    answered: Arc<AtomicU64>,
    report_every: Duration,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let mut next_report = started + report_every;
    let mut ticks = tokio::time::interval(Monitor::EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        for (_, pid, peak) in peaks.iter() {
            if let Some(hwm) = proc_status_kib(*pid, "VmHWM") {
                peak.fetch_max(hwm, Ordering::Relaxed);
            }
        }
        if Instant::now() >= next_report {
            next_report += report_every;
            let memory: Vec<String> = peaks
                .iter()
                .map(|(label, pid, _)| match proc_status_kib(*pid, "VmRSS") {
                    Some(kib) => format!("{label} RSS {}", crate::report::fmt_kib(kib)),
                    None => format!("{label} gone"),
                })
                .collect();
            crate::report::progress(&format!(
                "{:>5.0} s: {} answered; {}",
                started.elapsed().as_secs_f64(),
                crate::report::fmt_count(answered.load(Ordering::Relaxed)),
                memory.join(", ")
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_read_from_the_listening_line() {
        let log =
            "2026-01-01T00:00:00Z  INFO orders_service: listening on http://127.0.0.1:43125\n";
        assert_eq!(
            address_after(log, "listening on http://").as_deref(),
            Some("127.0.0.1:43125")
        );
        assert_eq!(
            address_after("listening on http://\n", "listening on http://"),
            None
        );
        assert_eq!(
            address_after("listening on http://[::1]:80 ok", "listening on http://").as_deref(),
            Some("[::1]:80")
        );
    }

    #[test]
    fn the_listening_port_is_found_in_the_socket_table() {
        let table = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:A8F5 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1 0
   2: 0100007F:A8F5 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 4243 1 0
   3: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4244 1 0
";
        // Only this process's (inode 4242, 4243, 4244) loopback listener: port 0xA8F5.
        let ours = HashSet::from([4242, 4243, 4244]);
        assert_eq!(listening_loopback_ports(table, &ours), [0xA8F5]);
        assert!(listening_loopback_ports(table, &HashSet::new()).is_empty());
    }

    #[test]
    fn this_process_listening_port_is_found() {
        if !cfg!(target_os = "linux") {
            return;
        }
        // No other test of this binary listens.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listening_port(std::process::id()), Some(port));
    }

    #[test]
    fn proc_status_fields_are_read_in_kib() {
        let status = "Name:\torders-service\nVmPeak:\t  123456 kB\nVmHWM:\t   45678 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(45_678));
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(40_000));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
        // A field whose name starts like another is not taken for it.
        assert_eq!(parse_status_kib("VmHWMx:\t1 kB\n", "VmHWM"), None);
    }

    #[test]
    fn this_process_has_a_peak_rss() {
        if cfg!(target_os = "linux") {
            assert!(proc_status_kib(std::process::id(), "VmHWM").unwrap() > 0);
        }
    }
}
