//! CPU time, read from `/proc`: what each process and the whole machine spent during a run.
//!
//! On a noisy machine the rate a run reaches swings with whatever else the host does; the
//! CPU time spent per email moves much less, so it tells whether a change made the work
//! cheaper. The machine's figure covers everything that ran meanwhile (loadgen, the services,
//! PostgreSQL's backends), which is what one email costs this machine.

use std::time::Duration;

/// CPU time (user + system) process `pid` has used since it started; `None` once it is gone
/// or off Linux.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_process_ticks(&stat).map(ticks)
}

/// The whole machine's CPU time since boot, over all cores; `None` off Linux.
pub fn machine_cpu() -> Option<MachineCpu> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let (busy, idle) = parse_machine_ticks(&stat)?;
    Some(MachineCpu {
        busy: ticks(busy),
        idle: ticks(idle),
    })
}

/// The machine's CPU time, summed over its cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineCpu {
    /// Running anything: user, nice, system, interrupts.
    pub busy: Duration,
    /// Idle, or idle waiting for the disk (`iowait`).
    pub idle: Duration,
}

impl MachineCpu {
    /// What was spent between `earlier` and `self`.
    pub fn since(self, earlier: MachineCpu) -> MachineCpu {
        MachineCpu {
            busy: self.busy.saturating_sub(earlier.busy),
            idle: self.idle.saturating_sub(earlier.idle),
        }
    }

    /// The share of the time the cores were busy, 0 to 1.
    pub fn busy_share(self) -> Option<f64> {
        let all = (self.busy + self.idle).as_secs_f64();
        (all > 0.0).then(|| self.busy.as_secs_f64() / all)
    }
}

/// CPU spent during one measured window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuUse {
    /// Each measured process's CPU time (label, time), and loadgen's own as `loadgen`;
    /// `None` for a process that could not be read at both ends of the window.
    pub by_process: Vec<(String, Option<Duration>)>,
    /// The whole machine's, when `/proc/stat` could be read.
    pub machine: Option<MachineCpu>,
}

/// `utime + stime` of a `/proc/PID/stat` line, in clock ticks. The command name (field 2) is
/// in parentheses and may hold spaces or parentheses itself, so fields are counted from the
/// last `)`: the state is the first after it, `utime` the 12th and `stime` the 13th.
fn parse_process_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// (busy, idle) clock ticks of `/proc/stat`'s first (`cpu `) line: busy is user, nice,
/// system, irq and softirq; idle is idle and iowait. Steal (time the hypervisor gave to
/// other guests) is neither: this machine did not spend it.
fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let field = |i: usize| v.get(i).copied();
    let busy = field(0)? + field(1)? + field(2)? + field(5)? + field(6)?;
    let idle = field(3)? + field(4)?;
    Some((busy, idle))
}

/// `n` clock ticks (`USER_HZ`) as a duration.
fn ticks(n: u64) -> Duration {
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    Duration::from_micros(n.saturating_mul(1_000_000) / per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_cpu_time_is_user_plus_system_counted_after_the_name() {
        // A name with a space and a parenthesis must not shift the fields.
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 1200 0 0 0 \
                    731 269 0 0 20 0 9 0 123456 987654 4321 18446744073709551615";
        assert_eq!(parse_process_ticks(stat), Some(1000));
        assert_eq!(parse_process_ticks("4242 (short) S 1"), None);
        assert_eq!(parse_process_ticks("no parenthesis"), None);
    }

    #[test]
    fn machine_time_splits_into_busy_and_idle_without_steal() {
        let stat = "cpu  100 5 40 1000 20 3 2 7 0 0\ncpu0 50 2 20 500 10 1 1 3 0 0\nctxt 5\n";
        // user + nice + system + irq + softirq; idle + iowait; steal (7) left out.
        assert_eq!(parse_machine_ticks(stat), Some((150, 1020)));
        assert_eq!(parse_machine_ticks("cpu0 1 2 3\n"), None);
        assert_eq!(parse_machine_ticks("cpu  1 2 x 4 5 6 7\n"), None);
    }

    #[test]
    fn a_window_is_the_difference_and_its_busy_share() {
        let start = MachineCpu {
            busy: Duration::from_secs(10),
            idle: Duration::from_secs(30),
        };
        let end = MachineCpu {
            busy: Duration::from_secs(16),
            idle: Duration::from_secs(32),
        };
        let window = end.since(start);
        assert_eq!(window.busy, Duration::from_secs(6));
        assert_eq!(window.busy_share(), Some(0.75));
        assert_eq!(start.since(start).busy_share(), None);
    }

    #[test]
    fn this_process_and_this_machine_can_be_read() {
        if cfg!(target_os = "linux") {
            assert!(process_cpu(std::process::id()).is_some());
            assert_eq!(process_cpu(u32::MAX), None);
            let machine = machine_cpu().unwrap();
            assert!(machine.busy > Duration::ZERO);
        }
    }
}
