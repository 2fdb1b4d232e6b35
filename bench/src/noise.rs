//! How busy the machine was with *other* work while a measurement ran.
//!
//! The benchmarks share a small machine with builds and tests. A ratio measured while something
//! else took a core is still a ratio of the same run, but a reader should know. So every
//! scenario (and any measurement that asks) samples, at its start and end:
//!
//! - the CPU time the whole machine spent busy: the first line of `/proc/stat` (`user`, `nice`,
//!   `system`, `irq`, `softirq`, `steal`; `guest` is already counted in `user`), against the sum
//!   of all its fields (busy and idle), which gives the elapsed CPU capacity without needing the
//!   clock tick (`proc(5)`: both are in `USER_HZ`);
//! - this process tree: `utime + stime + cutime + cstime` of `/proc/self/stat` (children that
//!   exited and were waited for, such as the rebuild child, are in `cutime`/`cstime`) plus the
//!   same four fields of every live child;
//! - the PostgreSQL server: the postmaster found from a backend's parent pid (`SELECT
//!   pg_backend_pid()`, then field 4 of `/proc/<pid>/stat`), its own four fields (its
//!   `cutime`/`cstime` hold every backend that exited and was reaped meanwhile: the postmaster
//!   waits for its children on `SIGCHLD`, `reaper()` in `postmaster.c`) plus the four fields of
//!   every live child (backends, checkpointer, WAL writer, autovacuum).
//!
//! *Other* is the machine's busy time minus both. A backend alive at the start and gone at the
//! end moves from "live child" to the postmaster's `cutime` with all its time, so it is counted
//! once. What cannot be seen: a process not on this machine (a remote server), or in another pid
//! namespace: then the server is unknown and the figure says so.
//!
//! The verdict: **noisy** when others used more than [`NOISY_CORES`] of a core on average.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Instant;

/// Above this many cores used by other processes on average, a measurement is noisy.
pub const NOISY_CORES: f64 = 0.25;

/// CPU times at one instant, in clock ticks.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Every CPU's time, busy or idle.
    capacity: u64,
    /// Every CPU's busy time.
    busy: u64,
    /// This process tree.
    own: u64,
    /// The server's processes, when found.
    server: Option<u64>,
    at: Instant,
}

/// What others did during a measurement.
#[derive(Clone, Copy, Debug)]
pub struct Noise {
    /// Cores used on average by processes other than this tree and the server.
    pub other: f64,
    /// Cores used by this process tree.
    pub own: f64,
    /// Cores used by the server (None: its processes were not found on this machine, and
    /// `other` includes them).
    pub server: Option<f64>,
    /// The machine's cores.
    pub cores: f64,
    /// How long the measurement ran.
    pub seconds: f64,
}

impl Noise {
    /// Whether others used more than [`NOISY_CORES`].
    pub fn noisy(&self) -> bool {
        self.other > NOISY_CORES
    }

    /// `quiet` or `noisy`.
    pub fn word(&self) -> &'static str {
        if self.noisy() {
            "noisy"
        } else {
            "quiet"
        }
    }

    /// One sentence for a report: "other processes used 0.04 cores on average while this ran
    /// (…): **quiet**".
    pub fn sentence(&self) -> String {
        let server = match self.server {
            Some(s) => format!("the server {s:.2}"),
            None => "the server not found on this machine, counted as other".into(),
        };
        format!(
            "other processes used {:.2} cores on average while this ran ({:.0} s; this \
             benchmark {:.2}, {server}, of {:.0} cores; noisy above {NOISY_CORES} core): **{}**",
            self.other,
            self.seconds,
            self.own,
            self.cores,
            self.word()
        )
    }
}

/// A measurement in progress.
#[derive(Clone, Copy, Debug)]
pub struct Monitor {
    start: Sample,
    postmaster: Option<i32>,
}

impl Monitor {
    /// Starts measuring; `postmaster` is the server's postmaster pid, if known.
    pub fn start(postmaster: Option<i32>) -> Self {
        Self {
            start: sample(postmaster),
            postmaster,
        }
    }

    /// What happened since the start (the monitor goes on: call it again for a longer span).
    pub fn so_far(&self) -> Option<Noise> {
        let end = sample(self.postmaster);
        let capacity = end.capacity.checked_sub(self.start.capacity)? as f64;
        if capacity <= 0.0 {
            return None;
        }
        let seconds = end.at.duration_since(self.start.at).as_secs_f64();
        if seconds <= 0.0 {
            return None;
        }
        // Cores = ticks of busy time / ticks of elapsed time per core.
        let cores = num_cpus();
        let per_core = capacity / cores;
        let busy = end.busy.saturating_sub(self.start.busy) as f64 / per_core;
        let own = end.own.saturating_sub(self.start.own) as f64 / per_core;
        let server = match (self.start.server, end.server) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / per_core),
            _ => None,
        };
        Some(Noise {
            other: (busy - own - server.unwrap_or(0.0)).max(0.0),
            own,
            server,
            cores,
            seconds,
        })
    }
}

static SCENARIO: OnceLock<Monitor> = OnceLock::new();
static POSTMASTER: OnceLock<Option<i32>> = OnceLock::new();

/// Starts the scenario-wide measurement (once, from `main`), with the server's postmaster.
pub fn start_scenario(postmaster: Option<i32>) {
    let _ = POSTMASTER.set(postmaster);
    let _ = SCENARIO.set(Monitor::start(postmaster));
}

/// A measurement of one part of a scenario, on the same server.
pub fn start() -> Monitor {
    Monitor::start(POSTMASTER.get().copied().flatten())
}

/// The scenario so far; None before [`start_scenario`] or when `/proc` is unreadable.
pub fn scenario() -> Option<Noise> {
    SCENARIO.get()?.so_far()
}

/// The postmaster of a backend: its parent, if it is a PostgreSQL process on this machine.
pub fn postmaster_of(backend_pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{backend_pid}/stat")).ok()?;
    let (_, fields) = split_stat(&stat)?;
    let ppid: i32 = fields.get(1)?.parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{ppid}/comm")).ok()?;
    let cmdline = std::fs::read(format!("/proc/{ppid}/cmdline")).ok()?;
    let is_postgres = comm.trim().starts_with("postgres")
        || comm.trim().starts_with("postmaster")
        || String::from_utf8_lossy(&cmdline).contains("postgres");
    is_postgres.then_some(ppid)
}

fn num_cpus() -> f64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0)
        .max(
            // The capacity counts every CPU the kernel has, which may be more than this
            // process may use: count the `cpuN` lines.
            std::fs::read_to_string("/proc/stat")
                .map(|s| {
                    s.lines()
                        .filter(|l| {
                            l.starts_with("cpu")
                                && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit)
                        })
                        .count() as f64
                })
                .unwrap_or(0.0),
        )
}

fn sample(postmaster: Option<i32>) -> Sample {
    let at = Instant::now();
    let (capacity, busy) = machine().unwrap_or((0, 0));
    let children = children_times();
    let me = std::process::id() as i32;
    let tree = |pid: i32| process_times(pid).map(|t| t + children.get(&pid).copied().unwrap_or(0));
    Sample {
        capacity,
        busy,
        own: tree(me).unwrap_or(0),
        server: postmaster.and_then(tree),
        at,
    }
}

/// (all ticks, busy ticks) of the machine.
fn machine() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice
    let field = |i: usize| v.get(i).copied().unwrap_or(0);
    // guest and guest_nice are already included in user and nice.
    let capacity: u64 = (0..8).map(field).sum();
    let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
    Some((capacity, busy))
}

/// The name-free fields of a `/proc/<pid>/stat` line (from `state` on) and the comm.
fn split_stat(stat: &str) -> Option<(&str, Vec<&str>)> {
    // The comm is in parentheses and may contain spaces: split after the last ')'.
    let close = stat.rfind(')')?;
    let open = stat.find('(')?;
    Some((
        &stat[open + 1..close],
        stat[close + 1..].split_whitespace().collect(),
    ))
}

/// utime + stime + cutime + cstime of a process (fields 14–17 of `/proc/<pid>/stat`).
fn process_times(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_times(&stat).map(|(_, t)| t)
}

/// (ppid, utime + stime + cutime + cstime) of a stat line.
fn stat_times(stat: &str) -> Option<(i32, u64)> {
    let (_, fields) = split_stat(stat)?;
    // fields[0] is field 3 (state); field n is fields[n - 3].
    let ppid = fields.get(1)?.parse().ok()?;
    let mut sum = 0u64;
    for n in 14..=17 {
        sum += fields.get(n - 3)?.parse::<i64>().ok()?.max(0) as u64;
    }
    Some((ppid, sum))
}

/// For every process, the summed times of its live children (one level: a backend's own
/// children, if any, are in its `cutime` once reaped).
fn children_times() -> HashMap<i32, u64> {
    let mut by_parent = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return by_parent;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((ppid, times)) = stat_times(&stat) {
            *by_parent.entry(ppid).or_insert(0) += times;
        }
    }
    by_parent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_spaces_in_the_name() {
        let line = "4242 (postgres: a b) S 17 4242 4242 0 -1 4194560 100 0 0 0 \
                    11 22 33 44 20 0 1 0 100 1000 10 18446744073709551615";
        assert_eq!(stat_times(line), Some((17, 11 + 22 + 33 + 44)));
    }

    #[test]
    fn this_process_is_seen_and_busy_work_counts_as_its_own() {
        let monitor = Monitor::start(None);
        let me = std::process::id() as i32;
        let before = process_times(me).expect("/proc/self/stat is readable");
        // Burn 20 clock ticks of CPU in this process, however long that takes on a busy machine.
        let mut x = 0u64;
        while process_times(me).unwrap_or(u64::MAX) < before + 20 {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
        }
        std::hint::black_box(x);
        let noise = monitor.so_far().expect("/proc/stat is readable");
        // At least those 20 ticks (0.2 s at USER_HZ = 100) are counted as this tree's.
        assert!(noise.own * noise.seconds >= 0.15, "{noise:?}");
        assert!(noise.server.is_none());
        assert!(noise.other <= noise.cores, "{noise:?}");
    }
}
